"""The whole recipe through `rlhf-ray run configs/tiny/pipeline.yaml` (in-process `cli.main`, one Ray session for
the module): SFT -> label (k samples per prompt from the SFT policy, scored by configs/tiny/rewards.py's
target_token_frac) -> RM on those pairs -> PPO against that RM. Then the same run directory continued: a rerun
skips every stage without starting Ray, the DPO branch reuses the finished SFT and label stages, `--force` reruns."""

import contextlib
import io
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rlhf_ray import cli
from rlhf_ray.engines import scoring
from rlhf_ray.stages.pipeline import MARKER

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "configs/tiny/pipeline.yaml"
PROMPTS, K = 160, 8  # data.prompts.max_rows and label.k there
STAGES = ["sft", "label", "rm", "ppo"]


class _Tee(io.StringIO):
    """Keeps what the driver prints (the test reads it) and still shows it."""

    def write(self, s: str) -> int:
        sys.__stdout__.write(s)
        return super().write(s)


def _run(*args: str) -> int:
    return cli.main(["run", CONFIG, *args])


def _metrics(run_dir: Path, stage: str) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["stage"] == stage]


def _marker(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / "final" / stage / MARKER).read_text())


@pytest.fixture(scope="module")
def run(ray_session, tmp_path_factory) -> tuple[Path, str]:
    """(run directory, what the driver printed) of the whole pipeline."""
    run_dir = tmp_path_factory.mktemp("pipeline")
    out, t0 = _Tee(), time.perf_counter()
    with contextlib.redirect_stdout(out):
        assert _run("--run-dir", str(run_dir)) == 0
    print(f"pipeline sft -> label -> rm -> ppo: {time.perf_counter() - t0:.0f} s")
    return run_dir, out.getvalue()


def test_label_writes_the_best_and_worst_of_each_prompt(run):
    run_dir, _ = run
    (row,) = _metrics(run_dir, "label")
    prefs = pq.read_table(run_dir / "final" / "label" / "preferences.parquet")
    assert _marker(run_dir, "label")["outputs"] == {"preferences": str(run_dir / "final" / "label" /
                                                                      "preferences.parquet")}
    assert prefs.column_names == ["prompt", "chosen", "rejected", "margin", "chosen_score", "rejected_score"]
    dropped = {k: v for k, v in row.items() if k.endswith("_dropped")}
    print(f"label: {row['pairs']} pairs, dropped {dropped}; labeler score: all {row['score_mean']:.3f}, chosen "
          f"{row['chosen_score_mean']:.3f}, rejected {row['rejected_score_mean']:.3f}; {row['tokens_per_s']:.0f} "
          f"tokens/s")
    assert row["prompts"] == PROMPTS and row["samples"] == PROMPTS * K
    assert prefs.num_rows == row["pairs"] and row["pairs"] + sum(dropped.values()) == PROMPTS
    assert set(dropped) == {"ties_dropped", "blank_dropped", "same_text_dropped", "too_long_dropped"}
    assert row["pairs"] >= 0.8 * PROMPTS  # k = 8 makes ties rare
    pairs = prefs.to_pylist()
    assert all(p["chosen_score"] > p["rejected_score"] for p in pairs)
    assert all(math.isclose(p["margin"], p["chosen_score"] - p["rejected_score"]) for p in pairs)
    assert all("<|im_start|>" not in p["prompt"] for p in pairs)  # the raw prompt: later stages template it
    assert row["chosen_score_mean"] > row["score_mean"] > row["rejected_score_mean"]
    assert row["tokens_per_s"] > 0 and "margin_mean" in row


