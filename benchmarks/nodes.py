"""Several nodes on one machine (cluster.local.LocalNodes: a head and worker nodes, each its own raylet and object
store), SmolLM2-135M PPO runs joining them with `rlhf-ray run --address`:

  sync        the weight sync's seconds per step with the generator on the learner's node and on another node,
              for each transport (the metrics rows' time_sync_s: push, load and probe)
  throughput  one run scaled 1 -> 2 -> 1 generators (`rlhf-ray scale` between steps; the second generator on a
              node of its own), generation tokens/s per step

    .venv/bin/python benchmarks/nodes.py sync throughput --out runs/bench-nodes

Prints one markdown table per part and writes nodes.json under --out (docs/benchmarks.md quotes them). On 2 cores
the nodes share the same cores: a second generator gains only the core the first leaves idle.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.local import LocalNodes  # noqa: E402 (the repository on the path first)
from rlhf_ray.runtime import control  # noqa: E402

EXE = str(Path(sys.executable).with_name("rlhf-ray"))
SMALL = ["configs/ppo_smollm2_cpu.yaml", "data.prompts.eval_fraction=0", "train.eval_every=0",
         "logging.plots_every_s=0"]


def pinned(pools: dict[str, str]) -> list[str]:
    """Overrides that pin each role to a pool (role -> pool), each pool to its nodes."""
    out = [f"cluster.roles.{role}.pool={pool}" for role, pool in pools.items()]
    for pool in set(pools.values()):
        out += [f"cluster.pools.{pool}.node_resource=rlhf_pool_{pool}", f"cluster.pools.{pool}.cpus_per_node=2"]
    return out


def run(nodes: LocalNodes, run_dir: Path, args: list[str], between=None) -> list[dict]:
    """`rlhf-ray run` joined to `nodes`; between(rows) is called while it runs, each time a row lands."""
    proc = subprocess.Popen([EXE, "run", *SMALL, *args, "--address", nodes.address, "--run-dir", str(run_dir)],
                            cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen, metrics = 0, run_dir / "metrics.jsonl"
    while proc.poll() is None:
        rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
        if between is not None and len(rows) > seen:
            seen = len(rows)
            between(rows)
        time.sleep(0.5)
    out = proc.stdout.read()
    if proc.returncode:
        raise SystemExit(f"run failed ({proc.returncode}):\n{out[-4000:]}")
    return [json.loads(line) for line in metrics.read_text().splitlines()]


def sync(out: Path) -> list[dict]:
    """Sync seconds per step, generator on the learner's node or on another, per transport; medians of steps 2+."""
    nodes = LocalNodes({"train": 2, "rollout": 2}, object_store_mb=1200)  # two SmolLM2 versions a node
    results = []
    try:
        for transport in ("object_store", "broadcast"):
            for where, gen_pool in (("same node", "train"), ("other node", "rollout")):
                roles = {"generator": gen_pool, "reference": "train", "policy": "train", "reward_fn": "train"}
                rows = run(nodes, out / f"sync-{transport}-{gen_pool}",
                           ["ppo.steps=6", "rollout.batch_size=4", "rollout.n_samples=2", "ppo.mini_batch_size=8",
                            "data.max_response_len=8", f"cluster.weight_sync={transport}", *pinned(roles)])
                times = [r["time_sync_s"] for r in rows if "time_sync_s" in r][1:]
                results.append({"transport": transport, "generator": where, "sync_s": statistics.median(times),
                                "min_s": min(times), "max_s": max(times), "bytes": rows[-1]["sync_bytes"]})
                print(results[-1], flush=True)
    finally:
        nodes.shutdown()
    return results


def throughput(out: Path) -> list[dict]:
    """One run, 9 steps: 1 generator, scaled to 2 (on a second rollout node) after step 3, back to 1 after 6."""
    nodes = LocalNodes({"train": 2, "rollout": 1}, object_store_mb=1200)
    run_dir = out / "throughput"
    asked: set[int] = set()

    def between(rows: list[dict]) -> None:
        n = len(rows)
        if n >= 3 and 3 not in asked:
            asked.add(3)
            nodes.add("rollout", 1)
            control.ask(run_dir, {"generator": 2})
        if n >= 6 and 6 not in asked:
            asked.add(6)
            control.ask(run_dir, {"generator": 1})

    try:
        roles = {"generator": "rollout", "reference": "train", "policy": "train", "reward_fn": "train"}
        # One generator per 1-CPU rollout node, one thread each: a second generator has a core of its own to use.
        rows = run(nodes, run_dir, ["ppo.steps=9", "rollout.batch_size=8", "cluster.roles.generator.cpus=0.75",
                                    "cluster.roles.generator.threads=1", *pinned(roles),
                                    "cluster.pools.rollout.cpus_per_node=1"], between)
    finally:
        nodes.shutdown()
    rows = [r for r in rows if "fleet_size_generator" in r]
    tokens = lambda r: r["response_length_mean"] * 8 * 4  # noqa: E731 (batch_size x n_samples responses)
    # A step's batch is queued at the end of the step before (max_staleness 0), by the fleet of then; at a step
    # where the fleet changed, it was sampled while the new generator started (time_scale_s), so no rate is given.
    return [{"step": r["step"] + 1, "generators": r["fleet_size_generator"], "sampled_by": before,
             "scale_s": r["time_scale_s"], "generate_s": r["time_generate_s"], "tokens": tokens(r),
             "generation_tokens_per_s": tokens(r) / r["time_generate_s"] if before == r["fleet_size_generator"]
             else None, "step_tokens_per_s": r["tokens_per_s"]}
            for r, before in zip(rows, [1] + [r["fleet_size_generator"] for r in rows])]


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else "-" if v is None else str(v)  # noqa: E731
    return "\n".join(["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
                     + ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("parts", nargs="+", choices=["sync", "throughput"])
    p.add_argument("--out", default="runs/bench-nodes")
    args = p.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(ROOT)
    results = {part: {"sync": sync, "throughput": throughput}[part](out) for part in args.parts}
    (out / "nodes.json").write_text(json.dumps(results, indent=1))
    for part, rows in results.items():
        print(f"\n{part}\n{table(rows)}")


if __name__ == "__main__":
    main()
