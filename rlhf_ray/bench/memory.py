"""Section 4: the learner-memory settings (gradient checkpointing, token-budget micro-batches, ZeRO-3 with
offload) and LoRA against full fine-tuning, each a learner actor on the same batch as section 2: tokens/s of its
train_step, its first loss beside the default learner's (the memory settings must not change it; LoRA's adapters
start as a no-op, so its first loss is the same too), the parameters it trains, the bytes one weight push sends
(merged weights, or LoRA's adapters alone with `sync: adapters`), and the learner process's peak memory (GPU: the most
allocated on the device; CPU: the process's peak resident size, model loading included, since the learner is new).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import statistics
import time
from typing import Callable

import ray
import torch

from actors.learner import Learner
from cluster.actor_group import ActorGroup
from rlhf_ray import models
from rlhf_ray.algos import forward
from rlhf_ray.bench.workload import Workload
from rlhf_ray.config import LoraConfig, TrainConfig

TIMEOUT_S = 1800.0


LORA = LoraConfig(rank=16, alpha=32)


def settings(w: Workload, seq_len: int) -> dict[str, dict]:
    """Each setting's TrainConfig fields (and `lora`). The token budget is half a micro-batch's padded tokens:
    twice the micro-batches of half the rows."""
    return {"default": {}, "gradient checkpointing": {"gradient_checkpointing": True},
            "token budget": {"micro_batch_tokens": w.micro_batch * seq_len // 2},
            "ZeRO-3": {"zero_stage": 3}, "ZeRO-3 + offload": {"zero_stage": 3, "offload_optimizer": True,
                                                             "offload_params": True},
            f"LoRA r={LORA.rank}, all linear": {"lora": LORA},
            f"LoRA r={LORA.rank}, adapters pushed": {"lora": dataclasses.replace(LORA, sync="adapters")}}


def learner_memory(w: Workload, batch: dict[str, torch.Tensor], at_once: bool = False,
                   part: Callable[[str, int, int], None] = lambda what, done, total: None) -> list[dict]:
    """One row per setting: tokens/s (median of w.repeats steps after a warm-up), loss of the first step, peak MB.
    Each setting's learner is a process of its own, measured alone; at_once (--quick, where starting the learners
    is most of the section) starts them all together first, not each after the one before. part(what, i, n): a
    progress line after each setting."""
    setups = list(settings(w, batch["input_ids"].shape[1]).items())
    if at_once:
        with concurrent.futures.ThreadPoolExecutor(len(setups)) as pool:
            started = list(pool.map(lambda i: _start(w, i, setups[i][1]), range(len(setups))))
    rows = []
    for i, (name, fields) in enumerate(setups):
        learner = started[i] if at_once else _start(w, i, fields)
        try:
            rows.append(_measure(w, name, fields, learner, batch))
        finally:
            learner.kill()
        part(f"{name}: {rows[-1]['tokens_per_s']:.0f} tokens/s, peak {rows[-1]['peak_mb']:.0f} MB", i + 1, len(setups))
    return rows


def _start(w: Workload, i: int, fields: dict) -> ActorGroup:
    """Setting i's learner. A quarter CPU each, so that Ray places all seven at once on 2 cores (the share only
    places them: `threads` sets their torch threads)."""
    fields = dict(fields)
    lora_cfg = fields.pop("lora", None)
    train = TrainConfig(lr=w.lr, batch_size=w.samples, micro_batch_size=w.micro_batch, **fields)
    return ActorGroup(Learner, f"memory-learner-{i}", (models.resolve_model(w.model), "policy", train, w.dtype,
                                                       w.seed, 1000, None, lora_cfg),
                      num_ranks=1, num_cpus=0.25, threads=w.threads)


def _measure(w: Workload, name: str, fields: dict, learner: ActorGroup, batch: dict[str, torch.Tensor]) -> dict:
    """Setting `name`'s row, from its own learner (new: no step taken yet)."""
    seconds, losses = [], []
    for _ in range(w.repeats + 1):  # the first is a warm-up; each step moves the weights, so loss 0 counts
        t0 = time.perf_counter()
        m = learner.call(lambda a, r: a.train_step.remote(batch, forward.SFT_LOSS), TIMEOUT_S, f"bench: {name}")
        seconds.append(time.perf_counter() - t0)
        losses.append(m[0]["loss"])
    peak = learner.call(lambda a, r: a.peak_memory_mb.remote(), TIMEOUT_S, "bench: memory")[0]
    trained, total = learner.call(lambda a, r: a.parameter_counts.remote(), TIMEOUT_S, "bench: params")[0]
    refs = learner.call(lambda a, r: a.export_buckets.remote(1, 64 << 20), TIMEOUT_S, "bench: push")[0]
    push = sum(b.nbytes for b in ray.get(refs))  # what one weight push of this learner sends
    return {"setting": name, "fields": {k: vars(v) if k == "lora" else v for k, v in fields.items()},
            "tokens_per_s": int(batch["loss_mask"].sum()) / statistics.median(seconds[1:]), "first_loss": losses[0],
            "peak_mb": peak, "trained_params": trained, "params": total, "push_bytes": push}
