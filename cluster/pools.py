"""Resource pools: `cluster.pools` and `cluster.roles` become placement groups, once, before any actor starts.

`plan` (pure): a bundle holds one rank of a colocation group (a role and the roles `colocate_with` it) and asks
for the SUM of their per-actor resources, so colocated ranks share a GPU. Ranks with a fraction of a GPU go
`floor(1 / fraction)` to a bundle of at most one GPU, so two 0.5-GPU generators surely share one GPU (two 0.5
bundles could land on two GPUs and strand both halves). Bundles are packed onto the pool's `nodes x
gpus_per_node` by first-fit decreasing and numbered in node order. `check_resources` (pure) packs them again
onto the nodes Ray reports; `create` checks, then makes one group per pool and waits with a timeout.

Strategy: a one-node pool is STRICT_PACK (the pool *is* one node: NCCL and colocated weights stay on it); a
multi-node pool is PACK: Ray fills a node before opening the next, as the plan does, which keeps a learner's
neighbouring ranks together (SPREAD would scatter them; STRICT_SPREAD needs bundles <= nodes). A pool with a
`node_resource` is pinned to the nodes that advertise that custom resource (each bundle asks for PIN_UNITS of
it); other pools go wherever they fit, biggest pool first.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

EPS = 1e-6
PIN_UNITS = 0.001
"""Of a pool's `node_resource` per bundle: enough to pin, never the limit (nodes advertise e.g. 1000)."""


class PlacementError(RuntimeError):
    """The roles cannot be placed; the message says what was asked and what the pool or cluster has."""


@dataclass
class PoolLayout:
    """One pool's placement group, as planned."""

    strategy: str
    """STRICT_PACK for a one-node pool, PACK for more (see the module docstring)."""
    bundles: list[dict[str, float]] = field(default_factory=list)
    """Resources per bundle, e.g. {"CPU": 1.0, "GPU": 1.0}; zero entries left out (Ray rejects all-zero bundles)."""
    members: list[list[tuple[str, int]]] = field(default_factory=list)
    """The (role, rank) pairs in each bundle."""
    node_of_bundle: list[int] = field(default_factory=list)
    """Planned pool node (0..nodes-1) of each bundle; where Ray put it is in `Placement.nodes`."""
    node_resource: Optional[str] = None
    """The custom resource that pins this pool to its nodes (in every bundle), if any."""


@dataclass
class RolePlan:
    """Where one role's ranks go, and what each actor asks for inside its bundle."""

    pool: str
    bundles: list[int]
    """Bundle index in the pool's placement group, per rank."""
    num_cpus: float
    num_gpus: float


@dataclass
class PoolPlan:
    """Every pool's layout and every role's ranks: what `create` turns into placement groups."""

    pools: dict[str, PoolLayout]
    roles: dict[str, RolePlan]


@dataclass(frozen=True)
class Slot:
    """One actor's place: give `num_cpus`, `num_gpus` and `scheduling_strategy()` to `ActorClass.options`."""

    pg: Any
    bundle_index: int
    num_cpus: float
    num_gpus: float
    node_id: str
    node_ip: str

    def scheduling_strategy(self):
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return PlacementGroupSchedulingStrategy(placement_group=self.pg, placement_group_bundle_index=self.bundle_index)


@dataclass
class Placement:
    plan: PoolPlan
    groups: dict[str, Any]
    """Placement group per pool."""
    nodes: dict[str, list[tuple[str, str]]]
    """(node id, node IP) of each bundle, per pool, as Ray placed it."""
    grown: dict[str, list[Slot]] = field(default_factory=dict)
    """Slots of the ranks a fleet grew by beyond the planned count, per role (`grow`): a group of their own each."""

    def slots(self, role: str) -> list[Slot]:
        """One slot per rank of `role`: the planned ones, then those it grew by."""
        rp = self.plan.roles[role]
        planned = [Slot(self.groups[rp.pool], b, rp.num_cpus, rp.num_gpus, *self.nodes[rp.pool][b]) for b in rp.bundles]
        return planned + self.grown.get(role, [])


# ---------------------------------------------------------------- planning (no Ray)


