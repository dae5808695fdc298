"""Progress of long work: a tqdm bar on a terminal, and plain lines at a steady interval everywhere else (logs,
CI, `dvc repro` piped to a file), where a bar would be silent."""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

from tqdm import tqdm

INTERVAL_ENV = "GAN_ENHANCE_PROGRESS_SECONDS"
DEFAULT_INTERVAL_S = 30.0


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class Progress:
    """Counts steps toward `total`. On a terminal it draws a tqdm bar; otherwise it writes one line every
    `interval_s` seconds ($GAN_ENHANCE_PROGRESS_SECONDS, default 30) and one at the end: step, share done, the
    latest values, steps/s and the time left."""

    def __init__(
        self,
        total: int,
        initial: int = 0,
        desc: str = "",
        unit: str = "step",
        stream: TextIO | None = None,
        interval_s: float | None = None,
    ) -> None:
        self.total, self.done, self.desc, self.unit = total, initial, desc, unit
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self.interval_s = (
            interval_s if interval_s is not None else float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL_S))
        )
        self.values: dict[str, float] = {}
        self._started = time.monotonic()
        self._last_line, self._last_done = self._started, initial
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=desc,
            unit=unit,
            file=self.stream,
            disable=not self.interactive,
            dynamic_ncols=True,
        )
        if not self.interactive:
            self._write(f"{desc}: {total - initial} {unit}s to go" + (f" (from {initial})" if initial else ""))

    def show(self, values: dict[str, float]) -> None:
        """Numbers to show with the progress (latest losses, metrics); each stays until a newer value comes."""
        self.values.update(values)
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in self.values.items()})

    def update(self, steps: int = 1) -> None:
        self.done += steps
        self.bar.update(steps)
        now = time.monotonic()
        if not self.interactive and (now - self._last_line >= self.interval_s or self.done >= self.total):
            self._write(self.line(now))
            self._last_line, self._last_done = now, self.done

    def line(self, now: float | None = None) -> str:
        """'desc: step 150/3000 (5.0%) | loss 0.034 | 2.13 steps/s | 22m19s left'. The rate, and the time left
        from it, are those since the previous line (a training phase or a busy machine can change the pace)."""
        now = now or time.monotonic()
        elapsed, recent = now - self._started, now - self._last_line
        rate = (self.done - self._last_done) / recent if recent > 0 else 0.0
        parts = [f"{self.desc}: {self.unit} {self.done}/{self.total} ({100 * self.done / max(self.total, 1):.1f}%)"]
        if self.values:
            parts.append(" ".join(f"{k} {v:.4g}" for k, v in self.values.items()))
        parts.append(f"{rate:.2f} {self.unit}s/s")
        if self.done < self.total and rate > 0:
            parts.append(f"{_duration((self.total - self.done) / rate)} left")
        elif self.done >= self.total:
            parts.append(f"done in {_duration(elapsed)}")
        return " | ".join(parts)

    def _write(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        self.bar.close()
