"""What a PPO run with a gold judge (`ppo.gold`) did, in the terms a reader checks it by: the kept policy's gold
against the starting policy's, paired over the held-out prompts, and a few held-out prompts with the replies of the
starting, kept and last policies side by side. Read from the held-out rollouts on disk
(rollouts/eval_vNNNNNN.parquet, one per evaluation, with a `gold_reward` column), so a resumed run reports the
evaluations it made before the resume too.

Why paired over prompts: the same held-out prompts are asked at every evaluation, and prompts differ far more from
each other than two policies differ on one prompt; the standard error of the per-prompt differences is the one
that says whether the gain is real (a prompt's samples are averaged first: they share the prompt, so they are not
independent draws)."""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from typing import Optional

import pyarrow.parquet as pq

from rlhf_ray.runtime.run_dir import RunDir

GOLD = "gold_reward"
"""The eval rollouts' column with the gold judge's score of each reply."""


@dataclass(frozen=True)
class Gain:
    base: float
    """Mean gold of the starting policy (step 0) over the held-out prompts."""
    kept: float
    step: int
    """The kept policy's step."""
    gain: float
    se: float
    """Standard error of the mean per-prompt difference (kept - base)."""
    prompts: int

    def line(self) -> str:
        return (f"gold gain {self.gain:+.3f} ± {self.se:.3f} (paired SE, {self.prompts} prompts): base {self.base:.3f} "
                f"→ kept {self.kept:.3f} at step {self.step}")

    def metrics(self) -> dict:
        return {"gold_gain": self.gain, "gold_gain_se": self.se, "gold_gain_prompts": self.prompts}


def eval_name(version: int) -> str:
    """The held-out rollouts of the evaluation at policy `version` (RunDir.rollouts_path names the file)."""
    return f"eval_v{version:06d}"


def per_prompt(rows: list[dict]) -> dict[str, float]:
    """Mean gold per prompt, from rows {prompt, gold_reward}."""
    sums: dict[str, list[float]] = {}
    for r in rows:
        sums.setdefault(r["prompt"], []).append(r[GOLD])
    return {p: sum(v) / len(v) for p, v in sums.items()}


def paired_gain(base: list[dict], kept: list[dict], step: int) -> Gain:
    """Kept minus base, paired over the prompts both evaluations asked."""
    b, k = per_prompt(base), per_prompt(kept)
    common = [p for p in b if p in k]
    diffs = [k[p] - b[p] for p in common]
    n = len(diffs)
    mean = sum(diffs) / n
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n) if n > 1 else float("nan")
    return Gain(sum(b[p] for p in common) / n, sum(k[p] for p in common) / n, step, mean, se, n)


def accuracy_se(accuracy: float, pairs: int) -> float:
    """Binomial standard error of an accuracy measured on `pairs` independent pairs."""
    return math.sqrt(accuracy * (1 - accuracy) / pairs)


def side_by_side(runs: dict[str, tuple[int, list[dict]]], prompts: int = 3, width: int = 400) -> list[str]:
    """The first `prompts` held-out prompts (in the order they were asked: not chosen by result), each with the
    first reply of every named policy ({name: (step, rows)}) and its gold."""
    first = next(iter(runs.values()))[1]
    asked = list(dict.fromkeys(r["prompt"] for r in first))[:prompts]
    lines = []
    for prompt in asked:
        lines.append(f"held-out prompt: {_quote(prompt, width)}")
        for name, (step, rows) in runs.items():
            reply = next(r for r in rows if r["prompt"] == prompt)
            lines.append(f"  {name} (step {step}, gold {reply[GOLD]:.2f}): {_quote(reply['response'], width)}")
    return lines


def _quote(text: str, width: int) -> str:
    return '"' + textwrap.shorten(" ".join(text.split()), width=width, placeholder=" ...") + '"'


def report(run_dir: RunDir, evaluated: list[int], kept: Optional[int]) -> tuple[dict, list[str]]:
    """From the steps `evaluated` (in order) and the `kept` one (None: the last): the kept policy's gold gain over
    the starting policy's and three held-out prompts answered by the starting, kept and last policies, as (metrics,
    summary lines); nothing without two evaluations from step 0 on disk."""
    if len(evaluated) < 2 or evaluated[0] != 0:
        return {}, []
    last = evaluated[-1]
    kept = last if kept is None else kept
    files = {step: run_dir.rollouts_path(eval_name(step)) for step in (0, kept, last)}
    if not all(f.exists() for f in files.values()):
        return {}, []
    rows = {step: pq.read_table(f, columns=["prompt", "response", GOLD]).to_pylist() for step, f in files.items()}
    gain = paired_gain(rows[0], rows[kept], kept)
    replies = side_by_side({"base": (0, rows[0]), "kept": (kept, rows[kept]), "last": (last, rows[last])})
    return gain.metrics(), [gain.line(), *replies]
