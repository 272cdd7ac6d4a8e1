"""Versioned, checksummed buckets: sizes, and every defect a receiver must refuse."""

import dataclasses

import pytest
import torch

from cluster.weight_sync import WeightSyncError, make_buckets, tensor_checksum, verified


def _weights():
    g = torch.Generator().manual_seed(0)
    return [(f"layer{i}.weight", torch.randn(16, 16, generator=g)) for i in range(6)] + [
        ("big.weight", torch.randn(64, 64, generator=g)), ("bias", torch.zeros(3, dtype=torch.bfloat16))]


def test_buckets_respect_the_size_and_keep_order():
    w = _weights()
    buckets = make_buckets(w, version=4, bucket_bytes=2 * 16 * 16 * 4)
    assert [b.index for b in buckets] == list(range(len(buckets))) and all(b.total == len(buckets) for b in buckets)
    assert all(b.version == 4 for b in buckets)
    for b in buckets:  # at most the limit, except a lone oversized tensor
        assert b.nbytes <= 2 * 16 * 16 * 4 or len(b.names) == 1
    assert [n for b in buckets for n in b.names] == [n for n, _ in w]
    out = list(verified(buckets, 4))
    assert all(n1 == n2 and torch.equal(t1, t2) for (n1, t1), (n2, t2) in zip(out, w))
    assert len(make_buckets(w, 4, bucket_bytes=1 << 30)) == 1


def test_checksum_sees_values_dtype_and_shape():
    t = torch.arange(6.0)
    assert tensor_checksum([t]) == tensor_checksum([t.clone()])
    assert tensor_checksum([t]) != tensor_checksum([t.view(2, 3)])
    assert tensor_checksum([t]) != tensor_checksum([t.double()])
    t2 = t.clone()
    t2[3] += 1e-6
    assert tensor_checksum([t]) != tensor_checksum([t2])


def test_defective_versions_are_refused():
    buckets = make_buckets(_weights(), version=2, bucket_bytes=4096)
    assert len(buckets) >= 3
    with pytest.raises(WeightSyncError, match="received 2 of 3|received .* of"):
        list(verified(buckets[:-1], 2))
    with pytest.raises(WeightSyncError, match="got bucket 2, expected bucket 1"):
        list(verified([buckets[0], buckets[2]], 2))
    with pytest.raises(WeightSyncError, match="of version 2, expected version 3"):
        list(verified(buckets, 3))
    corrupt = dataclasses.replace(buckets[1], tensors=[t.clone() for t in buckets[1].tensors])
    corrupt.tensors[0][0, 0] += 1.0
    with pytest.raises(WeightSyncError, match="bucket 1 fails its checksum"):
        list(verified([buckets[0], corrupt] + buckets[2:], 2))
    with pytest.raises(WeightSyncError, match="received 0"):
        list(verified([], 2))
