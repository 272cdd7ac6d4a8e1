"""Bounds of the config's values, declared beside each field: `lr: Positive[float] = 1e-5`, `name: Name = "run"`.

Every int and float field of the config tree carries a `Range`, and every string a `Length` (unit tests fail when
one does not); yaml_tree checks them as the YAML is read: finiteness for every float (`.inf`, `.nan` are refused),
bounds for numbers, a maximum length for strings. Upper bounds on sizes keep a typo (a batch of 10^12) from becoming
an allocation, and a string of a megabyte from becoming a file name, a log line or an error message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Optional, TypeVar

T = TypeVar("T", int, float)


@dataclass(frozen=True)
class Range:
    """lo <= value <= hi (strict where `open_lo` / `open_hi`); None: unbounded on that side. Floats must be
    finite."""

    lo: Optional[float] = None
    hi: Optional[float] = None
    open_lo: bool = False
    open_hi: bool = False

    def problem(self, value: int | float) -> Optional[str]:
        """Why `value` is out of range, or None."""
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number, got {value}"
        low = self.lo is not None and (value <= self.lo if self.open_lo else value < self.lo)
        high = self.hi is not None and (value >= self.hi if self.open_hi else value > self.hi)
        return f"must be {self}, got {value}" if low or high else None

    def __str__(self) -> str:
        num = lambda v: f"{v:g}" if abs(v) < 1e6 else f"{int(v):,}"  # noqa: E731 (2^20 as 1,048,576)
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.open_lo else '['}{num(self.lo)}, {num(self.hi)}{')' if self.open_hi else ']'}"
        if self.lo is not None:
            return f"{'>' if self.open_lo else '>='} {num(self.lo)}"
        if self.hi is not None:
            return f"{'<' if self.open_hi else '<='} {num(self.hi)}"
        return "finite"


@dataclass(frozen=True)
class Length:
    """A string of at most `most` characters."""

    most: int

    def problem(self, value: str) -> Optional[str]:
        """Why `value` is too long, or None."""
        return f"{len(value):,} characters; at most {self.most:,}" if len(value) > self.most else None

    def __str__(self) -> str:
        return f"<= {self.most:,} chars"


SIZE = 2**20  # the most of anything counted per step (sequences, tokens, samples): far past any real run

Finite = Annotated[T, Range()]
Positive = Annotated[T, Range(0, open_lo=True)]
NonNegative = Annotated[T, Range(0)]
Size = Annotated[int, Range(1, SIZE)]
"""A count of sequences, samples or tokens in one step: 1 .. 2^20."""
Fraction = Annotated[float, Range(0, 1)]
PositiveFraction = Annotated[float, Range(0, 1, open_lo=True)]
ProperFraction = Annotated[float, Range(0, 1, open_hi=True)]
Seed = Annotated[int, Range(0, 2**32 - 1)]
"""numpy's and vLLM's seeds are unsigned 32-bit."""
Port = Annotated[int, Range(1, 65535)]
Mib = Annotated[int, Range(1, 2**24)]
"""Memory in MiB, up to 16 TiB."""

Name = Annotated[str, Length(128)]
"""A name: run, stage, pool, role, column, module, split, project. 128 characters is past any real one, and a run
name stays well inside a file name's 255 bytes once it is a folder."""
RunName = Annotated[str, Length(100)]
"""A run's name, a folder's name under runs/: 100 characters, well inside a file name's 255 bytes."""
Text = Annotated[str, Length(4096)]
"""A path, hub name, `module:function` spec or address: 4096 characters, Linux's PATH_MAX."""
