"""How often the bench repeats a measurement, and the spread it reports beside each figure (pure: a clock can be
passed in).

A timed call is repeated in rounds (a round times each side of a comparison once: the raw engine and the actor, say)
until the median of every side is stable, or the measurement's share of the bench's time is spent, or a cap is
reached. The record keeps every sample, so a figure is never quoted without its spread."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass(frozen=True)
class Until:
    """When to stop repeating."""

    min_n: int = 3
    """Timed rounds at least: a median and a spread need three."""
    max_n: int = 7
    tol: float = 0.05
    """Stable: the last round moved every side's median by at most this fraction."""
    budget_s: float = math.inf
    """The measurement's share of the bench's time: no new round starts once this is spent, stable or not."""


def stable(xs: Sequence[float], tol: float) -> bool:
    """The median of xs is within `tol` (relative) of the median without the last sample."""
    return len(xs) >= 2 and abs(statistics.median(xs) - statistics.median(xs[:-1])) <= tol * abs(statistics.median(xs))


def rounds(one_round: Callable[[int], Sequence[float]], until: Until, clock: Callable[[], float] = time.monotonic
           ) -> tuple[list[list[float]], str]:
    """Call one_round(i) for i = 0, 1, ... (each returns one number per side) until `until` says stop. Returns the
    samples of each side and why it stopped: "stable", "budget" or "max"."""
    t0, sides = clock(), []
    for i in range(until.max_n):
        r = list(one_round(i))
        sides = [s + [x] for s, x in zip(sides, r)] if sides else [[x] for x in r]
        if i + 1 >= until.min_n and all(stable(s, until.tol) for s in sides):
            return sides, "stable"
        if clock() - t0 >= until.budget_s and i + 1 < until.max_n:
            return sides, "budget"
    return sides, "max"


def spread(xs: Sequence[float]) -> dict:
    """A figure's median with its spread: {"median", "min", "max", "n"}."""
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def fmt(s: dict, digits: int = 2) -> str:
    """`median (min-max, n)`: how the tables show a figure."""
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f}, n={s['n']})"
