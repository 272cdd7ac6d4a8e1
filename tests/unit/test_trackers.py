"""Trackers write what metrics.jsonl holds, read back from their own files: TensorBoard event files through
EventAccumulator, a W&B offline run through its transaction log. A tracker whose package is missing is one
clear error."""

import json
import math
import struct
import sys
import time

import pytest

from rlhf_ray.runtime import trackers

ROWS = [  # (stage, row) as a pipeline logs them: SFT steps from 1, PPO from 0 with eval rows repeating a step
    ("sft", {"step": 1, "loss": 2.5}),
    ("sft", {"step": 2, "loss": 2.0, "eval_loss": 2.2}),
    ("ppo", {"step": 0, "policy_version": 0, "eval_reward_mean": 0.1}),
    ("ppo", {"step": 0, "policy_version": 1, "reward_mean": 0.25, "kl_mean": float("nan"), "staleness_max": 0,
             "entropy": None, "note": "text", "eos_frac": True}),
    ("ppo", {"step": 1, "policy_version": 2, "reward_mean": 0.5, "kl_mean": 0.01, "staleness_max": 1}),
]
# What a tracker should hold: finite numbers only; not step, stage, policy_version, strings, bools, null, nan.
EXPECTED = {
    "sft/loss": [(1, 2.5), (2, 2.0)], "sft/eval_loss": [(2, 2.2)], "ppo/eval_reward_mean": [(0, 0.1)],
    "ppo/reward_mean": [(0, 0.25), (1, 0.5)], "ppo/kl_mean": [(1, 0.01)], "ppo/staleness_max": [(0, 0), (1, 1)],
}


def test_scalars_keep_finite_numbers_under_the_stage():
    stage, row = ROWS[3]
    assert trackers.scalars(stage, row) == {"ppo/reward_mean": 0.25, "ppo/staleness_max": 0}
    assert trackers.scalars(None, {"step": 3, "loss": 1.5, "x": math.inf}) == {"loss": 1.5}


def test_tensorboard_event_file_holds_the_rows(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = trackers.TensorBoardTracker(tmp_path / "tb")
    for stage, row in ROWS:
        tb.log(stage, row)
    tb.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == sorted(EXPECTED)
    for tag, want in EXPECTED.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in want], tag
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6), tag  # stored as float32


def _wandb_history(run_file) -> list[dict]:
    """The history rows of an offline run's .wandb file: W&B's framing of the LevelDB log format (a 7-byte file
    header, 32 KiB blocks, each record in chunks with a 7-byte header: crc, length, type), protobuf Records."""
    from wandb.proto import wandb_internal_pb2

    buf, block, pos, part, out = run_file.read_bytes(), 32768, 7, b"", []
    assert buf[:4] == b":W&B", "not a W&B transaction log"
    while pos + 7 <= len(buf):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack_from("<IHB", buf, pos)
        part += buf[pos + 7: pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # FULL or LAST chunk: a record is complete
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(part)
            part = b""
            if rec.WhichOneof("record_type") == "history":
                out.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
    return out


def test_wandb_offline_run_holds_the_rows(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")  # nothing leaves the machine (the suite runs in a netns anyway)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")  # don't wrap pytest's captured stdout
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):  # its debug logs and settings: not in ~
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    tracker = trackers.WandbTracker("rlhf-ray-test", "unit", {"ppo": {"kl_coef": 0.05}}, tmp_path)
    for stage, row in ROWS:
        tracker.log(stage, row)
    tracker.close()

    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, list(tmp_path.rglob("*"))
    # wandb-core writes the file from its own process; seen once under load: read before the history landed.
    deadline = time.monotonic() + 20
    while len(history := _wandb_history(runs[0])) < len(ROWS) and time.monotonic() < deadline:
        time.sleep(0.5)
    # one W&B step per row, growing across stages; the stage's own step logged beside the values
    assert [h["_step"] for h in history] == list(range(len(ROWS)))
    for h, (stage, row) in zip(history, ROWS):
        assert h[f"{stage}/step"] == row["step"]
    got: dict[str, list] = {}
    for h in history:
        stage = next(k.split("/")[0] for k in h if k.endswith("/step"))
        for k, v in h.items():
            if not k.startswith("_") and k != f"{stage}/step":
                got.setdefault(k, []).append((h[f"{stage}/step"], v))
    assert got == EXPECTED


@pytest.mark.parametrize("cls, package, args", [
    (trackers.TensorBoardTracker, "tensorboard", ("tb",)),
    (trackers.WandbTracker, "wandb", ("project", "run", {}, "dir")),
])
def test_missing_package_is_one_clear_error(cls, package, args, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for name in list(sys.modules):  # a None entry makes `import name` raise ImportError
        if name == package or name.startswith(package + ".") or name == "torch.utils.tensorboard":
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, package, None)
    with pytest.raises(RuntimeError, match=f"logging.{package} is set but the {package} package is not installed: "
                                           f"pip install {package}"):
        cls(*args)
    assert not list(tmp_path.iterdir())  # nothing half-created
