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
from typing import Callable, Optional

import ray
import torch

from actors.learner import Learner
from cluster.actor_group import ActorGroup
from rlhf_ray import models
from rlhf_ray.algos import forward
from rlhf_ray.bench import repeat
from rlhf_ray.bench.workload import Workload
from rlhf_ray.config import LoraConfig, TrainConfig

TIMEOUT_S = 1800.0


LORA = LoraConfig(rank=16, alpha=32)
BENCH_KEYS = ("lora", "untimed", "shares")
"""A setting's keys that are not TrainConfig fields. untimed: measured in the one step that shows its memory and
its first loss (ZeRO-3 + offload: its speed on CPU says nothing, as its "offload" copies host memory to host memory,
and its steps are the slowest). shares: trains exactly as the setting before it, so it asks that learner again."""


def settings(w: Workload, seq_len: int) -> dict[str, dict]:
    """Each setting's TrainConfig fields, and BENCH_KEYS. The token budget is half a micro-batch's padded tokens:
    twice the micro-batches of half the rows."""
    return {"default": {}, "gradient checkpointing": {"gradient_checkpointing": True},
            "token budget": {"micro_batch_tokens": w.micro_batch * seq_len // 2},
            "ZeRO-3": {"zero_stage": 3},
            "ZeRO-3 + offload": {"zero_stage": 3, "offload_optimizer": True, "offload_params": True, "untimed": True},
            f"LoRA r={LORA.rank}, all linear": {"lora": LORA},
            f"LoRA r={LORA.rank}, adapters pushed": {"lora": dataclasses.replace(LORA, sync="adapters"),
                                                     "shares": True}}


def default_row(learning: dict, learner: ActorGroup, batch: dict[str, torch.Tensor]) -> dict:
    """The default setting's row from the learning section, whose learner is the default learner on the same batch
    (`learning`: engines.learning's result; `learner`: measured now, after those steps and before any other call).
    Its tokens/s counts the response tokens, as every row here does (the learning section counts all tokens)."""
    return {"setting": "default", "fields": {}, "first_loss": learning["first_loss"], "measured_in": "learning",
            **_rate(batch, learning["actor_s"]), **_footprint(learner)}


def _rate(batch: dict[str, torch.Tensor], seconds: list[float]) -> dict:
    """Response tokens/s of the median step, and the steps' spread (none for an untimed setting)."""
    tokens = int(batch["loss_mask"].sum())
    if not seconds:
        return {"tokens_per_s": None, "tokens_per_s_spread": None}
    return {"tokens_per_s": tokens / statistics.median(seconds),
            "tokens_per_s_spread": repeat.spread([tokens / s for s in seconds])}


def learner_memory(w: Workload, batch: dict[str, torch.Tensor], at_once: bool = False,
                   part: Callable[[str, int, int], None] = lambda what, done, total: None,
                   default: Optional[dict] = None) -> list[dict]:
    """One row per setting: tokens/s (the median step of `w.until`'s rounds after a warm-up) with its spread, loss
    of the first step, peak MB. Each setting's learner is a process of its own, measured alone (but for one that
    shares the learner before it); at_once (--quick, where starting the learners is most of the section) starts
    them all together first, not each after the one before. `default`: the default row already measured
    (`default_row`); without it the default learner starts here too. part(what, i, n): a progress line after each
    setting."""
    setups = list(settings(w, batch["input_ids"].shape[1]).items())[1 if default else 0:]
    if at_once:
        with concurrent.futures.ThreadPoolExecutor(len(setups)) as pool:
            started = list(pool.map(lambda i: None if setups[i][1].get("shares") else _start(w, i, setups[i][1]),
                                    range(len(setups))))
    rows: list[dict] = [default] if default else []
    learner = None
    try:
        for i, (name, fields) in enumerate(setups):
            if fields.get("shares"):
                rows.append(_shared(name, fields, learner, rows[-1]))
            else:
                if learner is not None:
                    learner.kill()
                learner = started[i] if at_once else _start(w, i, fields)
                rows.append(_measure(w, name, fields, learner, batch))
            part(f"{name}: {_said(fields, rows[-1])}", i + 1, len(setups))
    finally:
        for other in [learner] + (started if at_once else []):
            if other is not None:
                other.kill()
    return rows


def _said(fields: dict, row: dict) -> str:
    """The progress line's account of a row."""
    if fields.get("shares"):
        return f"the learner above, asked again: a push sends {row['push_bytes'] / 1e6:.1f} MB"
    speed = "not timed" if row["tokens_per_s"] is None else f"{row['tokens_per_s']:.0f} tokens/s"
    return f"{speed}, peak {row['peak_mb']:.0f} MB"


def _start(w: Workload, i: int, fields: dict) -> ActorGroup:
    """Setting i's learner. A quarter CPU each, so that Ray places all seven at once on 2 cores (the share only
    places them: `threads` sets their torch threads)."""
    train = TrainConfig(lr=w.lr, batch_size=w.samples, micro_batch_size=w.micro_batch,
                        **{k: v for k, v in fields.items() if k not in BENCH_KEYS})
    return ActorGroup(Learner, f"memory-learner-{i}", (models.resolve_model(w.model), "policy", train, w.dtype,
                                                       w.seed, 1000, None, fields.get("lora")),
                      num_ranks=1, num_cpus=0.25, threads=w.threads)


def _measure(w: Workload, name: str, fields: dict, learner: ActorGroup, batch: dict[str, torch.Tensor]) -> dict:
    """Setting `name`'s row, from its own learner (new: no step taken yet): its first step's loss and, unless the
    setting is untimed, that step as the warm-up and then `w.until`'s rounds of one timed step."""
    losses = []

    def step(i: int) -> list[float]:
        t0 = time.perf_counter()
        m = learner.call(lambda a, r: a.train_step.remote(batch, forward.SFT_LOSS), TIMEOUT_S, f"bench: {name}")
        losses.append(m[0]["loss"])
        return [time.perf_counter() - t0]

    step(-1)  # the warm-up; each step moves the weights, so the first loss is the one compared
    seconds = [] if fields.get("untimed") else repeat.rounds(step, w.until)[0][0]
    return {"setting": name, "fields": _plain(fields), "first_loss": losses[0], **_rate(batch, seconds),
            **_footprint(learner)}


def _shared(name: str, fields: dict, learner: ActorGroup, before: dict) -> dict:
    """A setting that trains as the one before it and differs in its push (LoRA's `sync`): that learner, switched to
    this setting's LoRA config, measured again for what the setting changes."""
    lora_cfg = fields["lora"]
    learner.get([a.__ray_call__.remote(lambda actor: setattr(actor, "lora", lora_cfg)) for a in learner.actors],
                TIMEOUT_S, "bench: switch the push")
    return {**before, "setting": name, "fields": _plain(fields), **_footprint(learner)}


def _footprint(learner: ActorGroup) -> dict:
    """The learner's peak memory, the parameters it trains and holds, and the bytes one weight push sends (merged
    weights, or LoRA's adapters alone with `sync: adapters`)."""
    peak = learner.call(lambda a, r: a.peak_memory_mb.remote(), TIMEOUT_S, "bench: memory")[0]
    trained, total = learner.call(lambda a, r: a.parameter_counts.remote(), TIMEOUT_S, "bench: params")[0]
    refs = learner.call(lambda a, r: a.export_buckets.remote(1, 64 << 20), TIMEOUT_S, "bench: push")[0]
    return {"peak_mb": peak, "trained_params": trained, "params": total,
            "push_bytes": sum(b.nbytes for b in ray.get(refs))}


def _plain(fields: dict) -> dict:
    return {k: vars(v) if k == "lora" else v for k, v in fields.items()}
