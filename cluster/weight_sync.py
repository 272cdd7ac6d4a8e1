"""Weight sync from learner rank 0 to every generator, in versioned, checksummed buckets.

A version's weights are cut into buckets of at most `bucket_bytes` (a tensor larger than that gets a bucket of
its own) by a `plan` made from names, shapes and dtypes alone, so every side knows the layout before any weight
moves and a learner under ZeRO-3 can gather, pack and send one bucket at a time. A bucket is one flat byte buffer
(each tensor at a 64-byte aligned offset) with its version, index, the count of buckets in the version and an
xxh3 checksum of its bytes (30 GB/s here, against 0.9 GB/s for blake2b), so a receiver can tell a missing, stale,
duplicated or corrupted bucket from a good one and refuse it loudly, before loading it.

Two transports (`cluster.weight_sync`):
- object store: the learner `ray.put`s each bucket as it is packed; a generator on the same node reads the flat
  buffer zero-copy out of shared memory (Ray hands numpy buffers over without unpickling a copy);
- broadcast: a torch.distributed group of its own between learner rank 0 and the generators (NCCL on GPU, gloo on
  CPU): each bucket's buffer and its small header (version, index, total, checksum), two buckets on the wire
  while the next is packed. Every wait has a timeout.
"""

from __future__ import annotations

import os
import socket
import sys
import warnings
from collections import deque
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
         scratch: Optional[list[np.ndarray]] = None) -> Iterator[Bucket]:
    """Buckets of `version`, one at a time: each tensor is copied once, straight into its bucket's buffer (from any
    device), as `named` yields it, so a caller that sends each bucket before taking the next never holds the whole
    model. `named` must follow the plan's order. Tensors that are None (ranks other than 0 under ZeRO-3, which take
    part in the gathers only) are skipped and nothing is yielded.

    scratch: a ring of buffers, each at least the largest bucket's size: bucket i is packed into scratch[i % len],
    so a sender may keep len - 1 buckets in flight while it takes the next (`ray.put` copies a bucket out at once:
    one buffer; the broadcast sends IN_FLIGHT). A fresh 64 MiB array per bucket is a fresh mapping whose pages
    fault in on every sync: SmolLM2's 538 MB packed in 1.3 s so, 0.08 s into a reused buffer (measured here)."""
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
                data = np.zeros(n, dtype=np.uint8) if not scratch else scratch[index % len(scratch)][:n]
                if scratch:
                    data.fill(0)
            views([e], data)[0].copy_(t.detach())
        if data is not None:
            yield Bucket(version, index, len(buckets), entries, data, checksum(data))


def intact(buckets: Iterable[Bucket], version: int) -> Iterator[Bucket]:
    """Each bucket of `version` as soon as it has passed its checks, in order, so a receiver can load it while the
    next arrive; WeightSyncError on the first defect (missing, out of order, of another version, or bytes that fail
    the checksum), or after the last when the version is incomplete."""
    seen, total = 0, None
    for b in buckets:
        if b.version != version:
            raise WeightSyncError(f"bucket {b.index} is of version {b.version}, expected version {version}")
        if b.index != seen:
            raise WeightSyncError(f"version {version}: got bucket {b.index}, expected bucket {seen}")
        if total is not None and b.total != total:
            raise WeightSyncError(f"version {version}: bucket {b.index} says {b.total} buckets, earlier ones {total}")
        if b.data.nbytes != plan_bytes(b.entries) or checksum(b.data) != b.checksum:
            raise WeightSyncError(f"version {version}: bucket {b.index} fails its checksum (corrupted in transit)")
        seen, total = seen + 1, b.total
        yield b
    if not seen or seen != total:
        raise WeightSyncError(f"version {version}: received {seen} of {total if seen else '?'} buckets")


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


IN_FLIGHT = 2
"""Buckets a broadcast has on the wire at once: the source packs the next while they go (its `pack` ring holds this
many buffers), a receiver has this many posted (on GPU, this many device buffers)."""
CONNECTIONS = 2
"""gloo: TCP connections between each pair of ranks. gloo gives each collective in turn to one connection, so two
buckets in flight travel side by side: 537 MB over loopback in 0.15-0.17 s against 0.23-0.29 s on one (measured
here, 2 cores)."""


