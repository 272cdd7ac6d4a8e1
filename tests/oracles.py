"""Test oracles: whole-model shortcuts the product never needs (it streams weights bucket by bucket)."""

from typing import Iterable, Iterator

import torch

from cluster.weight_sync import Bucket, intact, pack, plan
from rlhf_ray import lora


def make_buckets(named: Iterable[tuple[str, torch.Tensor]], version: int, bucket_bytes: int) -> list[Bucket]:
    """Every bucket of (name, tensor) pairs at once."""
    named = [(n, t.detach()) for n, t in named]
    return list(pack(named, plan(((n, tuple(t.shape), t.dtype) for n, t in named), bucket_bytes), version))


def checked(buckets: Iterable[Bucket], version: int) -> list[Bucket]:
    """The buckets of a complete, intact `version`, in order (`intact`, all at once)."""
    return list(intact(buckets, version))


def verified(buckets: Iterable[Bucket], version: int) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of a complete, intact `version`, in order (see `checked`)."""
    return [pair for b in checked(buckets, version) for pair in b.named()]


def merged_weights(module: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, merged tensor) of a whole, unpartitioned LoRA model."""
    with torch.no_grad():
        for name, p, _, layer in lora.export_plan(module):
            yield name, lora.merged(p.detach(), layer)
