"""Batches made ahead of the training step by a background thread.

Each batch depends only on its step (the generators are seeded by (seed, step, sample)), so making it early, on
another thread, changes nothing in what is trained; it only hides the time spent on patch sampling, degradations
and masks behind the step (numpy, PIL and torch release the GIL for most of that work). On CUDA the batches are
pinned, so the copy to the GPU can run asynchronously.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

Batch = tuple[torch.Tensor, ...]


class Prefetcher:
    """Yields make(step) for step in [start, stop), up to `depth` steps ahead (0: made inline, when asked).
    `waited_s` adds up the time the training loop spent waiting for a batch."""

    def __init__(self, make: Callable[[int], Batch], start: int, stop: int, depth: int, pin: bool = False) -> None:
        self.make, self.next_step, self.stop, self.depth, self.pin = make, start, stop, depth, pin
        self.waited_s = 0.0
        self._queue: queue.Queue[tuple[int, Any]] = queue.Queue(maxsize=max(depth, 1))
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        if depth > 0 and start < stop:
            self._thread = threading.Thread(target=self._fill, args=(start,), name="batch-prefetch", daemon=True)
            self._thread.start()

    def _made(self, step: int) -> Batch:
        batch = self.make(step)
        return tuple(t.pin_memory() for t in batch) if self.pin else batch

    def _fill(self, start: int) -> None:
        for step in range(start, self.stop):
            try:
                item: tuple[int, Any] = (step, self._made(step))
            except BaseException as exc:  # handed to the training loop, which raises it
                item = (step, exc)
            while not self._closed.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if self._closed.is_set() or isinstance(item[1], BaseException):
                return

    def get(self, step: int) -> Batch:
        """The batch of `step` (steps are asked for in order)."""
        if step != self.next_step:
            raise RuntimeError(f"batch of step {step} asked for, but step {self.next_step} comes next")
        self.next_step += 1
        t0 = time.perf_counter()
        if self._thread is None:
            batch = self._made(step)
        else:
            made_for, batch = self._queue.get()
            if isinstance(batch, BaseException):
                raise batch
            assert made_for == step
        self.waited_s += time.perf_counter() - t0
        return batch

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
