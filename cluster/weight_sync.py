"""Weight sync from learner rank 0 to every generator, in versioned, checksummed buckets.

A version's weights are cut into buckets of at most `bucket_bytes` (a tensor larger than that gets a bucket of
its own) by a `plan` made from names, shapes and dtypes alone, so every side knows the layout before any weight
moves and a learner under ZeRO-3 can gather, pack and send one bucket at a time. A bucket is one flat byte buffer
(each tensor at a 64-byte aligned offset) with its version, index, the count of buckets in the version and an
xxh3 checksum of its bytes (30 GB/s here, against 0.9 GB/s for blake2b), so a receiver can tell a missing, stale,
duplicated or corrupted bucket from a good one and refuse it loudly rather than load half a version.

Two transports (`cluster.weight_sync`):
- object store: the learner `ray.put`s each bucket as it is packed; a generator on the same node reads the flat
  buffer zero-copy out of shared memory (Ray hands numpy buffers over without unpickling a copy);
- broadcast: a torch.distributed group of its own between learner rank 0 and the generators (NCCL on GPU, gloo on
  CPU), each bucket's buffer then a small header (version, index, total, checksum) per broadcast. Every wait has
  a timeout.
"""

from __future__ import annotations

import os
import socket
import sys
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterable, Iterator, Optional

import numpy as np
import torch
import xxhash

ALIGN = 64  # bytes: every tensor view of a flat buffer starts aligned for any dtype and for SIMD loads


class WeightSyncError(RuntimeError):
    """A bucket that is missing, out of order, of another version, or whose bytes do not match its checksum."""


@dataclass(frozen=True)
class Entry:
    """Where one tensor lives in its bucket's flat buffer."""

    name: str  # HF parameter name
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int  # bytes from the buffer's start

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


Plan = list[list[Entry]]
"""Buckets of one version, in order; every version of a model has the same plan."""


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def plan(specs: Iterable[tuple[str, tuple[int, ...], torch.dtype]], bucket_bytes: int) -> Plan:
    """Cut (name, shape, dtype) specs, in order, into buckets of at most `bucket_bytes` (one oversized tensor per
    bucket)."""
    buckets: Plan = [[]]
    size = 0
    for name, shape, dtype in specs:
        n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if buckets[-1] and size + n > bucket_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append(Entry(name, tuple(shape), dtype, size))
        size = _align(size + n)
    return [b for b in buckets if b]


def plan_bytes(entries: list[Entry]) -> int:
    return entries[-1].offset + entries[-1].nbytes if entries else 0


def checksum(data: np.ndarray) -> str:
    """xxh3-64 of the buffer's bytes (the layout is fixed by the plan, so bytes alone identify a bucket)."""
    return xxhash.xxh3_64_hexdigest(data)


