"""The run directory `runs/<name>/`: config.yaml (resolved), metrics.jsonl, rollouts/*.parquet, final/<stage>/."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rlhf_ray.config import Config, dump_yaml


class RunDir:
    """stage: set by the pipeline while a stage runs; every metrics row then carries it (`stage` key), so the
    rows of a pipeline's stages can share one metrics.jsonl. monitor: shows each row as it is logged
    (progress, Ray gauges, plots, trackers; `rlhf_ray.runtime.monitor`), when the command line gives one."""

    def __init__(self, path: str | Path, cfg: Config, monitor=None):
        self.stage: str | None = None
        self.monitor = monitor
        self.path = Path(path).expanduser()
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "config.yaml").write_text(dump_yaml(cfg))

    def start_stage(self, stage: str) -> None:
        self.stage = stage

    def expect_steps(self, steps: int | None) -> None:
        """The running stage will log `steps` training rows (for the progress bar's length and ETA)."""
        if self.monitor is not None:
            self.monitor.start(self.stage or "run", steps)

    def end_stage(self) -> None:
        if self.monitor is not None:
            self.monitor.end()
        self.stage = None

    def log_metrics(self, row: dict) -> None:
        """Append one JSON object (one step) to metrics.jsonl; non-finite numbers become null."""
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        if self.stage is not None:
            clean = {"stage": self.stage, **clean}
        with (self.path / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(clean) + "\n")
        if self.monitor is not None:
            self.monitor.log(self.stage, row)

    def metrics(self, stage: str | None = None) -> list[dict]:
        """The rows of metrics.jsonl (only `stage`'s, when given)."""
        path = self.path / "metrics.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        return [r for r in rows if stage is None or r.get("stage") == stage]

    def drop_metrics(self, stage: str) -> None:
        """Remove `stage`'s rows (before it reruns), keeping the other stages' rows in order."""
        self.replace_metrics(stage, [])

    def replace_metrics(self, stage: str | None, rows: list[dict]) -> None:
        """`stage`'s rows become `rows` (a resumed stage: those its checkpoint saw; rows logged after it, by the
        run that died, go). stage None: every row."""
        path = self.path / "metrics.jsonl"
        keep = [r for r in self.metrics() if stage is not None and r.get("stage") != stage]
        if path.exists() or rows:
            path.write_text("".join(json.dumps(r) + "\n" for r in keep + rows))

    def write_rollouts(self, step: int | str, table: pa.Table) -> Path:
        """rollouts/step_NNNNNN.parquet for a training step, rollouts/<step>.parquet for a name."""
        name = f"step_{step:06d}" if isinstance(step, int) else step
        return self.write_table(table, self.path / "rollouts" / f"{name}.parquet")

    @staticmethod
    def write_table(table: pa.Table, out: Path) -> Path:
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out)
        return out

    def final(self, stage: str) -> Path:
        return self.path / "final" / stage
