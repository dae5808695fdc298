"""Per-request stage timings, sent back in a `Server-Timing` header (what the service spent on validation, decoding,
the network and encoding; the client's latency minus their sum is HTTP and framework overhead)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


class StageTimes:
    """Milliseconds per named stage of one request, in the order the stages first ran."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage `name` (added to the stage's earlier time, if any)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - start) * 1000

    def header(self) -> str:
        """The Server-Timing header value, e.g. `decode;dur=9.7, network;dur=1373.2`."""
        return ", ".join(f"{name};dur={ms:.1f}" for name, ms in self.ms.items())


def parse_server_timing(value: str) -> dict[str, float]:
    """A Server-Timing header value -> {stage: milliseconds} (stages without a duration are left out)."""
    stages: dict[str, float] = {}
    for metric in value.split(","):
        name, *params = (part.strip() for part in metric.split(";"))
        for param in params:
            key, _, number = param.partition("=")
            if name and key.strip() == "dur":
                stages[name] = float(number)
    return stages