def digest(tensors: Iterable[torch.Tensor]) -> str:
    """xxh3-64 over tensors' dtypes, shapes and bytes, in order: whether two ranks or runs hold the same weights."""
    h = xxhash.xxh3_64()
    for t in tensors:
        t = t.detach().contiguous().cpu()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.view(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def views(entries: list[Entry], data: np.ndarray) -> list[torch.Tensor]:
    """The tensors of a flat buffer, as views (no copy; read-only when the buffer came from the object store)."""
    with warnings.catch_warnings():  # a read-only buffer is fine: the engine copies out of it
        warnings.simplefilter("ignore", UserWarning)
        flat = torch.frombuffer(data, dtype=torch.uint8) if data.nbytes else torch.empty(0, dtype=torch.uint8)
    return [flat[e.offset:e.offset + e.nbytes].view(e.dtype).view(e.shape) for e in entries]


@dataclass
class Bucket:
    """Part of one weights version: its tensors packed in one flat buffer."""

    version: int  # policy version these weights are
    index: int  # 0 .. total-1
    total: int  # buckets in this version
    entries: list[Entry]
    data: np.ndarray  # uint8, plan_bytes(entries) long
    checksum: str  # checksum(data)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    def named(self) -> list[tuple[str, torch.Tensor]]:
        return list(zip(self.names, views(self.entries, self.data)))


def pack(named: Iterable[tuple[str, Optional[torch.Tensor]]], buckets: Plan, version: int,
         scratch: Optional[np.ndarray] = None) -> Iterator[Bucket]:
    """Buckets of `version`, one at a time: each tensor is copied once, straight into its bucket's buffer (from any
    device), as `named` yields it, so a caller that sends each bucket before taking the next never holds the whole
    model. `named` must follow the plan's order. Tensors that are None (ranks other than 0 under ZeRO-3, which take
    part in the gathers only) are skipped and nothing is yielded.

    scratch: one buffer of at least the largest bucket's size that every bucket is packed into in turn (a sender
    that has sent a bucket before it takes the next: `ray.put` and a broadcast copy it out). A fresh 64 MiB array
    per bucket is a fresh mapping whose pages fault in on every sync: SmolLM2's 538 MB packed in 1.3 s so, 0.08 s
    into a reused buffer (measured here)."""
    it = iter(named)
    for index, entries in enumerate(buckets):
        data = None
        for e in entries:
            name, t = next(it)
            if name != e.name:
                raise WeightSyncError(f"weights out of plan order: got {name}, expected {e.name}")
            if t is None:
                continue
            if data is None:  # padding included (zeros): same bytes, same checksum
                n = plan_bytes(entries)
                data = np.zeros(n, dtype=np.uint8) if scratch is None else scratch[:n]
                if scratch is not None:
                    data.fill(0)
            views([e], data)[0].copy_(t.detach())
        if data is not None:
            yield Bucket(version, index, len(buckets), entries, data, checksum(data))


def checked(buckets: Iterable[Bucket], version: int) -> list[Bucket]:
    """The buckets of a complete, intact `version`, in order; WeightSyncError on any defect (missing, out of order,
    of another version, or bytes that fail the checksum)."""
    out: list[Bucket] = []
    for b in buckets:
        if b.version != version:
            raise WeightSyncError(f"bucket {b.index} is of version {b.version}, expected version {version}")
        if b.index != len(out):
            raise WeightSyncError(f"version {version}: got bucket {b.index}, expected bucket {len(out)}")
        if out and b.total != out[0].total:
            raise WeightSyncError(f"version {version}: bucket {b.index} says {b.total} buckets, earlier ones "
                                  f"{out[0].total}")
        if b.data.nbytes != plan_bytes(b.entries) or checksum(b.data) != b.checksum:
            raise WeightSyncError(f"version {version}: bucket {b.index} fails its checksum (corrupted in transit)")
        out.append(b)
    if not out or len(out) != out[0].total:
        raise WeightSyncError(f"version {version}: received {len(out)} of {out[0].total if out else '?'} buckets")
    return out


def layout(buckets: Plan) -> list:
    """A plan as plain types (per bucket: [name, shape, dtype, offset] per tensor), for vLLM's workers: vLLM's
    msgpack sends plain types to worker processes, not tensors, dtypes or dataclasses."""
    return [[[e.name, list(e.shape), str(e.dtype).removeprefix("torch."), e.offset] for e in b] for b in buckets]


def from_layout(buckets: list) -> Plan:
    return [[Entry(name, tuple(shape), getattr(torch, dtype), offset) for name, shape, dtype, offset in b]
            for b in buckets]


def fault_armed(fault: str, version: int) -> bool:
    """Fault injection for the sync tests (`RLHF_RAY_FAULTS=wrong_bucket=N,swap_names=N,stale_head=N`; see
    rlhf_ray/runtime/faults.py), read where the fault happens: the learner that sends, the worker that loads.
    One environment lookup per sync when unarmed."""
    spec = os.environ.get("RLHF_RAY_FAULTS") or ""
    armed = f"{fault}={version}" in spec.split(",")
    if armed:
        print(f"fault injected: {fault}: weights version {version}", file=sys.stderr, flush=True)
    return armed


# ---------------------------------------------------------------- broadcast transport


class BroadcastGroup:
    """A process group of its own between learner rank 0 (rank 0, the source) and the generators (ranks 1..G),
    apart from the learners' group: gloo on CPU, NCCL on GPU. Every collective waits at most `timeout_s`."""

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

    def send(self, b: Bucket) -> None:
        """Source side: the bucket's buffer, then its header."""
        what = f"v{b.version} bucket {b.index}"
        if b.nbytes:
            self._broadcast(torch.from_numpy(b.data).to(self.device), what)
        self._broadcast(torch.tensor(_header(b), device=self.device), f"{what} header")

    def receive(self, entries: list[Entry], index: int) -> Bucket:
        """Receiver side: bucket `index` of the plan, rebuilt from the broadcast buffer and header (its checksum is
        not yet checked: `verified` does that)."""
        data = np.empty(plan_bytes(entries), dtype=np.uint8)
        if data.nbytes:
            if self.device.type == "cpu":
                self._broadcast(torch.from_numpy(data), f"bucket {index}")
            else:
                buf = torch.empty(data.nbytes, dtype=torch.uint8, device=self.device)
                self._broadcast(buf, f"bucket {index}")
                torch.from_numpy(data).copy_(buf)
        header = torch.zeros(4, dtype=torch.int64, device=self.device)
        self._broadcast(header, f"bucket {index} header")
        version, idx, total, digest = header.tolist()
        return Bucket(version, idx, total, entries, data, f"{digest & (2**64 - 1):016x}")


def _header(b: Bucket) -> list[int]:
    digest = int(b.checksum, 16)
    return [b.version, b.index, b.total, digest - (1 << 64) if digest >= 1 << 63 else digest]  # as a signed int64


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
