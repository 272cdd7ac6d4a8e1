"""The weight transport of a PPO fleet (`cluster.weight_sync`): which one, the object store's size, and the
broadcast transport's sync (`fleet` below is a stages.fleet.Fleet, not imported: it imports this module).

Policy rank 0 and the generators form a process group of their own (gloo on CPU, NCCL on GPU) at start, and again
whenever a generator was replaced (a group cannot take in a new member). A sync streams the policy bucket by
bucket (`Learner.broadcast_weights`); each generator checks every bucket before it loads any. A generator that
dies during a sync is replaced (brought to the fleet's version through the object store), the group is formed
again and the sync is made again; every wait is bounded by `cluster.call_timeout_s`.
"""

from __future__ import annotations

import itertools
import os
import shutil

import ray

from cluster.actor_group import GroupError
from rlhf_ray import models
from rlhf_ray.config import ConfigError
from rlhf_ray.runtime import faults

MB = 1 << 20


def resolve(weight_sync: str, policy_gpus: float, generator_gpus: float) -> str:
    """`object_store` or `broadcast` for `cluster.weight_sync`. `auto`: broadcast when the policy and the
    generators are on GPUs (NCCL), else the object store (on CPU it syncs SmolLM2 faster than gloo: see
    docs/benchmarks.md)."""
    if weight_sync != "auto":
        return weight_sync
    return "broadcast" if policy_gpus > 0 and generator_gpus > 0 else "object_store"


def backend(policy_gpus: float) -> str:
    return "nccl" if policy_gpus > 0 else "gloo"


def form_group(fleet) -> None:
    """Policy rank 0 (rank 0) and every generator (ranks 1..G) join a new group; any earlier one is left."""
    host, port = fleet.policy.call(lambda a, r: a.open_weight_group.remote(), fleet.timeout_s, "sync: group")[0]
    world, t = len(fleet.generators) + 1, fleet.timeout_s
    refs = fleet.policy.map(lambda a, r: a.join_weight_group.remote(host, port, world, fleet.backend, t))
    joins = fleet.generators.map(lambda a, r: a.join_weight_group.remote(host, port, r + 1, world, fleet.backend, t))
    fleet.policy.get(refs, t, "sync: form the weight group")
    fleet.generators.get(joins, t, "sync: form the weight group")
    fleet.group_members = list(fleet.generators.actors)


def broadcast(fleet, version: int, bucket_bytes: int) -> list[dict]:
    """Weights `version` from the policy to every generator; each generator's load report."""
    phase = "sync: broadcast"
    for attempt in itertools.count():
        if fleet.group_members != list(fleet.generators.actors):
            form_group(fleet)
        if fleet.plan is None:
            fleet.plan = fleet.policy.call(lambda a, r: a.weight_plan.remote(bucket_bytes), fleet.timeout_s, phase)[0]
        received = fleet.generators.map(lambda a, r: a.receive_weights.remote(fleet.plan))
        sent = fleet.policy.map(lambda a, r: a.broadcast_weights.remote(version, bucket_bytes))
        if attempt == 0:
            faults.kill_actors("kill_in_sync", version)
        try:
            loaded = fleet.generators.get(received, fleet.timeout_s, phase)
            fleet.policy.get(sent, fleet.timeout_s, phase)
        except GroupError:
            dead = _dead(received, fleet.timeout_s)
            if not dead:
                raise
            ray.wait(sent, num_returns=len(sent), timeout=fleet.timeout_s)  # the policy's side fails too: let it
            for rank in dead:
                fleet.revive_generator(rank, phase)  # on the fleet's version: the sync is made again below
            continue
        fleet.version = version
        return loaded


def _dead(refs: list, timeout_s: float) -> list[int]:
    """Ranks whose call ended because the actor died (the others' calls fail too, within the group's timeout)."""
    ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    dead = []
    for rank, ref in enumerate(refs):
        try:
            ray.get(ref, timeout=0)
        except (ray.exceptions.ActorDiedError, ray.exceptions.ActorUnavailableError):
            dead.append(rank)
        except (ray.exceptions.RayTaskError, ray.exceptions.GetTimeoutError):
            pass
    return dead


def store_mb(cfg) -> int:
    """The embedded cluster's object store, MiB: `cluster.object_store_mb`, else room for two versions of the
    policy's weights (a sync's buckets and a replaced generator's copy) and the rollouts, at least 512. Refuses
    when this machine's shared memory cannot hold it (Ray would put the store on disk)."""
    if cfg.cluster.object_store_mb is not None:
        return cfg.cluster.object_store_mb
    if "ppo" not in cfg.stages:
        return 512
    version = models.weight_bytes(cfg.model.policy, cfg.model.dtype, cfg.model.trust_remote_code)
    need = max(512, -(-2 * version // MB) + 128)
    shm = shutil.disk_usage("/dev/shm").free // MB if os.path.isdir("/dev/shm") else None
    if shm is not None and need > shm:
        raise ConfigError([f"cluster.object_store_mb: two versions of the policy's weights ({version // MB} MiB "
                           f"each in {cfg.model.dtype}) need an object store of {need} MiB, and /dev/shm has "
                           f"{shm} MiB free: set cluster.weight_sync: broadcast, or cluster.object_store_mb to "
                           "what fits (syncs then spill to disk)"])
    return need


def check_store(cfg) -> None:
    """On a cluster started elsewhere (`--address`), refuse an object-store weight sync that cannot hold two
    versions of the policy: it would spill to disk every step."""
    if "ppo" not in cfg.stages or resolve(cfg.cluster.weight_sync, *gpus(cfg)) != "object_store":
        return
    version = models.weight_bytes(cfg.model.policy, cfg.model.dtype, cfg.model.trust_remote_code)
    have = ray.cluster_resources().get("object_store_memory", 0)
    if have < 2 * version:
        raise ConfigError([f"cluster.weight_sync: the cluster's object store ({int(have) // MB} MiB) cannot hold "
                           f"two versions of the policy's weights ({version // MB} MiB each): start Ray with a "
                           "larger --object-store-memory, or set cluster.weight_sync: broadcast"])


def gpus(cfg) -> tuple[float, float]:
    roles = cfg.cluster.roles
    return roles["policy"].gpus, roles["generator"].gpus
