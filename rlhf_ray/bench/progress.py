"""The bench's progress lines, in the install's style (`[m:ss] what`, the time since the bench started), and an
estimate of what is left in a section from the parts of it done so far (pure: a clock can be passed in)."""

from __future__ import annotations

import time
from typing import Callable


def mmss(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 60:2d}:{s % 60:02d}"


class Progress:
    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 out: Callable[[str], None] = lambda line: print(line, flush=True)):
        self.clock, self.out = clock, out
        self.t0 = self.section_t0 = clock()

    def say(self, what: str) -> None:
        self.out(f"[{mmss(self.clock() - self.t0)}] {what}")

    def section(self, what: str) -> None:
        """A section starts: what follows is timed from here."""
        self.section_t0 = self.clock()
        self.say(what)

    def part(self, what: str, done: int, total: int) -> None:
        """Part `done` of the section's `total` is measured: what is left, at the pace of the parts so far (the
        parts differ; the estimate says so by being one)."""
        spent = self.clock() - self.section_t0
        left = "" if done >= total else f"; about {mmss(spent / done * (total - done)).strip()} left in this section"
        self.say(f"{what} ({done}/{total}, section {mmss(spent).strip()}{left})")
