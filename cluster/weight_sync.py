"""Weight sync from learner rank 0 to every generator, in versioned, checksummed buckets.

A version's weights are cut into buckets of at most `bucket_bytes` (a tensor larger than that gets a bucket of
its own). Each bucket carries the version, its index, the count of buckets in the version, and a checksum of its
bytes, so a receiver can tell a missing, stale, duplicated or corrupted bucket from a good one and refuse it
loudly rather than load half a version.

Transport: Ray's object store (the learner `ray.put`s buckets, generators fetch them; works everywhere). This is
the one PPO and the benchmark use, on CPU and GPU alike (Learner.export_buckets -> Generator.update_weights).

A second transport, a torch.distributed broadcast group between learner rank 0 and the generators (NCCL on GPU,
gloo on CPU; `BroadcastGroup` below), is written and tested but NOT YET USED BY PPO: no config turns it on; the
scale-path issue wires it in. Until then it is kept working by tests/cpu/test_learner_sync.py and
tests/cpu/test_actors.py (gloo) and tests/gpu/check_gpu.py (NCCL). Every wait has a timeout.
"""

from __future__ import annotations

import hashlib
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterable, Iterator, Optional

import torch


class WeightSyncError(RuntimeError):
    """A bucket that is missing, out of order, of another version, or whose bytes do not match its checksum."""


def tensor_checksum(tensors: list[torch.Tensor]) -> str:
    """blake2b over the raw bytes of the tensors, in order (dtype and shape included)."""
    h = hashlib.blake2b(digest_size=16)
    for t in tensors:
        t = t.detach().contiguous().cpu()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class Bucket:
    """Part of one weights version."""

    version: int  # policy version these weights are
    index: int  # 0 .. total-1
    total: int  # buckets in this version
    names: list[str]  # parameter names, HF naming
    tensors: list[torch.Tensor]  # CPU tensors, same order as names
    checksum: str  # tensor_checksum(tensors)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)


def make_buckets(named_tensors: Iterable[tuple[str, torch.Tensor]], version: int, bucket_bytes: int) -> list[Bucket]:
    """Cut (name, tensor) pairs into buckets of at most `bucket_bytes` (one oversized tensor per bucket)."""
    groups: list[list[tuple[str, torch.Tensor]]] = [[]]
    size = 0
    for name, t in named_tensors:
        t = t.detach().cpu().contiguous()
        n = t.numel() * t.element_size()
        if groups[-1] and size + n > bucket_bytes:
            groups.append([])
            size = 0
        groups[-1].append((name, t))
        size += n
    groups = [g for g in groups if g]
    return [
        Bucket(version, i, len(groups), [n for n, _ in g], [t for _, t in g], tensor_checksum([t for _, t in g]))
        for i, g in enumerate(groups)
    ]


def verified(buckets: Iterable[Bucket], version: int) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of a complete, intact `version`, in order; WeightSyncError on any defect.

    Checks run bucket by bucket as they are consumed, and the count is checked at the end, so a caller that loads
    while iterating must treat an error as "this version did not load" (the generator keeps reporting its old
    version)."""
    expected = 0
    total = None
    for b in buckets:
        if b.version != version:
            raise WeightSyncError(f"bucket {b.index} is of version {b.version}, expected version {version}")
        if b.index != expected:
            raise WeightSyncError(f"version {version}: got bucket {b.index}, expected bucket {expected}")
        if total is not None and b.total != total:
            raise WeightSyncError(f"version {version}: bucket {b.index} says {b.total} buckets, earlier ones {total}")
        total = b.total
        if tensor_checksum(b.tensors) != b.checksum:
            raise WeightSyncError(f"version {version}: bucket {b.index} fails its checksum (corrupted in transit)")
        expected += 1
        yield from zip(b.names, b.tensors)
    if total is None or expected != total:
        raise WeightSyncError(f"version {version}: received {expected} of {total or '?'} buckets")


# ---------------------------------------------------------------- broadcast transport: not yet used by PPO
# Wired in by the scale-path issue; tested in tests/cpu/test_learner_sync.py, tests/cpu/test_actors.py (gloo) and
# tests/gpu/check_gpu.py (NCCL). Nothing in rlhf_ray/ calls it today.


@dataclass
class BucketMeta:
    """What a receiver needs to allocate a bucket before the tensors arrive (sent through the object store)."""

    version: int
    index: int
    total: int
    names: list[str]
    shapes: list[tuple[int, ...]]
    dtypes: list[torch.dtype]
    checksum: str


def meta_of(b: Bucket) -> BucketMeta:
    return BucketMeta(b.version, b.index, b.total, b.names, [tuple(t.shape) for t in b.tensors],
                      [t.dtype for t in b.tensors], b.checksum)


class BroadcastGroup:
    """A process group of its own between learner rank 0 (rank 0, the source) and the generators (ranks 1..G),
    apart from the learners' group: gloo on CPU, NCCL on GPU. Every collective waits at most `timeout_s`.
    Not yet used by PPO (see the section comment above)."""

    def __init__(self, host: str, port: int, rank: int, world_size: int, backend: str = "gloo",
                 timeout_s: float = 60.0, listen_sock: Optional[socket.socket] = None):
        from torch.distributed import TCPStore

        self.timeout = timedelta(seconds=timeout_s)
        self.rank, self.backend = rank, backend
        fd = {"master_listen_fd": listen_sock.detach()} if listen_sock is not None else {}  # the store owns it now
        store = TCPStore(host, port, world_size, rank == 0, self.timeout, wait_for_workers=False, **fd)
        self.pg = _process_group(backend, store, rank, world_size, self.timeout, host)
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")

    def _broadcast(self, t: torch.Tensor, what: str) -> None:
        work = self.pg.broadcast(t, 0)
        try:
            work.wait(self.timeout)
        except RuntimeError as e:  # gloo and NCCL both raise RuntimeError on a timed-out or broken collective
            raise WeightSyncError(f"rank {self.rank}: broadcast of {what} failed or timed out: {e}") from e

    def send(self, buckets: list[Bucket]) -> None:
        """Source side: broadcast every tensor of every bucket, in order."""
        for b in buckets:
            for name, t in zip(b.names, b.tensors):
                self._broadcast(t.to(self.device), f"v{b.version} {name}")

    def receive(self, metas: list[BucketMeta]) -> list[Bucket]:
        """Receiver side: buckets rebuilt from the metadata and the broadcast tensors (checksums not yet checked:
        `verified` does that)."""
        out = []
        for m in metas:
            tensors = []
            for name, shape, dtype in zip(m.names, m.shapes, m.dtypes):
                t = torch.empty(shape, dtype=dtype, device=self.device)
                self._broadcast(t, f"v{m.version} {name}")
                tensors.append(t.cpu())
            out.append(Bucket(m.version, m.index, m.total, m.names, tensors, m.checksum))
        return out


def _process_group(backend: str, store, rank: int, world_size: int, timeout: timedelta, host: str):
    from torch.distributed import ProcessGroupGloo

    if backend == "gloo":
        opts = ProcessGroupGloo._Options()
        opts._timeout = timeout
        # Gloo picks an interface by resolving the hostname unless told: use the one that reaches `host`.
        opts._devices = [ProcessGroupGloo.create_device(hostname=host)]
        return ProcessGroupGloo(store, rank, world_size, opts)
    if backend == "nccl":
        from torch.distributed import ProcessGroupNCCL

        opts = ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return ProcessGroupNCCL(store, rank, world_size, opts)
    raise ValueError(f"unknown weight-sync backend {backend!r}; choose gloo or nccl")
