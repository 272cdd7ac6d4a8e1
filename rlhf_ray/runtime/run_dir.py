"""The run directory `runs/<name>/`: config.yaml (resolved), metrics.jsonl, rollouts/*.parquet, final/<stage>/,
and .lock while a run holds it (`rlhf_ray.runtime.lock`, taken by the CLI before a RunDir is made)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rlhf_ray.config import Config, dump_yaml
from rlhf_ray.rows import DataError

if TYPE_CHECKING:
    import pyarrow as pa


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl (none if it does not exist). A last line without its newline that does not
    parse was cut short (a run killed mid-append, or one appending now): it is left out, said on stderr. Any
    other line that is not a JSON object is corruption: DataError naming the file and line."""
    path = Path(path)
    try:
        lines = path.read_text(errors="replace").split("\n")  # a byte that is not UTF-8: a bad line, below
    except FileNotFoundError:
        return []
    tail, rows = lines.pop(), []  # tail: "" when the file ends with a newline
    for n, line in enumerate(lines, 1):
        if line.strip():
            rows.append(_row(path, n, line))
    if tail.strip():
        try:
            rows.append(_row(path, len(lines) + 1, tail))
        except DataError:
            print(f"{path}:{len(lines) + 1}: last line cut short (a run stopped mid-write, or one writing now); "
                  f"left out", file=sys.stderr, flush=True)
    return rows


def _row(path: Path, n: int, line: str) -> dict:
    try:
        row = json.loads(line)
    except (ValueError, RecursionError) as e:
        why = getattr(e, "msg", "nested too deeply")
        raise DataError(f"{path}:{n}: not a JSON line ({why}); fix or delete that line") from None
    if not isinstance(row, dict):
        raise DataError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}; fix or delete that line")
    return row


class RunDir:
    """stage: set by the pipeline while a stage runs; every metrics row then carries it (`stage` key), so the
    rows of a pipeline's stages can share one metrics.jsonl. monitor: shows each row as it is logged
    (progress, Ray gauges, plots, trackers; `rlhf_ray.runtime.monitor`), when the command line gives one."""

    def __init__(self, path: str | Path, cfg: Config, monitor=None):
        self.stage: str | None = None
        self.monitor = monitor
        self._appendable = False  # metrics.jsonl checked to end with a newline (`check_metrics`)
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
        if not self._appendable:
            self.check_metrics()
        with (self.path / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(clean) + "\n")
        if self.monitor is not None:
            self.monitor.log(self.stage, row)

    def log_placement(self, event: str, step: int, records: list[dict]) -> None:
        """Append where actors are to placement.jsonl, one line per actor: `event` is `start` (every actor, when
        the stage starts or resumes) or `replaced` (a replacement, after its actor or node was lost)."""
        with (self.path / "placement.jsonl").open("a") as f:
            for r in records:
                f.write(json.dumps({"stage": self.stage, "event": event, "step": step, **r}) + "\n")

    def metrics(self, stage: str | None = None) -> list[dict]:
        """The rows of metrics.jsonl (only `stage`'s, when given); see `read_metrics`."""
        return [r for r in read_metrics(self.path / "metrics.jsonl") if stage is None or r.get("stage") == stage]

    def check_metrics(self) -> None:
        """Read metrics.jsonl before rows are added: a corrupt line is refused now (before Ray starts, when the CLI
        calls this), and a last line a killed run cut short is dropped from the file, so the next row appended
        starts a line of its own instead of gluing onto the fragment."""
        path = self.path / "metrics.jsonl"
        rows = self.metrics()
        if path.exists() and not _ends_with_newline(path):
            self.replace_metrics(None, rows)
        self._appendable = True

    def drop_metrics(self, stage: str) -> None:
        """Remove `stage`'s rows (before it reruns), keeping the other stages' rows in order."""
        self.replace_metrics(stage, [])

    def replace_metrics(self, stage: str | None, rows: list[dict]) -> None:
        """`stage`'s rows become `rows` (a resumed stage: those its checkpoint saw; rows logged after it, by the
        run that died, go). stage None: every row."""
        path = self.path / "metrics.jsonl"
        keep = [r for r in self.metrics() if r.get("stage") != stage] if stage is not None else []
        if path.exists() or rows:
            path.write_text("".join(json.dumps(r) + "\n" for r in keep + rows))
        self._appendable = True

    def rollouts_path(self, step: int | str) -> Path:
        """rollouts/step_NNNNNN.parquet for a training step, rollouts/<step>.parquet for a name."""
        name = f"step_{step:06d}" if isinstance(step, int) else step
        return self.path / "rollouts" / f"{name}.parquet"

    def write_rollouts(self, step: int | str, table: pa.Table) -> Path:
        return self.write_table(table, self.rollouts_path(step))

    @staticmethod
    def write_table(table: pa.Table, out: Path) -> Path:
        import pyarrow.parquet as pq  # here: `rlhf-ray report` reads metrics through this module, without Arrow

        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out)
        return out

    def final(self, stage: str) -> Path:
        return self.path / "final" / stage


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        if f.seek(0, 2) == 0:
            return True
        f.seek(-1, 2)
        return f.read(1) == b"\n"
