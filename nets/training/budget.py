"""A wall-clock budget (``--max-minutes``) that fixes the run's last step, so that the learning-rate
schedule ends when the clock does.

The pace is measured over the first steps (``FIRST_PLAN_AFTER`` after ``SKIPPED`` start-up steps)
and the last step fixed from it once: the steps left at that pace in the time left, bounded by
``--max-steps``/``--epochs``. It is measured again at every twentieth of the planned steps
(``REPLAN_AT``), and the end moved only when the new projection differs by more than ``TOLERANCE``.
When a plan is due depends on step counts alone, so every torchrun rank plans at the same step;
the ranks then take the smallest of their projections (an all-reduce), so all agree on one end.
The end is recorded in the checkpoint: a resumed run continues to it instead of planning again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SKIPPED = 5  # the first steps pay for start-up (allocations, lazy inits): not timed
FIRST_PLAN_AFTER = 20  # steps timed before the first plan
# fractions of the planned steps where the pace is measured again: every 5 %, so a machine that
# slows down late still moves the end (the plan is cheap: one all-reduce under torchrun)
REPLAN_AT = tuple(i / 20 for i in range(1, 20))
TOLERANCE = 0.02  # of the planned steps: a smaller change of the projection keeps the end
RESERVE = 0.02  # of the budget, kept for the pace's jitter and the last checkpoint: the planned end
# comes a little before the clock, so the schedule reaches 0 instead of the clock cutting it short


def project_end(step: int, rate: float, elapsed: float, time_limit: float, bound: int) -> int:
    """The last step the budget reaches: ``step`` plus the steps ``rate`` (steps/s) fits into the
    seconds left of ``time_limit`` less its RESERVE, at least one more step, at most ``bound``."""
    left = max(0.0, (1.0 - RESERVE) * time_limit - elapsed)
    return int(min(bound, max(step + 1, step + math.floor(rate * left))))


@dataclass
class ClockPlan:
    """The plan of one session of a time-limited run: ``start`` is its first step, ``bound`` the
    end --max-steps/--epochs allow; :meth:`update` returns the new end where one is due."""

    time_limit: float  # seconds
    start: int
    bound: int
    end: int | None = None  # the planned last step (None until the first plan)
    replans_done: int = 0
    _mark: tuple[int, float] | None = None  # (step, elapsed) the pace is measured from

    def due(self, step: int) -> bool:
        """Whether a plan is due after ``step`` (a function of step counts only)."""
        if self.end is None:
            return step - self.start >= SKIPPED + FIRST_PLAN_AFTER
        if self.replans_done >= len(REPLAN_AT) or step >= self.end:  # at the end: it ends there
            return False
        return step - self.start >= REPLAN_AT[self.replans_done] * (self.end - self.start)

    def observe(self, step: int, elapsed: float) -> None:
        """Start timing at the first step past start-up."""
        if self._mark is None and step - self.start >= SKIPPED:
            self._mark = (step, elapsed)

    def projection(self, step: int, elapsed: float) -> int:
        """This rank's projected end from the pace since the last mark (call where :meth:`due`)."""
        mark_step, mark_time = self._mark
        rate = (step - mark_step) / max(elapsed - mark_time, 1e-9)
        return project_end(step, rate, elapsed, self.time_limit, self.bound)

    def accept(self, step: int, elapsed: float, agreed: int) -> bool:
        """Take the ranks' agreed projection; True when the end moved."""
        first = self.end is None
        if not first:
            self.replans_done += 1
        self._mark = (step, elapsed)
        if first or abs(agreed - self.end) > TOLERANCE * (self.end - self.start):
            self.end = agreed
            return True
        return False