def plan(cluster_cfg, roles: list[str] | None = None) -> PoolPlan:
    """Bundles per pool and (pool, bundle) per rank for `roles` (default: every configured role)."""
    cfgs, names = cluster_cfg.roles, list(cluster_cfg.roles) if roles is None else roles
    for r in names:
        if r not in cfgs or cfgs[r].pool not in cluster_cfg.pools:
            raise PlacementError(f"role {r!r} is not configured or its pool is unknown; roles: {', '.join(cfgs)}, "
                                 f"pools: {', '.join(cluster_cfg.pools)}")
    groups = _colocation_groups(cfgs, names)
    out = PoolPlan({}, {})
    for name, pool in cluster_cfg.pools.items():
        mine = [g for g in groups if cfgs[g[0]].pool == name]
        if not mine:
            continue  # no role of this run lives here: no placement group
        layout = PoolLayout("STRICT_PACK" if pool.nodes == 1 else "PACK")
        for g in mine:
            _add_group(layout, cfgs, g)
        _pack_pool(name, pool, layout, {r: (c.gpus, c.cpus) for r, c in cfgs.items()})
        if pool.node_resource:
            layout.node_resource = pool.node_resource
            layout.bundles = [{**b, pool.node_resource: PIN_UNITS} for b in layout.bundles]
        out.pools[name] = layout
    for r in names:  # in the order asked, so describe() lists roles as configured
        members = out.pools[cfgs[r].pool].members
        bundle_of = {i: b for b, ms in enumerate(members) for role, i in ms if role == r}
        out.roles[r] = RolePlan(cfgs[r].pool, [bundle_of[i] for i in range(cfgs[r].count)], cfgs[r].cpus, cfgs[r].gpus)
    return out


def _colocation_groups(cfgs: dict, names: list[str]) -> list[list[str]]:
    """Selected roles grouped by the root of their `colocate_with` chain (a left-out root still groups them)."""
    groups: dict[str, list[str]] = {}
    for r in names:
        chain = [r]
        while cfgs[chain[-1]].colocate_with is not None:
            chain.append(cfgs[chain[-1]].colocate_with)
            if chain[-1] not in cfgs or chain[-1] in chain[:-1]:
                raise PlacementError(f"role {r!r}: colocate_with chain {' -> '.join(chain)} is broken")
        groups.setdefault(chain[-1], []).append(r)
    for g in groups.values():
        if len({(cfgs[r].pool, cfgs[r].count) for r in g}) > 1:
            raise PlacementError("colocated roles need the same pool and count, got "
                                 + ", ".join(f"{r}: {cfgs[r].count} in {cfgs[r].pool!r}" for r in g))
    return list(groups.values())


def _add_group(layout: PoolLayout, cfgs: dict, group: list[str]) -> None:
    """Append one colocation group's bundles: each holds `per` ranks of every role in the group."""
    gpus, cpus = sum(cfgs[r].gpus for r in group), sum(cfgs[r].cpus for r in group)
    if gpus > 1 and abs(gpus - round(gpus)) > EPS:  # a fraction must fit inside one GPU
        raise PlacementError(" + ".join(f"{r} ({cfgs[r].gpus:g} GPU)" for r in group)
                             + f" share a bundle of {gpus:g} GPUs: above one GPU it must be a whole number")
    if gpus == 0 and cpus == 0:
        raise PlacementError(f"roles {', '.join(group)} ask for no CPU and no GPU; Ray needs a non-empty bundle")
    per = math.floor(1 / gpus + EPS) if 0 < gpus < 1 else 1
    count = cfgs[group[0]].count
    for start in range(0, count, per):
        ranks = range(start, min(start + per, count))
        # Ray counts in units of 1e-4: rounding keeps 3 x 0.1 from asking 0.30000000000000004 CPUs.
        amounts = {"CPU": round(len(ranks) * cpus, 4), "GPU": round(len(ranks) * gpus, 4)}
        layout.bundles.append({k: float(v) for k, v in amounts.items() if v > 0})
        layout.members.append([(r, i) for i in ranks for r in group])