def test_the_scores_are_the_labelers_on_the_samples(run):
    """rollouts/label.parquet holds every sample with its score: the labeler's own on the sampled token ids (the
    metadata a PPO reward function gets), and each pair is its prompt's best and worst sample."""
    run_dir, _ = run
    samples = pq.read_table(run_dir / "rollouts" / "label.parquet").to_pylist()
    labeler = scoring.load_reward_function(str(ROOT / "configs/tiny/rewards.py:target_token_frac"))
    assert [s["score"] for s in samples] == labeler(None, None, [s["response_ids"] for s in samples])
    by_group: dict[int, list[dict]] = {}
    for s in samples:
        by_group.setdefault(s["group"], []).append(s)
    assert len(by_group) == PROMPTS and all(len(g) == K for g in by_group.values())
    best = {(g[0]["prompt"], max(s["score"] for s in g if s["response"].strip())) for g in by_group.values()}
    for p in pq.read_table(run_dir / "final" / "label" / "preferences.parquet").to_pylist():
        assert (p["prompt"], p["chosen_score"]) in best


def test_the_reward_model_learns_the_labeler_on_held_out_pairs(run):
    run_dir, _ = run
    rows = _metrics(run_dir, "rm")
    first, last = rows[0], rows[-1]
    print(f"rm: held-out accuracy {first['eval_accuracy']:.3f} -> {last['eval_accuracy']:.3f}, eval loss "
          f"{first['eval_loss']:.3f} -> {last['eval_loss']:.3f}")
    assert last["eval_accuracy"] >= 0.7
    assert last["eval_loss"] < first["eval_loss"] - 0.3  # learned, not a lucky random score head
    inputs = _marker(run_dir, "rm")["inputs"]
    assert inputs["data.preferences.path"] == str(run_dir / "final" / "label" / "preferences.parquet")
    assert inputs["model.policy"] == str(run_dir / "final" / "sft")


def test_ppo_scores_with_the_reward_model_and_its_critic_starts_from_it(run):
    run_dir, printed = run
    rm = str(run_dir / "final" / "rm")
    assert _marker(run_dir, "ppo")["inputs"]["model.reward"] == rm
    assert f"critic starts from {rm}\n" in printed  # the RM reads the policy's tokens (the tiny vocabulary)
    rows = [r for r in _metrics(run_dir, "ppo") if "reward_mean" in r]
    print(f"ppo: reward {rows[0]['reward_mean']:.3f} -> {rows[-1]['reward_mean']:.3f}, kl {rows[-1]['kl_mean']:.3f}")
    assert [r["policy_version"] for r in rows] == list(range(1, 3))
    assert all(math.isfinite(r["reward_mean"]) and math.isfinite(r["value_loss"]) for r in rows)
    assert (run_dir / "final" / "ppo" / "config.json").exists()
    gold = [r["eval_gold_mean"] for r in _metrics(run_dir, "ppo") if "eval_gold_mean" in r]
    print(f"ppo: the labeler's (gold) score on held-out prompts {gold[0]:.3f} -> {gold[-1]:.3f}")
    assert len(gold) == 2


def test_a_rerun_skips_every_stage_without_starting_ray(run):
    """In a fresh process, so nothing is imported yet: a finished pipeline must not even import Ray."""
    run_dir, _ = run
    code = ("import sys; from rlhf_ray import cli; "
            f"rc = cli.main(['run', {CONFIG!r}, '--run-dir', {str(run_dir)!r}]); "
            "assert 'ray' not in sys.modules and 'vllm' not in sys.modules; sys.exit(rc)")
    before = (run_dir / "metrics.jsonl").read_text()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"rerun of a finished pipeline: {seconds:.1f} s")
    for stage in STAGES:
        assert f"{stage}: finished in an earlier run" in proc.stdout
    assert seconds < 30 and (run_dir / "metrics.jsonl").read_text() == before


def test_the_dpo_branch_reuses_the_finished_sft_and_label_stages(run, capsys):
    run_dir, _ = run
    assert _run("stages=[sft,label,dpo]", "--run-dir", str(run_dir)) == 0
    out = capsys.readouterr().out
    assert "sft: finished in an earlier run" in out and "label: finished in an earlier run" in out
    inputs = _marker(run_dir, "dpo")["inputs"]
    assert inputs["data.preferences.path"] == str(run_dir / "final" / "label" / "preferences.parquet")
    assert inputs["model.policy"] == str(run_dir / "final" / "sft")
    rows = _metrics(run_dir, "dpo")
    first, last = rows[0], rows[-1]
    print(f"dpo on the labelled pairs: held-out implicit-reward accuracy {last['eval_accuracy']:.3f}, reward margin "
          f"{first['eval_reward_margin']:.3f} -> {last['eval_reward_margin']:.3f}")
    assert last["eval_reward_margin"] > first["eval_reward_margin"]


