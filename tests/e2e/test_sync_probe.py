"""The sync probe stops a PPO run whose generators serve other weights than the learner holds, for each fault the
buckets' checksums cannot see (they are computed over the wrong bytes): a wrong tensor sent, two names swapped,
a stale tied LM head. Each run goes through `rlhf-ray run` with the fault armed at weights version 2 (the sync
after step 2): steps 1 and 2 pass their probes, then the run stops with one line naming the generator, the
version and both numbers. The healthy runs' probes are asserted in tests/e2e/test_ppo_tiny.py."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_ray import models

ROOT = Path(__file__).resolve().parents[2]
EXE = str(Path(sys.executable).with_name("rlhf-ray"))
# The fewest actors a PPO run has (a generator, a policy learner, the reward function: GRPO without the KL needs no
# critic and no reference) and a small batch: each run is its start-up and two syncs.
LEAN = ("ppo.advantage=grpo", "ppo.kl_coef=0", "rollout.batch_size=8", "ppo.mini_batch_size=32",
        "train.micro_batch_size=16")


@pytest.fixture(scope="module")
def tied(tmp_path_factory) -> str:
    """The tiny model with one matrix for the embedding and the LM head (as SmolLM2 has)."""
    return str(models.make_tiny_model(tmp_path_factory.mktemp("tied"), seed=3, tie_word_embeddings=True))


@pytest.mark.parametrize("fault", ["wrong_bucket", "swap_names", "stale_head"])
def test_the_probe_stops_a_run_whose_generator_serves_other_weights(fault, tied, tmp_path):
    run_dir = tmp_path / "run"
    args = ["ppo.steps=4", "cluster.call_timeout_s=120", *LEAN]
    if fault == "stale_head":
        args.append(f"model.policy={tied}")
    proc = subprocess.run([EXE, "run", "configs/tiny/ppo.yaml", *args, "--run-dir", str(run_dir)], cwd=ROOT,
                          env=dict(os.environ, RLHF_RAY_FAULTS=f"{fault}=2"), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode != 0 and f"fault injected: {fault}: weights version 2" in proc.stderr, proc.stderr[-3000:]
    line = next(x for x in proc.stderr.splitlines() if "sync probe:" in x)
    print(f"\n{fault}: {line}")
    assert re.search(r"generator-0 serves other weights than policy rank 0 after the sync of version 2: the probe's "
                     r"mean log-prob is -?[\d.]+ there and -?[\d.]+ on the learner \(mean gap [\d.e+-]+, tolerance "
                     r"0\.001\)", line), line
    assert "Traceback" not in proc.stderr  # one line, not a stack
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0]  # step 1's sync (version 1) passed its probe; version 2's stopped it
    assert rows[0]["sync_probe_gap"] < 1e-3