def _pack_pool(name: str, pool, layout: PoolLayout, per_actor: dict[str, tuple[float, float]]) -> None:
    """First-fit decreasing onto the pool's nodes and renumber bundles in node order, or say why they don't fit."""
    where = _first_fit(layout.bundles, [_Node(pool.cpus_per_node, pool.gpus_per_node) for _ in range(pool.nodes)])
    if where is None:
        (gpus, cpus), n, g, c = _sum(layout.bundles).values(), pool.nodes, pool.gpus_per_node, pool.cpus_per_node
        msg = (f"pool {name!r} has {n} node{'s' * (n != 1)} x {g} GPUs, {c} CPUs but roles "
               f"{_roles_text(layout.members, per_actor)} need {gpus:g} GPUs, {cpus:g} CPUs")
        if gpus <= n * g + EPS and cpus <= n * c + EPS:
            msg += f" in bundles {layout.bundles} that do not pack onto its nodes ({layout.strategy})"
        raise PlacementError(msg)
    order = sorted(range(len(where)), key=lambda b: (where[b], b))
    layout.bundles = [layout.bundles[b] for b in order]
    layout.members = [layout.members[b] for b in order]
    layout.node_of_bundle = [where[b] for b in order]


def _roles_text(members: list[list[tuple[str, int]]], per_actor: dict[str, tuple[float, float]]) -> str:
    """'policy (4 x 1 GPU, 0.5 CPU) and critic (...)' from bundle members and per-actor (GPUs, CPUs)."""
    counts = Counter(r for ms in members for r, _ in ms)
    parts = [f"{r} ({n} x {per_actor[r][0]:g} GPU, {per_actor[r][1]:g} CPU)" for r, n in counts.items()]
    return " and ".join([", ".join(parts[:-1]), parts[-1]] if len(parts) > 1 else parts)


class _Node:
    """Free CPUs and the free share of each GPU: a fractional bundle must fit inside one GPU, as in Ray."""

    def __init__(self, cpus: float, gpus: float, resources: frozenset | set = frozenset()):
        self.cpus = cpus
        self.gpus = [1.0] * int(gpus + EPS)
        self.resources = resources

    def take(self, bundle: dict[str, float]) -> bool:
        """Reserve `bundle` here if it fits: whole GPUs need wholly free GPUs, a fraction needs one GPU's room."""
        cpu, gpu = bundle.get("CPU", 0.0), bundle.get("GPU", 0.0)
        need, share = (round(gpu), 1.0) if gpu >= 1 - EPS else (int(gpu > 0), gpu)
        picks = [i for i, free in enumerate(self.gpus) if free >= share - EPS][:need]
        if cpu > self.cpus + EPS or len(picks) < need:
            return False
        for i in picks:
            self.gpus[i] -= share
        self.cpus -= cpu
        return True


def _first_fit(bundles: list[dict[str, float]], nodes: list[_Node]) -> Optional[list[int]]:
    """Node index per bundle, biggest GPU then CPU demand placed first; None if one does not fit."""
    where = [-1] * len(bundles)
    for b in sorted(range(len(bundles)), key=lambda b: (-bundles[b].get("GPU", 0), -bundles[b].get("CPU", 0), b)):
        where[b] = next((i for i, node in enumerate(nodes) if node.take(bundles[b])), -1)
        if where[b] < 0:
            return None
    return where


def _sum(bundles: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(sum(b.get(k, 0.0) for b in bundles), 4) for k in ("GPU", "CPU")}


# ---------------------------------------------------------------- checking against the cluster (no Ray calls)


def creation_order(p: PoolPlan) -> list[str]:
    """Biggest pool first (GPUs, then CPUs), as first-fit decreasing would, so small pools don't fragment nodes."""
    return sorted(p.pools, key=lambda n: tuple(-v for v in _sum(p.pools[n].bundles).values()))


def check_resources(p: PoolPlan, available: dict, nodes: list[dict] | None = None) -> None:
    """Raise PlacementError unless the cluster's totals (`ray.cluster_resources()`-style) and, when given, its
    alive nodes (`ray.nodes()`-style: NodeID, NodeManagerAddress, Alive, Resources) can hold every bundle."""
    asked = _sum([b for layout in p.pools.values() for b in layout.bundles])
    short = [k for k in asked if asked[k] > available.get(k, 0.0) + EPS]
    if short:
        raise PlacementError(f"the run asks for {_fmt(asked)} but the cluster has {_fmt(available)} "
                             f"(short of {', '.join(short)}); asked:\n{_asked(p)}")
    alive = [n for n in nodes or [] if n.get("Alive", True)]
    for name, layout in p.pools.items():
        pin = layout.node_resource
        if pin and nodes is not None and not any(pin in n["Resources"] for n in alive):
            raise PlacementError(f"pool {name!r} is pinned to nodes with resource {pin!r} (cluster.pools.{name}."
                                 f"node_resource), but no node advertises it; start its nodes with "
                                 f"`ray start --resources '{{\"{pin}\": 1000}}'`")
    if nodes is None or _fits_nodes(p, [_Node(n["Resources"].get("CPU", 0), n["Resources"].get("GPU", 0),
                                              set(n["Resources"])) for n in alive]):
        return
    has = "; ".join(f"{n.get('NodeManagerAddress', '?')} ({n.get('NodeID', '?')[:8]}): {_fmt(n['Resources'])}"
                    for n in alive)
    raise PlacementError(f"the cluster has {_fmt(available)} in all, but its nodes cannot hold the bundles; "
                         f"nodes: {has}; asked:\n{_asked(p)}")


