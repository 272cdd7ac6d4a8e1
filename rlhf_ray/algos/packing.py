"""Padding-free forwards (sequence packing: TRL's `padding_free`, veRL's `use_remove_padding`, OpenRLHF's
`--packing_samples`; `train.packing` here). A micro-batch's rows, padded to (B, L), run as one row of their N real
tokens: the layers spend nothing on padding, and each row still attends to itself only.

How the attention stays per row: the position ids restart at 0 with each row and no attention mask is passed, so
transformers reads the packed layout from the position ids (`masking_utils.find_packed_sequence_indices`): a
block-diagonal causal mask on CPU (sdpa, eager), flash-attention's varlen kernel on GPU. The same numbers as the
padded forward, whose positions count real tokens only (`forward._position_ids`), up to float rounding.

`Packed` wraps a model so that callers keep the padded (B, L) layout: the forward helpers in `forward.py` run
unchanged on it, and what they read comes back in that layout (at a padding position zeros, or some real token's
logits: every caller masks padding).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

Tensor = torch.Tensor


@dataclass
class Pack:
    """B padded rows as one packed row."""

    input_ids: Tensor
    """(1, N) the real tokens, row after row."""
    position_ids: Tensor
    """(1, N) each token's position within its own row."""
    index: Tensor
    """(B, L) the packed position of each real token; padding points at 0 (a real token's, masked by callers)."""
    real: Tensor
    """(B, L) bool: the real tokens."""


def pack(input_ids: Tensor, attention_mask: Tensor) -> Pack:
    real = attention_mask.bool()
    if not real.any():
        raise ValueError("a packed forward needs at least one real token")
    index = (real.flatten().long().cumsum(0) - 1).view_as(real).clamp(min=0) * real
    positions = real.long().cumsum(1) - 1  # real tokens before this one in its row, as forward._position_ids
    return Pack(input_ids[real][None], positions[real][None], index, real)


class Packed:
    """A causal LM, value model or DeepSpeed engine, called like the model with padded rows, run packed. Takes the
    keywords forward.py passes (input_ids, attention_mask, position_ids: recomputed here, logits_to_keep: an int,
    output_hidden_states) and returns `.logits` (B, kept, V) and, when asked, `.hidden_states`: the last layer's
    only, (B, L, H), as a one-element tuple (token_values reads [-1]). Anything else is the model's (`score`,
    `module`, `disable_adapter`, ...)."""

    def __init__(self, model: Any):
        self.model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def __call__(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Any = None, logits_to_keep: int = 0,
                 output_hidden_states: bool = False) -> SimpleNamespace:
        p = pack(input_ids, attention_mask)
        kw: dict[str, Any] = dict(input_ids=p.input_ids, position_ids=p.position_ids, attention_mask=None,
                                  use_cache=False)  # a cache would hide the packing from transformers' mask
        if output_hidden_states:
            kw["output_hidden_states"] = True
        keep = p.index[:, input_ids.shape[1] - logits_to_keep:] if logits_to_keep else None
        if keep is not None:  # the lm_head only where logits are read: B x logits_to_keep positions
            kw["logits_to_keep"] = keep.flatten()
        out = self.model(**kw)
        if keep is not None:
            logits = out.logits[0].view(*keep.shape, -1)
        else:  # per token (a causal LM), or pooled (a sequence classifier asked for its hidden states): not read
            logits = _unpack(out.logits, p.real) if out.logits.dim() == 3 else None
        hidden = (_unpack(out.hidden_states[-1], p.real),) if output_hidden_states else None
        return SimpleNamespace(logits=logits, hidden_states=hidden)


def _unpack(x: Tensor, real: Tensor) -> Tensor:
    """(1, N, ...) per packed token -> (B, L, ...) per padded position, zeros at padding. A write by mask, not a
    gather by index: its backward reads the real positions' gradients back (a gather), where a gather's backward
    would scatter-add a (B, L, V) gradient with every padding position onto one token's (measured: it ate the
    saving of packing on SmolLM2's 49k-word vocabulary)."""
    out = x.new_zeros(*real.shape, *x.shape[2:])
    return out.index_put((real,), x[0])


# ---------------------------------------------------------------- token-budget micro-batches


def real_tokens(batch: dict[str, Tensor]) -> list[int]:
    """Each row's real tokens, over every attention mask of a batch (a pair batch has one per side)."""
    masks = [v for k, v in batch.items() if k.endswith("attention_mask")]
    return [int(x) for x in sum(m.long().sum(1) for m in masks)]


def budget_cuts(lengths: list[int], budget: int, count: int = 0) -> list[int]:
    """Row boundaries [0, ..., n] of consecutive micro-batches of at most `budget` real tokens each (a longer row
    alone); then, while there are fewer than `count` (the ranks of a learner group must run the same number of
    forwards), the one with the most tokens is cut in two where its tokens halve."""
    cuts, used = [0], 0
    for i, n in enumerate(lengths):
        if used and used + n > budget:
            cuts.append(i)
            used = 0
        used += n
    cuts.append(len(lengths))
    if count > len(lengths):
        raise ValueError(f"{len(lengths)} rows cannot make {count} micro-batches")
    while len(cuts) - 1 < count:
        a, b = max((p for p in zip(cuts, cuts[1:]) if p[1] - p[0] > 1), key=lambda p: sum(lengths[p[0]:p[1]]))
        half, acc, mid = sum(lengths[a:b]) / 2, 0, a + 1
        for mid in range(a + 1, b):
            acc += lengths[mid - 1]
            if acc >= half:
                break
        cuts.insert(cuts.index(b), mid)
    return cuts
