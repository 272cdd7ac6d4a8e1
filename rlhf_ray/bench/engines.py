"""Sections 1-3: rlhf-ray's actors against the raw engines they wrap, on the same work.

Each actor call is timed from the driver, as a PPO step sees it: the remote call, the engine, and moving the
inputs and results through Ray's object store. The raw engines run first, in a process of their own
(`rlhf_ray.bench.raw`), with the same thread count.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from actors.generator import Generator
from actors.learner import Learner
from cluster.actor_group import ActorGroup
from rlhf_ray import ds_engine, models, rollout, vllm_engine
from rlhf_ray.bench import raw
from rlhf_ray.bench.workload import Workload
from rlhf_ray.config import TrainConfig

TIMEOUT_S = 1800.0
KV_CACHE_MB = 256


def run_raw(spec: dict, threads: int) -> dict:
    """`python -m rlhf_ray.bench.raw` on `spec` in a fresh process with `threads` OMP threads."""
    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "spec.json"), os.path.join(tmp, "out.json")
        with open(src, "w") as f:
            json.dump({**spec, "threads": threads}, f)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        proc = subprocess.run([sys.executable, "-m", "rlhf_ray.bench.raw", src, out], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=TIMEOUT_S)
        if proc.returncode:
            raise RuntimeError(f"raw {spec['what']} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}")
        with open(out) as f:
            return json.load(f)


def raw_generate(w: Workload, prompt_ids: list[list[int]]) -> dict:
    return run_raw({"what": "generate", "model": models.resolve_model(w.model), "dtype": w.dtype, "seed": w.seed,
                    "max_model_len": w.max_seq_len, "kv_cache_mb": KV_CACHE_MB, "group": w.group,
                    "response_len": w.response_len, "prompt_ids": prompt_ids, "repeats": w.repeats}, w.threads)


def raw_train(w: Workload, batch: dict) -> dict:
    return run_raw({"what": "train", "model": models.resolve_model(w.model), "dtype": w.dtype, "lr": w.lr,
                    "grad_clip": TrainConfig().grad_clip, "micro_batch": w.micro_batch, "repeats": w.repeats,
                    "batch": {k: v.tolist() for k, v in batch.items()}}, w.threads)


def start_actors(w: Workload, batch_size: int) -> tuple[ActorGroup, ActorGroup]:
    """One generator and one policy learner (world size 1), each with every core's worth of threads; they take
    turns, never running at once."""
    path = models.resolve_model(w.model)
    gen = ActorGroup(Generator, "generator", (path, w.dtype, KV_CACHE_MB, w.seed, w.max_seq_len), num_ranks=1,
                     num_cpus=0.5, distributed=False, threads=w.threads)
    train = TrainConfig(lr=w.lr, batch_size=batch_size, micro_batch_size=w.micro_batch)
    learner = ActorGroup(Learner, "policy-learner", (path, "policy", train, w.dtype, w.seed, 1000), num_ranks=1,
                         num_cpus=0.5, threads=w.threads)
    return gen, learner


def generation(w: Workload, gen: ActorGroup, prompt_ids: list[list[int]], raw_out: dict) -> dict:
    """Section 1: generated tokens/s of the generator actor vs vLLM called directly."""
    sampling = vllm_engine.Sampling(max_tokens=w.response_len, temperature=1.0, n=w.group, ignore_eos=True)
    actor, engine_s = gen.actors[0], []

    def call():
        table = gen.get([actor.generate.remote(prompt_ids, sampling)], TIMEOUT_S, "bench: generate")[0]
        engine_s.append(rollout.seconds(table))  # the engine's own seconds inside the actor
        return table

    seconds, table = raw.timed(call, w.repeats)
    tokens = sum(len(r) for r in table.column("response_ids").to_pylist())
    if tokens != raw_out["tokens"]:
        raise RuntimeError(f"actor generated {tokens} tokens, raw vLLM {raw_out['tokens']}: not the same work")
    actor_tps, raw_tps = tokens / statistics.median(seconds), tokens / raw_out["median_s"]
    # Where a gap comes from: the engine in the actor vs raw (the process, Ray's daemons on the same cores), and
    # the call around it (Ray's call, the rollout table, the object store).
    return {"tokens": tokens, "raw_s": raw_out["seconds"], "actor_s": seconds, "raw_tokens_per_s": raw_tps,
            "actor_tokens_per_s": actor_tps, "ratio": actor_tps / raw_tps, "actor_engine_s": engine_s[1:],
            "call_overhead_s": statistics.median(seconds) - statistics.median(engine_s[1:])}


def learning(w: Workload, learner: ActorGroup, batch: dict, raw_out: dict) -> dict:
    """Section 2: tokens/s of the learner actor's train_step (DeepSpeed) vs a plain torch loop, same batch."""
    seconds, _ = raw.timed(lambda: learner.call(lambda a, r: a.train_step.remote(batch, ds_engine.SFT_LOSS),
                                             TIMEOUT_S, "bench: train_step"), w.repeats)
    tokens = raw_out["tokens"]
    actor_tps, raw_tps = tokens / statistics.median(seconds), tokens / raw_out["median_s"]
    return {"tokens": tokens, "sequences": w.samples, "raw_s": raw_out["seconds"], "actor_s": seconds,
            "raw_tokens_per_s": raw_tps, "actor_tokens_per_s": actor_tps, "ratio": actor_tps / raw_tps}


def weight_sync(w: Workload, gen: ActorGroup, learner: ActorGroup) -> list[dict]:
    """Section 3: seconds from "the learner has new weights" to "the generator samples with them", per bucket
    size: export (gather + checksum + put into the object store) then fetch, verify and load into vLLM; beside
    a plain memcpy of the same bytes."""
    rows, version = [], 0
    for bucket in w.bucket_bytes:
        parts = []
        for _ in range(w.repeats + 1):  # the first is a warm-up
            version += 1
            t0 = time.perf_counter()
            refs = learner.call(lambda a, r: a.export_buckets.remote(version, bucket), TIMEOUT_S, "bench: export")[0]
            t1 = time.perf_counter()
            report = gen.get([gen.actors[0].update_weights.remote(version, refs, TIMEOUT_S)], TIMEOUT_S,
                             "bench: load")[0]
            parts.append({"total_s": time.perf_counter() - t0, "export_s": t1 - t0, "fetch_s": report["fetch_s"],
                          "load_s": report["load_s"], "bytes": report["bytes"], "buckets": len(refs)})
        timed = parts[1:]
        rows.append({"bucket_bytes": bucket, "bytes": timed[0]["bytes"], "buckets": timed[0]["buckets"],
                     **{k: statistics.median(p[k] for p in timed) for k in ("total_s", "export_s", "fetch_s", "load_s")}})
    copy = raw.copy({"bytes": rows[0]["bytes"], "repeats": w.repeats})
    for r in rows:
        r["memcpy_s"] = statistics.median(copy["seconds"])
    return rows