def _fits_nodes(p: PoolPlan, nodes: list[_Node]) -> bool:
    """Pools in creation order; a STRICT_PACK pool must fit whole on one node, others bundle by bundle (PACK)."""
    for name in creation_order(p):
        bundles, pin = p.pools[name].bundles, p.pools[name].node_resource
        mine = [node for node in nodes if not pin or pin in node.resources]  # a pinned pool: its own nodes only
        if p.pools[name].strategy == "STRICT_PACK":  # the whole pool on the first node that holds it
            trials = [copy.deepcopy(node) for node in mine]
            i = next((i for i, t in enumerate(trials) if _first_fit(bundles, [t]) is not None), None)
            if i is None:
                return False
            mine[i].__dict__.update(trials[i].__dict__)
        elif _first_fit(bundles, mine) is None:
            return False
    return True


def _asked(p: PoolPlan) -> str:
    """One line per pool: strategy, bundles, total and per-role resources."""
    per_actor = {r: (rp.num_gpus, rp.num_cpus) for r, rp in p.roles.items()}
    return "\n".join(f"  pool {n!r} ({p.pools[n].strategy}, {len(p.pools[n].bundles)} bundles): "
                     f"{_fmt(_sum(p.pools[n].bundles))} for {_roles_text(p.pools[n].members, per_actor)}"
                     for n in creation_order(p))


def _fmt(res: dict) -> str:
    return ", ".join(f"{res.get(k, 0):g} {k}" for k in ("GPU", "CPU"))


# ---------------------------------------------------------------- Ray


def create(p: PoolPlan, timeout_s: float = 60.0) -> Placement:
    """Check, then create one placement group per pool and wait for all (or remove them and raise)."""
    import ray
    from ray.util import placement_group, placement_group_table

    check_resources(p, ray.cluster_resources(), ray.nodes())
    groups = {n: placement_group(p.pools[n].bundles, strategy=p.pools[n].strategy, name=f"rlhf-ray-pool-{n}")
              for n in creation_order(p)}
    refs = {name: pg.ready() for name, pg in groups.items()}
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
    pending = [name for name, ref in refs.items() if ref not in ready]
    if pending:
        free = ray.available_resources()
        remove(Placement(p, groups, {}))
        raise PlacementError(f"placement groups not ready after {timeout_s:g} s for pools {', '.join(pending)}; "
                             f"the cluster has {_fmt(free)} free; asked:\n{_asked(p)}")
    return Placement(p, groups, {name: _nodes_now(pg) for name, pg in groups.items()})


def _nodes_now(pg) -> list[tuple[str, str]]:
    """(node id, node IP) of each bundle of `pg`, where Ray holds it now."""
    import ray
    from ray.util import placement_group_table

    ips = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
    where = placement_group_table(pg)["bundles_to_node_id"]
    return [(where[b], ips.get(where[b], "?")) for b in sorted(where)]


def refresh(placement: Placement, pool: str) -> None:
    """Note where `pool`'s bundles are now (Ray places a lost node's bundles again on a node that joins)."""
    placement.nodes[pool] = _nodes_now(placement.groups[pool])
    for role, slots in placement.grown.items():
        if placement.plan.roles[role].pool == pool:
            placement.grown[role] = [dataclasses.replace(s, node_id=where[0], node_ip=where[1])
                                     for s in slots for where in _nodes_now(s.pg)]


def remove(placement: Placement) -> None:
    """Free the placement groups (Ray kills actors still inside them)."""
    from ray.util import remove_placement_group

    for pg in [*placement.groups.values(), *(s.pg for slots in placement.grown.values() for s in slots)]:
        remove_placement_group(pg)
    placement.groups.clear()
    placement.grown.clear()


