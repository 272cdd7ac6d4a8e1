"""Versioned, checksummed buckets: the plan, the flat buffers, and every defect a receiver must refuse."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from cluster.weight_sync import ALIGN, WeightSyncError, checked, digest, from_layout, layout, pack, plan
from tests.oracles import make_buckets, verified


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
