"""Actor groups: N ranks of one role, placed on slots, wired into one torch.distributed group.

`ActorGroup(Learner, "policy-learner", args=(...), slots=slots)` starts actors named `policy-learner-0`, ...,
`policy-learner-{N-1}` (so the Ray dashboard reads well), then runs the rendezvous: rank 0 reports its node IP
and reserves a port there, and every rank calls `setup_distributed`. Calls are typed, no string dispatch:

    refs = group.map(lambda actor, rank: actor.train_step.remote(shards[rank], loss))
    metrics = group.get(refs, timeout_s=600, phase="train")   # GroupError naming role, ranks, phase

Rendezvous on loopback: given a host name, torch's TCPStore listens on *all* interfaces (seen with `ss -ltn`:
`*:PORT`). So rank 0 binds a socket to its node IP itself (127.0.0.1 on the embedded cluster), keeps it from
`reserve_port` until `setup_distributed`, and hands it to the store as `master_listen_fd`: the store then listens
on that address only, and nobody can take the port in between. Gloo is pinned to `lo` on loopback runs.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import time
from typing import Any, Callable, Iterator, Optional, Sequence

import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster import quiet
from cluster.local import listening_socket

DIED = "actor died"


class GroupError(RuntimeError):
    """A group call that timed out, whose actor died, or that raised; names the role, ranks and phase."""

    node_lost = False
    """True for a NodeLost: the run stops and resumes from its newest checkpoint (runtime/checkpoint.py)."""

    def __init__(self, role: str, ranks: list[int], phase: str, what: str):
        self.role, self.ranks, self.phase, self.died = role, ranks, phase, what == DIED
        names = ", ".join(f"{role}-{r}" for r in ranks)
        super().__init__(f"{phase}: {what} on {names}")


class NodeLost(GroupError):
    """An actor lost with its node, and no node with room came to take its place in time."""

    node_lost = True


class DistributedActor:
    """Base of actors that form a torch.distributed group: the rendezvous half that runs inside each actor."""

    _listen_sock: Optional[socket.socket] = None

    def get_node_ip(self) -> str:
        return ray.util.get_node_ip_address()

    def reserve_port(self, host: str) -> int:
        """Bind a listening socket to `host` on this node and keep it for the store; returns its port."""
        self._listen_sock = listening_socket(host)
        return self._listen_sock.getsockname()[1]

    def setup_distributed(self, master_addr: str, master_port: int, rank: int, world_size: int, local_rank: int,
                          backend: str = "gloo", timeout_s: float = 300.0) -> None:
        """Join the process group. Rank 0 serves the store on the socket from `reserve_port`."""
        import torch.distributed as dist

        loopback = ipaddress.ip_address(master_addr).is_loopback
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                          WORLD_SIZE=str(world_size), LOCAL_RANK=str(local_rank))
        for key in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
            if loopback:
                os.environ[key] = "lo"
            elif os.environ.get(key) == "lo":  # inherited from a local setup; cannot reach other nodes
                del os.environ[key]
        timeout = datetime.timedelta(seconds=timeout_s)
        if rank == 0:
            if self._listen_sock is None:
                raise RuntimeError("rank 0 must reserve_port before setup_distributed")
            fd = self._listen_sock.detach()  # the store owns the socket from here on
            self._listen_sock = None
            store = dist.TCPStore(master_addr, master_port, world_size, True, timeout=timeout, master_listen_fd=fd)
        else:
            store = dist.TCPStore(master_addr, master_port, world_size, False, timeout=timeout)
        if backend == "nccl":
            import torch

            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)


def shard(items: Any, n: int) -> list:
    """Split a list (or a dict of equal-length tensors/lists, e.g. a batch) into n equal contiguous parts."""
    if isinstance(items, dict):
        parts = {k: shard(v, n) for k, v in items.items()}
        return [{k: parts[k][i] for k in items} for i in range(n)]
    if len(items) % n:
        raise ValueError(f"{len(items)} items do not split evenly across {n} ranks")
    k = len(items) // n
    return [items[i * k : (i + 1) * k] for i in range(n)]


class ActorGroup:
    """N ranks of one role. `slots`: objects with pg, bundle_index, num_cpus, num_gpus (cluster.pools.Slot), one
    per rank; or None with `num_ranks` (and num_cpus/num_gpus per actor) to place without a placement group.

    distributed=True runs the rendezvous (the actor class must derive from DistributedActor); backend is nccl
    when the ranks have GPUs, else gloo. threads > 0 sets OMP_NUM_THREADS (torch's and vLLM's thread count) in
    the actors' processes; 0 keeps Ray's default (the actor's CPUs rounded down, at least 1)."""

    def __init__(self, actor_cls: type, role: str, args: Sequence = (), kwargs: Optional[dict] = None, *,
                 slots: Optional[Sequence[Any]] = None, num_ranks: Optional[int] = None, num_cpus: float = 1.0,
                 num_gpus: float = 0.0, namespace: Optional[str] = None, distributed: bool = True,
                 setup_timeout_s: float = 300.0, threads: int = 0):
        if (slots is None) == (num_ranks is None):
            raise ValueError("give either slots or num_ranks")
        self.role, self.namespace, self.threads = role, namespace, threads
        remote_cls = actor_cls if isinstance(actor_cls, ray.actor.ActorClass) else ray.remote(actor_cls)
        ranks = range(len(slots) if slots is not None else num_ranks)
        options = [self._options_of(rank, None if slots is None else slots[rank], num_cpus, num_gpus) for rank in ranks]
        self.gpus = any(o["num_gpus"] > 0 for o in options)
        self._make = lambda o: remote_cls.options(**o).remote(*args, **(kwargs or {}))
        self._options, self.distributed, self.restarts = options, distributed, 0
        self.actors = [self._make(o) for o in options]
        if distributed:
            try:
                self._rendezvous(setup_timeout_s)
            except BaseException:
                self.kill()
                raise

    def _options_of(self, rank: int, slot: Any = None, num_cpus: float = 1.0, num_gpus: float = 0.0) -> dict:
        """Ray options of rank `rank`: its name, and its slot's placement (or num_cpus / num_gpus without one)."""
        opts: dict = {"name": f"{self.role}-{rank}", "max_restarts": 0}
        if self.namespace is not None:
            opts["namespace"] = self.namespace
        # Merged with the job's env vars: library log levels (cluster/quiet.py) and, with threads, OMP_NUM_THREADS
        # (Ray only sets it when it is unset).
        env = quiet.actor_env() | ({"OMP_NUM_THREADS": str(self.threads)} if self.threads > 0 else {})
        opts["runtime_env"] = {"env_vars": env}
        if slot is None:
            return opts | {"num_cpus": num_cpus, "num_gpus": num_gpus}
        where = PlacementGroupSchedulingStrategy(slot.pg, placement_group_bundle_index=slot.bundle_index)
        return opts | {"num_cpus": slot.num_cpus, "num_gpus": slot.num_gpus, "scheduling_strategy": where}

    def add(self, slot: Any, timeout_s: float = 60.0) -> None:
        """One more rank, on `slot`, with the same arguments (a fleet that grows; not for distributed groups)."""
        if self.distributed:
            raise RuntimeError(f"{self.role}: a torch.distributed group cannot take in a new member")
        self._options.append(self._options_of(len(self.actors), slot))
        self.actors.append(None)
        self._start(len(self.actors) - 1, timeout_s)

    def remove(self) -> None:
        """Stop the last rank (a fleet that shrinks)."""
        ray.kill(self.actors.pop(), no_restart=True)
        self._options.pop()

    def __len__(self) -> int:
        return len(self.actors)

    def _rendezvous(self, timeout_s: float) -> None:
        ips = self.get(self.map(lambda a, r: a.get_node_ip.remote()), timeout_s, "rendezvous: node IPs")
        master_addr = ips[0]
        (port,) = self.get([self.actors[0].reserve_port.remote(master_addr)], timeout_s, "rendezvous: port")
        # Ray gives each GPU actor only its own device(s), so a GPU rank's device index is 0.
        local = [0 if self.gpus else ips[:r].count(ip) for r, ip in enumerate(ips)]
        backend = "nccl" if self.gpus else "gloo"
        self.get(self.map(lambda a, r: a.setup_distributed.remote(master_addr, port, r, len(self), local[r],
                                                                   backend, timeout_s)),
                 timeout_s, "rendezvous: setup_distributed")

    def map(self, fn: Callable[[Any, int], Any]) -> list:
        """fn(actor, rank) for every rank, in rank order (typically returning an ObjectRef)."""
        return [fn(actor, rank) for rank, actor in enumerate(self.actors)]

    def get(self, refs: list, timeout_s: float, phase: str, ranks: Optional[list[int]] = None) -> list:
        """Results of refs (refs[i] from rank ranks[i], by default rank i, as `map` returns them); GroupError on
        timeout, death or error."""
        ranks = list(range(len(refs))) if ranks is None else ranks
        _, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        if pending:
            pending = set(pending)
            waiting = [ranks[i] for i, ref in enumerate(refs) if ref in pending]
            raise GroupError(self.role, waiting, phase, f"no answer within {timeout_s:g} s")
        out, died, raised = [], [], []
        for i, ref in enumerate(refs):
            try:
                out.append(ray.get(ref))
            except ray.exceptions.RayActorError as e:
                died.append((ranks[i], e))
            except ray.exceptions.RayTaskError as e:
                raised.append((ranks[i], e))
        if died:
            raise GroupError(self.role, [r for r, _ in died], phase, DIED) from died[0][1]
        if raised:
            raise GroupError(self.role, [r for r, _ in raised], phase,
                             f"raised {type(raised[0][1].cause).__name__}: {raised[0][1].cause}") from raised[0][1]
        return out

    def call(self, fn: Callable[[Any, int], Any], timeout_s: float, phase: str) -> list:
        """`get(map(fn))`: run on every rank and wait for all."""
        return self.get(self.map(fn), timeout_s, phase)

    def shard(self, items: Any, n: Optional[int] = None) -> list:
        """Split items (a list, or a dict of equal-length tensors) into one equal part per rank (or n parts)."""
        return shard(items, len(self) if n is None else n)

    def restart(self, rank: int, timeout_s: float = 60.0, counted: bool = True) -> None:
        """A fresh actor for `rank` (dead, or killed here) on the same slot, with the same name and arguments;
        counted in `restarts` unless the one it replaces never ran. Not for distributed groups: a torch.distributed
        group cannot take in a new member."""
        if self.distributed:
            raise RuntimeError(f"{self.role}-{rank}: ranks of a distributed group cannot be restarted")
        ray.kill(self.actors[rank], no_restart=True)
        self._start(rank, timeout_s)
        self.restarts += counted

    def _start(self, rank: int, timeout_s: float) -> None:
        """Start rank `rank`'s actor, once its name is free (Ray frees a killed actor's name asynchronously)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.actors[rank] = self._make(self._options[rank])
                return
            except ValueError:
                if time.monotonic() > deadline:
                    raise GroupError(self.role, [rank], "restart", f"name still taken after {timeout_s:g} s")
                time.sleep(0.2)

    def kill(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []
