"""What every stage returns to the pipeline (its own module, so the pipeline and the stages both import it from
below)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StageResult:
    outputs: dict[str, str]
    """What later stages use: `policy`, `reward` or `preferences` -> a path."""
    summary: str
    """One line for the console: the stage's headline numbers and where its output is."""
    skipped: bool = False
    """True when a finished earlier run was reused."""
    metrics: dict = field(default_factory=dict)
    """Headline numbers (also in the marker), e.g. {"eval_loss": 1.2}."""