class NoCapacity(PlacementError):
    """A fleet could not grow: no node had room for one more rank within the wait."""


ASK_AFTER_S = 5.0
"""A rank that is not placed within this long is asked of Ray's autoscaler."""


def grow(placement: Placement, role: str, rank: int, timeout_s: float) -> Slot:
    """The slot of rank `rank` of `role`, one more than the fleet has: a planned one it shrank from, else a
    placement group of one bundle (the role's CPUs and GPUs, pinned to its pool's nodes by node_resource). Not placed within ASK_AFTER_S, the bundle is asked of Ray's autoscaler
    (`request_resources`, which adds nodes where one runs) and the wait goes on to `timeout_s`; then NoCapacity,
    with the group removed. Either way the request is withdrawn after the wait (a placed rank keeps its node)."""
    import ray
    from ray.autoscaler.sdk import request_resources
    from ray.util import placement_group, remove_placement_group

    slots = placement.slots(role)
    if rank < len(slots):
        return slots[rank]
    rp = placement.plan.roles[role]
    pin = placement.plan.pools[rp.pool].node_resource
    bundle = {k: v for k, v in {"CPU": rp.num_cpus, "GPU": rp.num_gpus, pin: PIN_UNITS}.items() if k and v > 0}
    pg = placement_group([bundle], strategy="STRICT_PACK", name=f"rlhf-ray-pool-{rp.pool}-{role}-{rank}")
    t0 = time.monotonic()
    placed = bool(ray.wait([pg.ready()], timeout=min(ASK_AFTER_S, timeout_s))[0])
    if not placed:
        print(f"scale: {role}-{rank} needs {_fmt(bundle)} in pool {rp.pool!r}, which no node has free: asked Ray's "
              f"autoscaler (request_resources), waiting up to {timeout_s:g} s", flush=True)
        request_resources(bundles=[bundle])
        placed = bool(ray.wait([pg.ready()], timeout=max(0.0, timeout_s - ASK_AFTER_S))[0])
        request_resources(bundles=[])
    if not placed:
        remove_placement_group(pg)
        raise NoCapacity(f"{role}-{rank}: no node with {_fmt(bundle)} free in pool {rp.pool!r}"
                         + (f" (nodes advertising {pin})" if pin else "") + f" within {timeout_s:g} s, Ray's "
                         f"autoscaler asked (on a cluster without one, nothing joins); {role} stays at {rank}")
    (node_id, ip), = _nodes_now(pg)
    slot = Slot(pg, 0, rp.num_cpus, rp.num_gpus, node_id, ip)
    placement.grown.setdefault(role, []).append(slot)
    print(f"scale: {role}-{rank} placed on node {node_id[:8]} after {time.monotonic() - t0:.1f} s", flush=True)
    return slot


def shrink(placement: Placement, role: str, rank: int) -> None:
    """Rank `rank`, the last of `role`, is gone: free its slot's group if the fleet grew it (a planned bundle
    stays, for the fleet to grow into again)."""
    from ray.util import remove_placement_group

    if rank >= len(placement.plan.roles[role].bundles):
        remove_placement_group(placement.grown[role].pop().pg)


def records(placement: Placement, roles: Optional[list[str]] = None) -> list[dict]:
    """Where each rank of `roles` (default: all) is: role, rank, pool, bundle, node id and IP (run_dir's
    placement.jsonl)."""
    return [{"role": role, "rank": rank, "pool": placement.plan.roles[role].pool, "bundle": s.bundle_index,
             "node_id": s.node_id, "node_ip": s.node_ip}
            for role in roles or placement.plan.roles for rank, s in enumerate(placement.slots(role))]


def describe(placement: Placement) -> str:
    """Which role/rank sits on which pool, bundle and node, with its GPU and CPU share: a table for the log."""
    rows = [("role", "rank", "pool", "bundle", "node", "GPU", "CPU")]
    for role, rp in placement.plan.roles.items():
        for rank, s in enumerate(placement.slots(role)):
            node = f"{s.node_ip} ({s.node_id[:8]})"
            rows.append((role, str(rank), rp.pool, str(s.bundle_index), node, f"{s.num_gpus:g}", f"{s.num_cpus:g}"))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)