def test_force_reruns_finished_stages(run):
    """Forced stages run again (short: 2 SFT steps, 16 label prompts; the full ones are what the tests above read)
    and their rows replace the earlier ones."""
    from transformers import AutoModelForCausalLM

    run_dir, _ = run
    prefs = run_dir / "final" / "label" / "preferences.parquet"
    written, ppo_rows = prefs.stat().st_mtime_ns, _metrics(run_dir, "ppo")
    assert len(_metrics(run_dir, "sft")) > 3
    assert _run("stages=[sft,label]", "train.max_steps=2", "train.eval_every=0", "data.prompts.max_rows=16", "--force",
                "--run-dir", str(run_dir)) == 0
    assert prefs.stat().st_mtime_ns > written
    assert [r["step"] for r in _metrics(run_dir, "sft")] == [0, 1, 2]  # the forced run's rows replace the old ones
    (label,) = _metrics(run_dir, "label")  # replaced, not added
    assert label["prompts"] == 16 and pq.read_table(prefs).num_rows == label["pairs"]
    assert _metrics(run_dir, "ppo") == ppo_rows  # stages not listed keep their rows
    assert AutoModelForCausalLM.from_pretrained(run_dir / "final" / "sft").config.architectures == ["LlamaForCausalLM"]


def test_every_stage_trains_lora_adapters(ray_session, tmp_path):
    """The whole pipeline (sft -> label -> rm -> ppo) and the DPO branch with `model.lora`: each learner trains
    adapters (the reward model and critic also their score head); each stage's final folder is a merged HF model
    that the next stage (and vLLM) loads, with the adapters beside it; the reward model still learns the labeler
    and PPO runs without a reference actor."""
    import safetensors.torch

    lora = ("model.lora={rank: 8, alpha: 32, target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
            "down_proj, lm_head]}")
    # The reward model's adapters at lr 0.01 for 3 epochs learn the labeler or not by the luck of the samples (held-out
    # accuracy 0.50 and 0.91 on two label runs); at 0.005 for 8 epochs, 0.88 and 0.94 on the same two.
    rm_train = "stage_overrides.rm.train={lr: 0.005, epochs: 8}"
    out = _Tee()
    with contextlib.redirect_stdout(out):
        assert _run(lora, "train.lr=0.01", rm_train, "--run-dir", str(tmp_path)) == 0
    assert _run(lora, "train.lr=0.01", "stages=[sft,label,dpo]", "--run-dir", str(tmp_path)) == 0
    for stage in ("sft", "rm", "ppo", "dpo"):
        adapter = safetensors.torch.load_file(tmp_path / "final" / stage / "adapter" / "adapter_model.safetensors")
        assert adapter and all("lora_" in k or "score" in k for k in adapter), stage
        assert (tmp_path / "final" / stage / "config.json").is_file()
    assert any("score" in k for k in safetensors.torch.load_file(
        tmp_path / "final" / "rm" / "adapter" / "adapter_model.safetensors"))  # the head trains in full
    # Learns the labeler: its held-out loss falls from ln 2 and it ranks most pairs right. The labels come from
    # sampling and move with anything upstream of it: 0.88 and 0.94 on two earlier label runs, 0.72 (loss 0.693 ->
    # 0.629) twice on 2026-12-08, on 32 held-out pairs (SE ~0.08); an untrained head stays at 0.693.
    rm = [r for r in _metrics(tmp_path, "rm") if "eval_loss" in r]
    assert rm[-1]["eval_loss"] < rm[0]["eval_loss"] - 0.03 and rm[-1]["eval_accuracy"] >= 0.6, rm
    placed = [line.split()[0] for line in out.getvalue().splitlines() if line.split()[1:2] == ["0"]]
    assert "policy" in placed and "reference" not in placed  # PPO's reference is the policy with adapters off
