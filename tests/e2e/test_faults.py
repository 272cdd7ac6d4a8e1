"""Fault injection on real tiny runs (`rlhf-ray run` in a subprocess, each on its own embedded cluster): the driver
is killed hard in the middle of writing a checkpoint, and the resumed run stopped with SIGTERM, and the same command
resumes each time.
Each test prints what it tried and what survived."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
EXE = str(Path(sys.executable).with_name("rlhf-ray"))
TINY_PPO = ["configs/tiny/ppo.yaml", "rollout.max_staleness=1", "train.checkpoint_every=2"]
SIX_STEPS = ("ppo.steps=6", "cluster.roles.generator.count=2")  # the unbroken run two tests compare with
TIMING = ("time_", "tokens_per_s", "generator_busy_s")  # wall-clock seconds, not results


def run(run_dir: Path, *args: str, faults: str = "", timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, RLHF_RAY_FAULTS=faults)
    return subprocess.run([EXE, "run", *TINY_PPO, *args, "--run-dir", str(run_dir)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def results(run_dir: Path) -> list[dict]:
    """What a run computed, without its timings."""
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows(run_dir)]


def same_rows(a: list[dict], b: list[dict]) -> bool:
    """Same keys; numbers within rel 1e-6 (measured: identical), the rest equal."""
    def close(x, y) -> bool:
        if isinstance(x, float) and isinstance(y, float):
            return y == pytest.approx(x, rel=1e-6, abs=1e-9)
        return x == y

    return len(a) == len(b) and all(x.keys() == y.keys() and all(close(x[k], y[k]) for k in x) for x, y in zip(a, b))


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "final" / "ppo" / "model.safetensors")


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """Tiny PPO, 6 steps, 2 generators, one batch generated ahead, checkpoints every 2 steps: never broken."""
    out = tmp_path_factory.mktemp("straight") / "run"
    ok = run(out, *SIX_STEPS)
    assert ok.returncode == 0, ok.stderr[-3000:]
    return out


def test_a_crash_mid_checkpoint_and_a_sigterm_then_each_resume_exactly(straight, tmp_path):
    broken = tmp_path / "broken"
    crash = run(broken, *SIX_STEPS, faults="checkpoint.before_commit=4")
    ckpts = sorted(p.name for p in (broken / "checkpoints" / "ppo").iterdir())
    print(f"\ntried: kill the driver while it writes the step-4 checkpoint -> exit {crash.returncode}, "
          f"left {ckpts}, {len(rows(broken))} metrics rows")
    assert crash.returncode == 3 and "fault injected" in crash.stderr, crash.stderr[-3000:]
    assert ckpts == ["step_000002", "step_000004.tmp"]

    changed = run(broken, *SIX_STEPS, "ppo.kl_coef=0.5")
    print(f"tried: resume with ppo.kl_coef changed -> exit {changed.returncode}")
    assert changed.returncode == 1 and "ppo.kl_coef: 0.01 then, 0.5 now" in changed.stderr, changed.stderr[-3000:]

    # The resumed run is itself stopped by SIGTERM once it has logged a step of its own (SIGTERM's test, on the
    # same chain: one run fewer); no periodic checkpoints in it, so the one it leaves is SIGTERM's.
    code, out, err = sigterm_after_first_new_step(broken, "resuming after step 2", *SIX_STEPS,
                                                  "train.checkpoint_every=0")
    done = len(rows(broken))
    ckpts = sorted(p.name for p in (broken / "checkpoints" / "ppo").iterdir())
    print(f"tried: SIGTERM the resumed run after its first step -> exit {code} after {done} steps, {ckpts}")
    assert "resuming after step 2 (policy version 2)" in out
    assert code == 130 and "stopped by SIGTERM" in err, err[-3000:]
    assert 3 <= done < 6 and ckpts == ["step_000002", f"step_{done:06d}"]  # the .tmp one removed

    again = run(broken, *SIX_STEPS)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming after step {done}" in again.stdout
    newer = [n for n in (4, 6) if n > done]  # what the finishing run checkpoints (every 2 steps); 2 are kept
    assert sorted(p.name for p in (broken / "checkpoints" / "ppo").iterdir()) == \
        [f"step_{n:06d}" for n in sorted({2, done, *newer})[-2:]]
    a, b = results(straight), results(broken)
    assert [r["step"] for r in b] == list(range(6)) and len(a) == len(b)  # none lost, none twice
    assert same_rows(a, b), (a, b)
    wa, wb = weights(straight), weights(broken)
    gap = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    print(f"survived: a changed config refused, naming the key; resumed from step 2; SIGTERM checkpointed after "
          f"step {done} and the same command finished from there; 6 metrics rows equal to the unbroken run's "
          f"(rel 1e-6); final weights max gap {gap:.1e}")
    assert wa.keys() == wb.keys() and gap <= 1e-6


def sigterm_after_first_new_step(run_dir: Path, resuming: str, *args: str) -> tuple[int, str, str]:
    """`rlhf-ray run` resuming in run_dir, sent SIGTERM once it has printed `resuming` (its checkpoint's rows are
    back in metrics.jsonl by then, whatever an earlier run left there) and logged one more row.
    (exit code, stdout, stderr)."""
    out_path, err_path = run_dir.parent / "sigterm.out", run_dir.parent / "sigterm.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen([EXE, "run", *TINY_PPO, *args, "--run-dir", str(run_dir)], cwd=ROOT,
                                env=dict(os.environ, RLHF_RAY_FAULTS=""), stdout=out, stderr=err, text=True)
        try:
            deadline = time.monotonic() + 300
            while proc.poll() is None and time.monotonic() < deadline and resuming not in out_path.read_text():
                time.sleep(0.2)
            restored = len(rows(run_dir))
            while proc.poll() is None and time.monotonic() < deadline and len(rows(run_dir)) <= restored:
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
    return code, out_path.read_text(), err_path.read_text()


def test_sft_killed_after_a_checkpoint_resumes_to_the_same_model(tmp_path):
    def sft(run_dir: Path, faults: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([EXE, "run", "configs/tiny/sft.yaml", "train.checkpoint_every=10", "--run-dir",
                               str(run_dir)], cwd=ROOT, env=dict(os.environ, RLHF_RAY_FAULTS=faults),
                              capture_output=True, text=True, timeout=600)

    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert sft(straight).returncode == 0
    crash = sft(broken, faults="supervised.after_step=25")
    print(f"\ntried: kill the SFT driver after step 25 (checkpoints every 10) -> exit {crash.returncode}, "
          f"{len(rows(broken))} metrics rows")
    assert crash.returncode == 3 and len(rows(broken)) == 26  # the step-0 eval row and steps 1-25
    again = sft(broken)
    assert again.returncode == 0 and "sft: resuming after step 20" in again.stdout, again.stderr[-3000:]
    a, b = results(straight), results(broken)
    assert [r["step"] for r in b] == [r["step"] for r in a]
    assert same_rows(a, b), (a, b)
    wa = load_file(straight / "final" / "sft" / "model.safetensors")
    wb = load_file(broken / "final" / "sft" / "model.safetensors")
    gap = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    print(f"survived: resumed after step 20 (rows 21-25 of the dead run replaced); {len(b)} rows equal to the "
          f"unbroken run's; final weights max gap {gap:.1e}")
    assert gap <= 1e-6


def test_a_diverging_run_skips_non_finite_updates_then_stops(tmp_path):
    """LR 1e6 without clipping: a real divergence. Each non-finite loss skips its update on every rank; three in
    a row (train.max_skipped_updates) stop the run with one clear error, its actors gone."""
    proc = subprocess.run([EXE, "run", "configs/tiny/sft.yaml", "train.lr=1e6", "train.grad_clip=0",
                           "--run-dir", str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    skipped = [r for r in rows(tmp_path / "run") if r.get("skipped")]
    print(f"\ntried: SFT at LR 1e6 -> exit {proc.returncode}, {len(skipped)} updates skipped")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "3 updates in a row had a non-finite loss (train.max_skipped_updates = 3)" in proc.stderr
    assert len(skipped) == 3 and all(r["loss"] is None for r in skipped)  # NaN is written as null
    print("survived: the run stopped cleanly, naming the limit")


def prompts_per_step(run_dir: Path) -> list[list[str]]:
    return [sorted(pq.read_table(p).column("prompt").to_pylist())
            for p in sorted((run_dir / "rollouts").glob("step_*.parquet"))]


def test_dead_actors_are_replaced_and_a_dead_learner_stops_the_run_to_resume(straight, tmp_path):
    """Two generators; generator-1 dies as step 2 starts, generator-0 while it samples the 4th batch, the
    reference and the reward-function actor as step 3 starts: each is replaced (a generator brought to the
    current weights) and its share sampled or scored again. Then the policy learner dies at step 5: the run stops
    naming the step-4 checkpoint, and the same command finishes from there. Every step trains on exactly the
    prompts the unbroken run drew: none lost, none twice."""
    healed, args = tmp_path / "healed", SIX_STEPS
    proc = run(healed, *args, faults="kill.generator-1=2,kill.reference-0=3,kill.reward-fn-0=3,"
                                      "kill_after_launch.generator-0=4,kill.policy-learner-0=5")
    replaced = [line for line in proc.stdout.splitlines() if "starting a replacement" in line]
    print(f"\ntried: kill generator-1 (step 2), reference-0 and reward-fn-0 (step 3), generator-0 (sampling batch "
          f"4), policy-learner-0 (step 5) -> exit {proc.returncode}; " + "; ".join(replaced))
    assert sorted(line.split(": ")[-1].split(" died")[0] for line in replaced) == [
        "generator-0", "generator-1", "reference-0", "reward-fn-0"]
    assert "generate: the share of generator-0 is sampled again (16 prompts)" in proc.stdout  # batch 4's share
    assert rows(healed)[-1]["actor_restarts"] == 4
    assert proc.returncode == 1 and "policy-learner-0" in proc.stderr, proc.stderr[-3000:]
    assert "a learner rank cannot be replaced" in proc.stderr and "resumes from" in proc.stderr
    assert "step_000004" in proc.stderr, proc.stderr[-2000:]

    again = run(healed, *args)
    assert again.returncode == 0 and "resuming after step 4" in again.stdout, again.stderr[-3000:]
    assert [r["step"] for r in rows(healed)] == list(range(6))
    got, want = prompts_per_step(healed), prompts_per_step(straight)
    assert len(got) == 6 and all(len(p) == 32 * 4 for p in got) and got == want
    print("survived: 4 actors replaced; the learner's death stopped the run naming its checkpoint; the rerun "
          "resumed after step 4; 6 steps, each on the unbroken run's prompts, none lost or doubled")


def test_broadcast_sync_heals_resumes_and_matches_the_object_store(straight, tmp_path):
    """cluster.weight_sync: broadcast (gloo here, NCCL on GPU). Until a fault, every step equals the unbroken
    object-store run's, step 2 included: its batch was sampled by generators holding version 1, which the broadcast
    delivered (max_staleness 1: steps 0 and 1 train on batches sampled at version 0). generator-1 dies as step 3
    starts and generator-0 in the middle of the version-4 broadcast: both are replaced, the group is formed again
    and the sync made again. Then the learner dies at step 5 and the same command resumes, with a new group. Every
    step trains on the unbroken run's prompts."""
    healed, args = tmp_path / "broadcast", (*SIX_STEPS, "cluster.weight_sync=broadcast", "cluster.call_timeout_s=120")
    proc = run(healed, *args, faults="kill.generator-1=3,kill_in_sync.generator-0=4,kill.policy-learner-0=5")
    replaced = [line for line in proc.stdout.splitlines() if "starting a replacement" in line]
    print(f"\ntried: broadcast sync; kill generator-1 (step 3), generator-0 (in the version-4 broadcast), "
          f"policy-learner-0 (step 5) -> exit {proc.returncode}; " + "; ".join(replaced))
    assert "weight sync: broadcast (gloo)" in proc.stdout
    assert "sync: push: generator-0 died; starting a replacement" in replaced
    assert proc.returncode == 1 and "step_000004" in proc.stderr, proc.stderr[-3000:]
    assert [r["staleness_max"] for r in rows(healed)[:3]] == [0, 1, 1]  # step 2's batch: sampled at version 1
    assert same_rows(results(healed)[:3], results(straight)[:3])  # the broadcast delivered the learner's weights

    again = run(healed, *args)
    assert again.returncode == 0 and "resuming after step 4" in again.stdout, again.stderr[-3000:]
    assert [r["step"] for r in rows(healed)] == list(range(6))
    assert prompts_per_step(healed) == prompts_per_step(straight)
    print("survived: rows sampled after a broadcast equal the object store's; both generators replaced and the "
          "group formed again mid-sync; resumed after step 4 with a new group; 6 steps on the unbroken run's prompts")
