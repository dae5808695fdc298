"""The prefetch thread: batches in step order, ahead of the loop, errors raised where the batch is asked for."""

from __future__ import annotations

import threading

import pytest
import torch

from gan_enhance.training.prefetch import Prefetcher


def _make(step: int) -> tuple[torch.Tensor, ...]:
    return (torch.full((2,), float(step)), torch.tensor([threading.current_thread().name == "batch-prefetch"]))


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_batches_come_in_step_order_made_inline_or_on_the_thread(depth: int):
    batches = Prefetcher(_make, start=5, stop=12, depth=depth)
    try:
        for step in range(5, 12):
            values, on_thread = batches.get(step)
            assert values.tolist() == [step, step] and bool(on_thread) == (depth > 0)
    finally:
        batches.close()
    assert batches.waited_s >= 0


def test_an_error_making_a_batch_is_raised_at_its_step_and_steps_must_come_in_order():
    def failing(step: int) -> tuple[torch.Tensor, ...]:
        if step == 3:
            raise ValueError("bad image")
        return _make(step)

    batches = Prefetcher(failing, start=0, stop=6, depth=2)
    try:
        for step in range(3):
            batches.get(step)
        with pytest.raises(ValueError, match="bad image"):
            batches.get(3)
    finally:
        batches.close()
    inline = Prefetcher(_make, start=0, stop=4, depth=0)
    with pytest.raises(RuntimeError, match="step 2 asked for, but step 0 comes next"):
        inline.get(2)


def test_close_stops_a_thread_that_is_waiting_to_hand_over():
    batches = Prefetcher(_make, start=0, stop=1000, depth=1)
    batches.get(0)
    batches.close()
    assert batches._thread is not None and not batches._thread.is_alive()
