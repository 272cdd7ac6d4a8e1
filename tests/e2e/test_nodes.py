"""Distributed for real on one machine: a head and three worker nodes (`cluster.local.LocalNodes`: each its own
raylet and object store, on 127.0.0.1), pools pinned to them by `node_resource`, so the generators, the scorers
and the learners are on different nodes. A tiny PPO run crosses them with each weight transport; then the node
that holds the generators and a scorer is killed mid-run (the run heals on a node that joins), and the learners'
node is killed (the run stops naming its newest checkpoint, and resumes once a node is back). Counted per prompt:
every step samples the prompts the unbroken run sampled, each n times.

One cluster for the module (~7 s to start); each run joins it with --address."""

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cluster.local import LocalNodes
from rlhf_ray.runtime import control

ROOT = Path(__file__).resolve().parents[2]
EXE = str(Path(sys.executable).with_name("rlhf-ray"))
POOLS = ("rollout", "score", "train")
PINNED = [f"cluster.pools.{p}.{k}" for p in POOLS for k in (f"node_resource=rlhf_pool_{p}", "cpus_per_node=1")]
PLACED = ["cluster.roles.generator.pool=rollout", "cluster.roles.generator.count=2",
          "cluster.roles.reference.pool=score", "cluster.roles.policy.pool=train", "cluster.roles.critic.pool=train"]
STEPS, N_SAMPLES = 6, 4  # ppo.steps here; rollout.n_samples in configs/tiny/ppo.yaml
SIX = ["configs/tiny/ppo.yaml", f"ppo.steps={STEPS}", "train.checkpoint_every=2", *PINNED, *PLACED]
PAUSE = "ppo.pause=3"  # each step starts 3 s late: time to act between tiny steps (scale, kill a node)
TIMING = ("time_", "tokens_per_s", "generator_busy_s", "actor_restarts")


@pytest.fixture(scope="module")
def nodes():
    cluster = LocalNodes({pool: 1 for pool in POOLS})
    yield cluster
    cluster.shutdown()


def start(nodes: LocalNodes, run_dir: Path, *args: str, faults: str = "") -> subprocess.Popen:
    return subprocess.Popen([EXE, "run", *SIX, *args, "--address", nodes.address, "--run-dir", str(run_dir)],
                            cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=dict(os.environ, RLHF_RAY_FAULTS=faults))


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return out


def rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def placement(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "placement.jsonl").read_text().splitlines()]


def prompts_per_step(run_dir: Path) -> list[Counter]:
    """How often each prompt (its index among the run's prompts) was sampled, per step; every group of n samples
    is one prompt."""
    out = []
    for step in range(STEPS):
        t = pq.read_table(run_dir / "rollouts" / f"step_{step:06d}.parquet", columns=["prompt_index", "group"])
        groups = Counter(zip(t.column("group").to_pylist(), t.column("prompt_index").to_pylist()))
        assert set(groups.values()) == {N_SAMPLES} and len({g for g, _ in groups}) == len(groups), groups
        out.append(Counter(t.column("prompt_index").to_pylist()))
    return out


