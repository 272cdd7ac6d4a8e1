"""Optional experiment trackers fed the same rows as metrics.jsonl: TensorBoard and Weights & Biases.

Each is used only when the config asks for it; its package is imported then, so neither is a hard dependency,
and asking for one that is not installed is one clear error. Both log finite numbers only (metrics.jsonl keeps
non-finite values as null; a tracker would draw them as spikes or refuse them) under `<stage>/<key>`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

# step: the x axis, not a value. policy_version: step + 1 on train rows but step on eval rows, so logging it would
# put two different values at one step (a zigzag) while saying nothing the step does not.
NOT_SCALARS = ("stage", "step", "policy_version")


def scalars(stage: str | None, row: dict) -> dict[str, float]:
    """`<stage>/<key>` -> value for the finite numbers of a metrics row (bools and strings are not metrics)."""
    prefix = f"{stage}/" if stage else ""
    return {prefix + k: v for k, v in row.items() if k not in NOT_SCALARS and isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(v)}


def _missing(what: str, package: str) -> RuntimeError:
    return RuntimeError(f"logging.{what} is set but the {package} package is not installed: pip install {package}")


class TensorBoardTracker:
    """Scalars `<stage>/<key>` at global step = the row's `step` (stages have their own tags, so their step
    ranges may overlap)."""

    def __init__(self, log_dir: str | Path, flush_secs: int = 10):
        try:  # SummaryWriter needs the tensorboard package, which torch does not install
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise _missing("tensorboard", "tensorboard") from e
        # flush_secs: TensorBoard shows a live run; the default (120 s) makes short runs look stuck.
        self.writer = SummaryWriter(log_dir=str(log_dir), flush_secs=flush_secs)

    def log(self, stage: str | None, row: dict) -> None:
        step = row.get("step")
        for tag, v in scalars(stage, row).items():
            self.writer.add_scalar(tag, v, global_step=step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """One W&B run for the whole pipeline. W&B wants one step that only grows across the run, but each stage
    counts its own steps from 0 or 1 (and eval rows repeat a train row's step). So the W&B step is a counter of
    rows logged, the stage's step is logged as `<stage>/step`, and define_metric makes it the x axis of the
    stage's charts."""

    def __init__(self, project: str, run_name: str, config_dict: dict, dir: str | Path):
        try:
            import wandb
        except ImportError as e:
            raise _missing("wandb", "wandb") from e
        self.run = wandb.init(project=project, name=run_name, config=config_dict, dir=str(dir),
                              mode=os.environ.get("WANDB_MODE", "online"))
        self.counter = 0
        self.stages: set[str] = set()

    def log(self, stage: str | None, row: dict) -> None:
        step_key = f"{stage}/step" if stage else "step"
        if stage and stage not in self.stages:
            self.run.define_metric(step_key)
            self.run.define_metric(f"{stage}/*", step_metric=step_key)
            self.stages.add(stage)
        values = scalars(stage, row)
        if isinstance(row.get("step"), int):
            values[step_key] = row["step"]
        self.run.log(values, step=self.counter)
        self.counter += 1

    def close(self) -> None:
        self.run.finish()
