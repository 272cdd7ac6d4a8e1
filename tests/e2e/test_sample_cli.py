"""`rlhf-ray sample` end to end on the tiny model, through the installed console script."""

import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from rlhf_ray import rollout

ROOT = Path(__file__).resolve().parents[2]


def _rlhf_ray() -> str:
    exe = Path(sys.executable).with_name("rlhf-ray")
    return str(exe) if exe.exists() else shutil.which("rlhf-ray")


def test_sample_writes_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run([_rlhf_ray(), "sample", "configs/tiny/sample.yaml", "rollout.temperature=0.7",
                           "--run-dir", str(run_dir)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "kept 8 rows" in proc.stdout and "16 responses" in proc.stdout
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["rollout"]["temperature"] == 0.7 and resolved["model"]["policy"] == "tiny"
    table = pq.read_table(run_dir / "rollouts" / "sample.parquet")
    assert table.num_rows == 16 and table.select(rollout.ROLLOUT_SCHEMA.names).schema.equals(rollout.ROLLOUT_SCHEMA)
    assert table.column_names[len(rollout.ROLLOUT_SCHEMA):] == [rollout.MESSAGES]  # text prompts, no other column
    assert rollout.prompts(table) == table.column("prompt").to_pylist()
    assert set(table.column("group").to_pylist()) == set(range(8))


def test_sample_reports_a_bad_dataset_row(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"promt": "typo"}\n')
    proc = subprocess.run([_rlhf_ray(), "sample", "configs/tiny/sample.yaml", f"data.prompts.path={bad}",
                           "--run-dir", str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert f"{bad}: row 2: missing field 'prompt'" in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing started, nothing written
