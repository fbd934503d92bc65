"""When something happens during a run: every N steps, and/or K log-spaced steps a decade.

Log-spaced steps are s = round(10^(i/K)) − 1 for i = 0, 1, 2, … (on the step + 1 axis
the heat maps use), so the first decade of training is resolved as finely as later ones:
with K = 10 the steps 0, 1, 2, 3, 4, 5, 7, 9, 12, 15, 19, 24, 31, 39, 49, 62, 78, 99, ….
"""
from __future__ import annotations

import math
from bisect import bisect_right


class Cadence:
    def __init__(self, every: int | None = None, per_decade: int | None = None):
        self.every = every
        self.per_decade = per_decade
        self._upto, self._steps, self._sorted = -1, frozenset(), []  # the log-spaced steps up to _upto

    def _cover(self, step: int) -> None:
        if step > self._upto:
            self._upto = max(2 * self._upto, step, 1000)
            self._sorted = log_steps(self._upto, self.per_decade)
            self._steps = frozenset(self._sorted)

    def __call__(self, step: int) -> bool:
        if step == 0 or (self.every and step % self.every == 0):
            return True
        if not self.per_decade:
            return False
        self._cover(step)
        return step in self._steps

    def next_after(self, step: int) -> float:
        """The first step after this one at which the cadence is due (inf: none)."""
        found = (step // self.every + 1) * self.every if self.every else math.inf
        if self.per_decade:
            self._cover(step + 1)
            while (i := bisect_right(self._sorted, step)) == len(self._sorted):  # past the list: cover further
                self._cover(self._upto + 1)
            found = min(found, self._sorted[i])
        return found

    def __repr__(self):
        return f"Cadence(every={self.every}, per_decade={self.per_decade})"


def log_steps(last: int, per_decade: int) -> list[int]:
    """The log-spaced steps up to last."""
    out, i = [], 0
    while True:
        s = round(10 ** (i / per_decade)) - 1
        if s > last:
            return out
        if not out or s != out[-1]:
            out.append(s)
        i += 1
