"""The `cluster` part of the config tree (`config.Config.cluster`): pools of nodes and the roles placed in them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal, Optional

from rlhf_ray.bounds import SIZE, Name, NonNegative, Port, Positive, Range, Size, Text  # noqa: F401 (annotations)


@dataclass
class PoolConfig:
    """A pool of identical nodes from which placement groups are cut."""

    nodes: Size = 1
    """Nodes in the pool."""
    gpus_per_node: Annotated[int, Range(0, 1024)] = 0
    """GPUs per node (0: a CPU pool)."""
    cpus_per_node: Size = 2
    """CPUs per node."""
    node_resource: Optional[Name] = None
    """A custom Ray resource only this pool's nodes advertise (`ray start --resources '{"rlhf_pool_rollout": 1000}'`,
    as deploy/kuberay's worker groups do): the pool's bundles ask for a sliver of it, so they land on those nodes.
    None: the pool goes wherever its GPUs and CPUs fit."""


@dataclass
class RoleConfig:
    """How many actors of one role run, where, and with what share of a device."""

    pool: Name = "default"
    """Pool (a key of `cluster.pools`) the role's actors are placed in."""
    count: Size = 1
    """Actors (ranks, for learners) of this role."""
    gpus: Annotated[float, Range(0, 1024)] = 0.0
    """GPUs per actor; a fraction lets roles share a GPU."""
    cpus: Annotated[float, Range(0, SIZE)] = 0.25
    """CPUs per actor (Ray's logical CPUs); fractions let all six roles share a 2-core machine."""
    colocate_with: Optional[Name] = None
    """Another role whose bundles this role shares (same count)."""
    threads: Annotated[int, Range(0, 1024)] = 0
    """Torch/OpenMP threads in each actor's process; 0 = Ray's default (the role's CPUs rounded down, at least 1).
    On a CPU box whose phases run one at a time, set it to the cores (more than the cores in use at once costs)."""


def _default_pools() -> dict[str, PoolConfig]:
    return {"default": PoolConfig()}


ROLES = ("generator", "reference", "reward", "reward_fn", "critic", "policy")


def _default_roles() -> dict[str, RoleConfig]:
    return {r: RoleConfig() for r in ROLES}


@dataclass
class ClusterConfig:
    """The Ray cluster: where to connect, the pools, and each role's placement."""

    address: Optional[Text] = None
    """Ray address (`auto`, `ray://host:10001`). None: `RAY_ADDRESS`, else an embedded local cluster."""
    pools: dict[Name, PoolConfig] = field(default_factory=_default_pools)
    """Named pools of nodes."""
    roles: dict[Name, RoleConfig] = field(default_factory=_default_roles)
    """Placement per role: generator, reference, reward (the reward model), reward_fn (the reward functions' actors,
    when `reward.functions` or `ppo.gold` name any), critic, policy."""
    weight_sync: Literal["auto", "object_store", "broadcast"] = "auto"
    """How new policy weights reach the generators' vLLM workers: `object_store` (policy rank 0 puts them in Ray's
    shared memory and each worker reads them; only a worker in the generator's own process can, so not with
    GPUs or tensor parallelism), `broadcast` (a process group of policy rank 0 and every generator worker: NCCL on
    GPU, gloo on CPU; the policy and the generators must both be on GPUs or both on CPUs) or `auto` (broadcast
    when the generators run worker processes of their own, else the object store: on CPU it is the faster,
    measured by `rlhf-ray bench`). Every sync is then checked by a probe (stages/push.py)."""
    object_store_mb: Optional[Annotated[int, Range(64, 2**24)]] = None
    """Object store of the embedded cluster, MiB. None: room for two versions of the policy's weights (the
    object-store weight sync then never spills to disk), at least 512."""
    call_timeout_s: Annotated[float, Range(0, 10**7, open_lo=True)] = 600.0
    """Longest wait for any remote call before it fails naming the actor and phase."""
    scale_wait_s: Annotated[float, Range(0, 10**7)] = 300.0
    """`rlhf-ray scale`: how long one more generator or scorer may wait for a node with room (Ray's autoscaler is
    asked after 5 s, where one runs); then the fleet stays at the size it reached, said in the log."""
    max_actor_restarts: NonNegative[int] = 3
    """A generator or scorer that dies is replaced on its slot; more than this many per role fail the run."""
    metrics_export_port: Optional[Port] = None
    """Prometheus port of the embedded cluster (None: a free one; printed at start)."""