class BroadcastGroup:
    """A process group of its own between learner rank 0 (rank 0, the source) and the generators (ranks 1..G),
    apart from the learners' group: gloo on CPU, NCCL on GPU. A bucket goes as one collective for its bytes, with
    its header (version, index, total, checksum) on a second group beside it, so that the bytes' collectives follow
    one another on the first group and take its connections in turn. Every collective waits at most `timeout_s`."""

    def __init__(self, host: str, port: int, rank: int, world_size: int, backend: str = "gloo",
                 timeout_s: float = 60.0, listen_sock: Optional[socket.socket] = None):
        from torch.distributed import PrefixStore, TCPStore

        self.timeout = timedelta(seconds=timeout_s)
        self.rank, self.backend = rank, backend
        fd = {"master_listen_fd": listen_sock.detach()} if listen_sock is not None else {}  # the store owns it now
        store = TCPStore(host, port, world_size, rank == 0, self.timeout, wait_for_workers=False, **fd)
        self.pg = _process_group(backend, PrefixStore("bytes", store), rank, world_size, self.timeout, host)
        self.headers = _process_group(backend, PrefixStore("headers", store), rank, world_size, self.timeout, host, 1)
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")

    def _start(self, pg, t: torch.Tensor, what: str) -> tuple:
        return pg.broadcast(t, 0), t, what  # the tensor is kept until the collective is waited on

    def _wait(self, work, t: torch.Tensor, what: str) -> None:
        try:
            work.wait(self.timeout)
        except RuntimeError as e:  # gloo and NCCL both raise RuntimeError on a timed-out or broken collective
            raise WeightSyncError(f"rank {self.rank}: broadcast of {what} failed or timed out: {e}") from e

    def send(self, buckets: Iterable[Bucket]) -> int:
        """Source side: a version's buckets, each sent while the next is packed. `buckets` packs into a ring of
        IN_FLIGHT buffers (`pack`): before it takes the next, the send of the one whose buffer that reuses is
        awaited. Returns the bytes sent."""
        flight: deque = deque()
        sent, it = 0, iter(buckets)
        while True:
            while len(flight) >= IN_FLIGHT:
                for started in flight.popleft():
                    self._wait(*started)
            b = next(it, None)
            if b is None:
                break
            what = f"v{b.version} bucket {b.index}"
            flight.append([self._start(self.pg, torch.from_numpy(b.data).to(self.device), what)] if b.nbytes else [])
            flight[-1].append(self._start(self.headers, torch.tensor(_header(b), device=self.device), what + " header"))
            sent += b.nbytes
        for started in flight:
            for s in started:
                self._wait(*s)
        return sent

    def receive(self, buckets: Plan) -> Iterator[Bucket]:
        """Receiver side: the plan's buckets in order, each yielded as soon as it has landed while the next ones
        arrive (their checksums are not checked here: `intact`). On GPU IN_FLIGHT are posted at once (that many
        device buffers), on CPU all: they land in host memory either way."""
        flight: deque = deque()
        window = IN_FLIGHT if self.device.type != "cpu" else len(buckets)
        for i, entries in enumerate(buckets):
            data = np.empty(plan_bytes(entries), dtype=np.uint8)
            buf = (torch.from_numpy(data) if self.device.type == "cpu" or not data.nbytes
                   else torch.empty(data.nbytes, dtype=torch.uint8, device=self.device))
            header = torch.zeros(4, dtype=torch.int64, device=self.device)
            flight.append((entries, data, self._start(self.pg, buf, f"bucket {i}") if data.nbytes else None,
                           self._start(self.headers, header, f"bucket {i} header")))
            if len(flight) >= window:
                yield self._land(*flight.popleft())
        while flight:
            yield self._land(*flight.popleft())

    def _land(self, entries: list[Entry], data: np.ndarray, started: Optional[tuple], header: tuple) -> Bucket:
        if started is not None:
            self._wait(*started)
            if started[1].device.type != "cpu":
                torch.from_numpy(data).copy_(started[1])
        self._wait(*header)
        version, index, total, digest = header[1].tolist()
        return Bucket(version, index, total, entries, data, f"{digest & (2**64 - 1):016x}")


def _header(b: Bucket) -> list[int]:
    digest = int(b.checksum, 16)
    return [b.version, b.index, b.total, digest - (1 << 64) if digest >= 1 << 63 else digest]  # as a signed int64


def _process_group(backend: str, store, rank: int, world_size: int, timeout: timedelta, host: str,
                   connections: int = CONNECTIONS):
    from torch.distributed import ProcessGroupGloo

    if backend == "gloo":
        opts = ProcessGroupGloo._Options()
        opts._timeout = timeout
        # Gloo picks an interface by resolving the hostname unless told: use the one that reaches `host`.
        opts._devices = [ProcessGroupGloo.create_device(hostname=host) for _ in range(connections)]
        return ProcessGroupGloo(store, rank, world_size, opts)
    if backend == "nccl":
        from torch.distributed import ProcessGroupNCCL

        opts = ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return ProcessGroupNCCL(store, rank, world_size, opts)
    raise ValueError(f"unknown weight-sync backend {backend!r}; choose gloo or nccl")
