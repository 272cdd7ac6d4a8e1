"""Versioned, checksummed buckets: the plan, the flat buffers, and every defect a receiver must refuse."""

import dataclasses
import json
import time
from typing import Optional

import numpy as np
import pytest
import torch

from cluster.weight_sync import ALIGN, WeightSyncError, digest, from_layout, layout, pack, plan
from tests.oracles import checked, make_buckets, verified


def _weights():
    g = torch.Generator().manual_seed(0)
    return [(f"layer{i}.weight", torch.randn(16, 16, generator=g)) for i in range(6)] + [
        ("big.weight", torch.randn(64, 64, generator=g)), ("bias", torch.randn(3, generator=g).bfloat16()),
        ("empty", torch.zeros(0, 4)), ("after.weight", torch.randn(5, 3, generator=g).double())]


def test_buckets_respect_the_size_and_keep_order():
    w = _weights()
    buckets = make_buckets(w, version=4, bucket_bytes=2 * 16 * 16 * 4)
    assert [b.index for b in buckets] == list(range(len(buckets))) and all(b.total == len(buckets) for b in buckets)
    assert all(b.version == 4 for b in buckets)
    for b in buckets:  # at most the limit, except a lone oversized tensor
        assert b.nbytes <= 2 * 16 * 16 * 4 or len(b.names) == 1
        assert all(e.offset % ALIGN == 0 for e in b.entries)
    assert [n for b in buckets for n in b.names] == [n for n, _ in w]
    out = verified(buckets, 4)
    assert all(n1 == n2 and t1.dtype == t2.dtype and torch.equal(t1, t2) for (n1, t1), (n2, t2) in zip(out, w))
    one = make_buckets(w, 4, bucket_bytes=1 << 30)
    assert len(one) == 1 and [n for n, _ in one[0].named()] == [n for n, _ in w]


def test_pack_streams_from_any_source_and_skips_ranks_without_tensors():
    w = _weights()
    p = plan(((n, tuple(t.shape), t.dtype) for n, t in w), 4096)
    streamed = list(pack(iter(w), p, version=1))
    assert [b.checksum for b in streamed] == [b.checksum for b in make_buckets(w, 1, 4096)]
    assert list(pack(((n, None) for n, _ in w), p, version=1)) == []  # a ZeRO-3 rank other than 0
    with pytest.raises(WeightSyncError, match="out of plan order: got layer1.weight, expected layer0.weight"):
        list(pack(iter(w[1:]), p, version=1))


def test_a_plan_travels_as_plain_types_and_comes_back_the_same():
    w = _weights()
    p = plan(((n, tuple(t.shape), t.dtype) for n, t in w), bucket_bytes=4096)
    plain = layout(p)
    assert json.loads(json.dumps(plain)) == plain  # msgpack-able: lists, strings and ints only
    assert from_layout(plain) == p


def test_digest_sees_values_dtype_and_shape():
    t = torch.arange(6.0)
    assert digest([t]) == digest([t.clone()])
    assert digest([t]) != digest([t.view(2, 3)])
    assert digest([t]) != digest([t.double()])
    t2 = t.clone()
    t2[3] += 1e-6
    assert digest([t]) != digest([t2])


def test_defective_versions_are_refused():
    buckets = make_buckets(_weights(), version=2, bucket_bytes=4096)
    assert len(buckets) >= 3
    with pytest.raises(WeightSyncError, match=f"received {len(buckets) - 1} of {len(buckets)}"):
        checked(buckets[:-1], 2)
    with pytest.raises(WeightSyncError, match="got bucket 2, expected bucket 1"):
        checked([buckets[0], buckets[2]], 2)
    with pytest.raises(WeightSyncError, match="of version 2, expected version 3"):
        checked(buckets, 3)
    corrupt = dataclasses.replace(buckets[1], data=buckets[1].data.copy())
    corrupt.data[17] ^= 4  # one bit
    with pytest.raises(WeightSyncError, match="bucket 1 fails its checksum"):
        checked([buckets[0], corrupt] + buckets[2:], 2)
    short = dataclasses.replace(buckets[1], data=np.ascontiguousarray(buckets[1].data[:-1]))
    with pytest.raises(WeightSyncError, match="bucket 1 fails its checksum"):
        checked([buckets[0], short] + buckets[2:], 2)
    with pytest.raises(WeightSyncError, match="received 0"):
        checked([], 2)


# ---------------------------------------------------------------- the broadcast, two ranks in two threads (gloo)


def _listen():
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


def _broadcast(send, timeout_s: float = 30.0, waited: Optional[list] = None):
    """Rank 0 runs `send(group)` in a thread while rank 1 receives the plan of `_weights()` (64-byte buckets: one
    tensor each); returns what rank 1 received, or raises what it raised (`waited` gets its seconds)."""
    import threading

    from cluster.weight_sync import BroadcastGroup

    sock = _listen()
    port = sock.getsockname()[1]
    the_plan = plan(((n, tuple(t.shape), t.dtype) for n, t in _weights()), 64)
    errors = []

    def source():
        group = BroadcastGroup("127.0.0.1", port, 0, 2, "gloo", timeout_s, sock)
        try:
            send(group, the_plan)
        except Exception as e:  # noqa: BLE001 (the receiver's error is the one asserted)
            errors.append(e)

    thread = threading.Thread(target=source, daemon=True)
    thread.start()
    group = BroadcastGroup("127.0.0.1", port, 1, 2, "gloo", timeout_s)
    t0 = time.monotonic()
    try:
        return list(group.receive(the_plan))
    finally:
        (waited if waited is not None else []).append(time.monotonic() - t0)
        thread.join(timeout_s + 5)


def test_broadcast_carries_every_bucket_through_the_packing_ring():
    """The source packs into two buffers and keeps a bucket on the wire while it packs the next: a buffer reused
    before its bucket left would reach the receiver with the next bucket's bytes and fail its checksum."""
    w = _weights()
    ring = [np.zeros(64 * 64 * 8, dtype=np.uint8) for _ in range(2)]
    received = _broadcast(lambda group, p: group.send(pack(iter(w), p, 3, ring)))
    assert len(received) == len(plan(((n, tuple(t.shape), t.dtype) for n, t in w), 64)) > 6
    got = dict(pair for b in checked(received, 3) for pair in b.named())
    for name, t in w:
        assert torch.equal(got[name], t), name


def test_broadcast_refuses_flipped_bytes_and_times_out_on_a_silent_source():
    def flipped(group, p):
        buckets = make_buckets(_weights(), 3, 64)
        buckets[2].data[1] ^= 8  # after its checksum was taken: corrupted in transit
        group.send(buckets)

    with pytest.raises(WeightSyncError, match="version 3: bucket 2 fails its checksum"):
        checked(_broadcast(flipped), 3)
    waited = []
    with pytest.raises(WeightSyncError, match="rank 1: broadcast of bucket 0 failed or timed out"):
        _broadcast(lambda group, p: time.sleep(2.5), timeout_s=1.0, waited=waited)  # joins the group, sends nothing
    assert 1.0 <= waited[0] < 2.5
