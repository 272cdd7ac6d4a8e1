"""The monitor's pure parts: which progress lines a stage prints, the bar, and the fan-out from RunDir.log_metrics.
(The Ray gauges are checked against a real metrics endpoint in tests/e2e/test_cluster_ops.py.)"""

import io
import json
import re
import sys

from rlhf_ray.config import load_config
from rlhf_ray.runtime.monitor import Monitor, Progress
from rlhf_ray.runtime.run_dir import RunDir


def ppo_row(step: int) -> dict:
    return {"step": step, "policy_version": step + 1, "reward_mean": 0.1 * step, "kl_mean": 0.5, "tokens_per_s": 900.0,
            "staleness_max": 1, "time_generate_s": 2.0, "policy_loss": float("nan")}


def test_lines_show_first_last_eval_and_throttle_the_rest(capsys):
    p = Progress("lines", every_s=3600)
    p.start("ppo", 5)
    p.log("ppo", {"step": 0, "policy_version": 0, "eval_reward_mean": 0.25, "eval_kl_mean": 0.0,
                  "eval_alarm_length": 0, "eval_alarms_total": 0})  # the guard's keys keep it an eval row
    for step in range(5):
        p.log("ppo", ppo_row(step))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0] for line in lines] == ["ppo at step 0", "ppo step 1/5 [00:00<00:00]",
                                                       "ppo step 5/5 [00:00<00:00]"]
    assert "eval reward 0.25" in lines[0] and "reward 0.4  kl 0.5" in lines[2] and "tok/s 900" in lines[2]
    assert "policy_loss" not in lines[2] and "nan" not in lines[2]  # not shown; non-finite never printed


def test_supervised_rows_show_train_and_eval_keys_and_a_zero_interval_prints_all(capsys):
    p = Progress("lines", every_s=0)
    p.start("sft", 3)
    for step in (1, 2, 3):
        p.log("sft", {"step": step, "loss": 3.0 / step, **({"eval_loss": 2.0} if step == 3 else {})})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[-1].endswith("loss 1  eval loss 2"), lines


def test_bar_mode_counts_training_rows_only(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    p = Progress("bar", every_s=0)
    p.start("ppo", 4)
    p.log("ppo", {"step": 0, "policy_version": 0, "eval_reward_mean": 0.5})  # an eval row is written, not counted
    for step in range(2):
        p.log("ppo", ppo_row(step))
    assert p.bar.n == 2 and p.bar.total == 4
    p.close()
    assert re.search(r"ppo:\s+50%.*2/4", err.getvalue().replace("\r", "\n")), err.getvalue()


def test_run_dir_feeds_the_monitor_and_plots_when_a_stage_ends(tmp_path, capsys):
    cfg = load_config(None, ["name=unit", "logging.progress=lines", "logging.plots_every_s=0",
                             "logging.tensorboard=true"])
    run_dir = RunDir(tmp_path, cfg, monitor=Monitor(cfg, tmp_path))
    run_dir.start_stage("ppo")
    run_dir.expect_steps(3)
    for step in range(3):
        run_dir.log_metrics(ppo_row(step))
    assert not (tmp_path / "plots").exists()  # plots_every_s=0: only when the stage ends
    run_dir.end_stage()
    run_dir.monitor.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["ppo"] * 3 and rows[0]["policy_loss"] is None
    assert (tmp_path / "plots" / "ppo_reward.png").stat().st_size > 0
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert "ppo step 3/3" in capsys.readouterr().out


def test_skipped_updates_counts_in_a_row_and_stops_at_the_limit(capsys):
    import pytest

    from rlhf_ray.runtime.stopping import NonFiniteLoss, SkippedUpdates

    guard = SkippedUpdates(limit=2)
    for skipped in (1.0, 0.0, 1.0):
        guard.see(skipped, "ppo")
    assert guard.in_a_row == 1 and capsys.readouterr().out.count("update skipped") == 2
    guard.check()  # 1 in a row: below the limit
    guard.see(1.0, "ppo")
    with pytest.raises(NonFiniteLoss, match="ppo: 2 updates in a row"):
        guard.check()