def wait_for(cond, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, f"the run ended before {what}: {finish(proc)[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout:g} s"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def straight(nodes, tmp_path_factory) -> Path:
    """The run unbroken, weights by broadcast (gloo across nodes), reward functions on the score node."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    proc = start(nodes, run_dir, "cluster.weight_sync=broadcast", "cluster.roles.reward_fn.pool=score")
    out = finish(proc)
    assert proc.returncode == 0, out[-4000:]
    return run_dir


def test_ppo_across_three_nodes_each_role_on_its_pool(nodes, straight):
    where = {(r["role"], r["rank"]): r["node_id"] for r in placement(straight) if r["event"] == "start"}
    print("\nnode layout:", {f"{role}-{rank}": node[:8] for (role, rank), node in where.items()})
    on = {pool: set(nodes.node_ids(pool)) for pool in POOLS}
    assert where[("generator", 0)] in on["rollout"] and where[("generator", 1)] in on["rollout"]
    assert where[("reference", 0)] in on["score"] and where[("reward_fn", 0)] in on["score"]
    assert where[("policy", 0)] in on["train"] and where[("critic", 0)] in on["train"]
    r = rows(straight)
    assert len(r) == STEPS and all(x["sync_probe_gap"] < 1e-3 for x in r), r  # every cross-node sync probed
    print("broadcast sync s per step:", [round(x["time_sync_s"], 3) for x in r])


def test_a_lost_node_heals_and_a_lost_learner_node_resumes(nodes, straight, tmp_path):
    """Weights by the object store (read across nodes); the rollout node holds both generators and the reward
    functions. It is killed after step 2 and a new one joins; the train node is killed after the step-4
    checkpoint, and the same command resumes once a new one has joined."""
    run_dir = tmp_path / "run"
    args = ("cluster.weight_sync=object_store", "cluster.roles.reward_fn.pool=rollout")
    proc = start(nodes, run_dir, *args, faults=PAUSE)  # the kills land between steps, not after the last
    wait_for(lambda: len(rows(run_dir)) >= 2, proc, "step 2")
    lost = nodes.remove("rollout")
    time.sleep(2)
    new = nodes.add("rollout")
    print(f"\ntried: killed the rollout node {lost[:8]} after step {len(rows(run_dir))}, added {new[:8]}")
    ckpt = run_dir / "checkpoints" / "ppo" / "step_000004"
    wait_for(lambda: (ckpt / "state.json").exists() and len(rows(run_dir)) >= 4, proc, "the step-4 checkpoint")
    nodes.remove("train")
    out = finish(proc)
    print(f"tried: killed the train node after step {len(rows(run_dir))} -> exit {proc.returncode}: "
          f"{[line for line in out.splitlines() if line.startswith('error')]}")
    assert proc.returncode == 1 and f"the same command resumes from {ckpt}" in out, out[-4000:]
    assert "generator-0 died; starting a replacement" in out and "reward-fn-0 died" in out, out[-4000:]
    replaced = [r for r in placement(run_dir) if r["event"] == "replaced"]
    assert {(r["role"], r["rank"]) for r in replaced} == {("generator", 0), ("generator", 1), ("reward_fn", 0)}
    assert {r["node_id"] for r in replaced} == {new}, replaced

    nodes.add("train")
    proc = start(nodes, run_dir, *args, faults=PAUSE)
    out = finish(proc)
    assert proc.returncode == 0 and "resuming after step 4" in out, out[-4000:]
    print(f"tried: a new train node, the same command -> exit 0, {len(rows(run_dir))} steps")
    # Nothing lost or sampled twice: the prompts of every step are the unbroken run's, each N_SAMPLES times.
    counts = prompts_per_step(run_dir)
    print("samples per step, distinct prompts:", [(sum(c.values()), len(c)) for c in counts])
    assert counts == prompts_per_step(straight)
    same = [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows(run_dir)]
    assert same == [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows(straight)]


def scale(run_dir: Path, *counts: str) -> None:
    proc = subprocess.run([EXE, "scale", str(run_dir), *counts], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_the_fleet_grows_onto_a_new_node_shrinks_and_resumes_onto_another_count(nodes, straight, tmp_path):
    """One generator (0.75 CPU: one per 1-CPU rollout node), one batch generated ahead, weights by broadcast (the
    group is formed again with each generator added or removed, every sync probed). After step 1 a second
    rollout node joins and `rlhf-ray scale` asks 3 generators: the second is placed on the new node, the third
    finds no room (no autoscaler here) and the run goes on with 2. SIGTERM then checkpoints with a batch in flight
    split over 2 generators, which resumes onto the 1 the config starts with; the run grows to 2 again, and
    `scale generator=1` drains the second's queued share before removing it."""
    run_dir = tmp_path / "run"
    args = ("rollout.max_staleness=1", "cluster.roles.generator.count=1", "cluster.roles.generator.cpus=0.75",
            "cluster.roles.reward_fn.pool=score", "cluster.scale_wait_s=8", "cluster.weight_sync=broadcast")
    proc = start(nodes, run_dir, *args, faults=PAUSE)
    wait_for(lambda: len(rows(run_dir)) >= 1, proc, "step 1")
    second = nodes.add("rollout")
    scale(run_dir, "generator=3")
    wait_for(lambda: any(r.get("fleet_size_generator") == 2 for r in rows(run_dir)), proc, "2 generators")
    proc.send_signal(subprocess.signal.SIGTERM)
    out = finish(proc)
    stopped_at = len(rows(run_dir))
    print(f"\ntried: scale generator=3 after step 1 -> {[r['fleet_size_generator'] for r in rows(run_dir)]} per "
          f"step; SIGTERM -> exit {proc.returncode} after step {stopped_at}")
    assert proc.returncode == 130 and "scale: generator 1 -> 3" in out, out[-4000:]
    assert "generator-2: no node with" in out and "generator stays at 2" in out, out[-4000:]
    added = [r for r in placement(run_dir) if r["event"] == "added"]
    assert [(r["role"], r["rank"], r["node_id"]) for r in added] == [("generator", 1, second)], added
    newest = max((run_dir / "checkpoints" / "ppo").glob("step_*/state.json"))  # step 2's is kept too
    state = json.loads(newest.read_text())
    assert state["buffer"] == 1 and state["shares"] == 2  # a batch in flight, split over 2 generators

    proc = start(nodes, run_dir, *args, faults=PAUSE)  # 1 generator, the checkpoint's batch split over 2
    wait_for(lambda: len(rows(run_dir)) > stopped_at and rows(run_dir)[-1]["fleet_size_generator"] == 2, proc,
             "2 generators again")
    control.ask(run_dir, {"generator": 1})  # as `rlhf-ray scale` does (tested above), without a process start
    out = finish(proc)
    sizes = [r["fleet_size_generator"] for r in rows(run_dir)]
    print(f"tried: resumed, grew to 2 again, scale generator=1 -> {sizes} per step")
    assert proc.returncode == 0 and f"resuming after step {stopped_at}" in out, out[-4000:]
    assert "scale: generator 2 -> 1" in out and sizes[-1] == 1 and 2 in sizes[stopped_at:], out[-4000:]
    assert any(r["event"] == "removed" and r["rank"] == 1 for r in placement(run_dir))
    # Nothing lost or sampled twice, whatever the fleet's size: each step's prompts are the unbroken run's.
    assert prompts_per_step(run_dir) == prompts_per_step(straight)
    assert all(r["staleness_max"] <= 1 and r["sync_probe_gap"] < 1e-3 for r in rows(run_dir))
