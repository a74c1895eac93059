"""The one progress line of every long job (training steps, sampled images), on stderr.

On a terminal the line is rewritten in place; elsewhere (a log file, a test) each update is a
line of its own. With a wall-clock limit (``nets.train --max-minutes``) the total and the ETA
follow whichever end is nearer: the last step, or the step the clock will stop at.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Estimate:
    """Where a job will end: ``total`` units, ``eta`` seconds from now; ``by_clock`` when the time
    limit, not the unit count, ends it (the total is then a projection)."""

    total: int
    eta: float
    by_clock: bool


def estimate_end(done: int, total: int, rate: float, elapsed: float,
                 time_limit: float | None) -> Estimate:
    """The job's end from its ``rate`` (units/s since the start of the ``elapsed`` seconds): the
    unit count, unless ``time_limit`` seconds run out first."""
    eta = (total - done) / max(rate, 1e-9)
    if time_limit is None or elapsed + eta <= time_limit:
        return Estimate(total, eta, False)
    left = max(0.0, time_limit - elapsed)
    return Estimate(min(total, done + math.ceil(rate * left)), left, True)


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(round(max(0.0, seconds)), 60)
    return f"{minutes}m{secs:02d}s"


class Progress:
    """``label done/total [pct] <extra> <rate> ETA``; ``unit_scale`` turns done/s into the shown
    rate (images per step for training). Disabled (every torchrun rank but 0) it prints nothing."""

    def __init__(self, label: str | None, total: int, start: int = 0, *, rate_unit: str = "img/s",
                 unit_scale: float = 1.0, time_limit: float | None = None):
        """``label`` None: a disabled line (printing nothing), as on every torchrun rank but 0."""
        enabled = label is not None
        self.label, self.total, self.start = label or "", total, start
        self.rate_unit, self.unit_scale, self.time_limit = rate_unit, unit_scale, time_limit
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.t0 = time.perf_counter()

    def line(self, done: int, elapsed: float, extra: str = "") -> str:
        rate = (done - self.start) / max(elapsed, 1e-9)
        end = estimate_end(done, self.total, rate, elapsed, self.time_limit)
        total = f"~{end.total}" if end.by_clock else str(end.total)
        pct = 100 * done / max(end.total, 1)
        return (f"{self.label} {done}/{total} [{pct:5.1f}%] {extra + ' ' if extra else ''}"
                f"{rate * self.unit_scale:7.1f} {self.rate_unit} ETA {format_duration(end.eta)}"
                + (" (time limit)" if end.by_clock else ""))

    def update(self, done: int, extra: str = "") -> None:
        if not self.enabled:
            return
        line = self.line(done, time.perf_counter() - self.t0, extra)
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)
