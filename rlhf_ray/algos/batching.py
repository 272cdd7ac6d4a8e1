"""Batches for the supervised stages (SFT, RM, DPO): which rows each optimizer step takes, and how encoded rows
become padded tensors. Pure torch, no Ray, no models.

Every batch is a dict of (B, ...) tensors, so `cluster.actor_group.shard` and `ds_engine.split_micro_batches`
can cut it along rows. Layouts:
  sft_batch   input_ids, attention_mask, loss_mask (B, L)          right-padded; loss_mask 1 on response tokens
  pair_batch  {chosen,rejected}_{input_ids,attention_mask} (B, L)  right-padded to one L, so a loss can stack the
              two halves into one (2B, L) forward (reward models read the last real token)
  dpo_batch   {chosen,rejected}_{input_ids,attention_mask} (B, P+T), {chosen,rejected}_response_mask (B, T):
              the `rollout.RolloutBatch` layout (prompt left-padded to P, response right-padded to T), so
              `forward.logprobs(..., T)` reads every response token; plus ref_{chosen,rejected}_logps (B,)
"""

from __future__ import annotations

import random
from typing import Optional

import torch

Tensor = torch.Tensor


def step_batches(n_rows: int, batch_size: int, epochs: int, seed: int, max_steps: Optional[int] = None
                 ) -> list[list[int]]:
    """Row indices of each optimizer step: every epoch a fresh seeded shuffle cut into full batches.

    The tail of an epoch that does not fill a batch is left out of that epoch (the next shuffle covers it):
    DeepSpeed's step takes exactly `batch_size` rows. `max_steps` caps the total."""
    if n_rows < batch_size:
        raise ValueError(f"{n_rows} training rows are fewer than one batch of {batch_size} (train.batch_size)")
    steps: list[list[int]] = []
    for epoch in range(epochs):
        order = list(range(n_rows))
        random.Random(seed * 1000003 + epoch).shuffle(order)
        steps += [order[i : i + batch_size] for i in range(0, n_rows - batch_size + 1, batch_size)]
    return steps if max_steps is None else steps[:max_steps]


def _right_pad(seqs: list[list[int]], pad_id: int, width: Optional[int] = None) -> tuple[Tensor, Tensor]:
    """(ids, mask) (B, width): each sequence at the left, pad_id after it."""
    width = max(map(len, seqs)) if width is None else width
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def sft_batch(rows: list[dict], pad_id: int) -> dict[str, Tensor]:
    """rows: {input_ids, loss_mask} lists (`data.encode_demonstration`)."""
    ids, mask = _right_pad([r["input_ids"] for r in rows], pad_id)
    loss_mask, _ = _right_pad([r["loss_mask"] for r in rows], 0, ids.shape[1])
    return {"input_ids": ids, "attention_mask": mask, "loss_mask": loss_mask}


def pair_batch(rows: list[dict], pad_id: int) -> dict[str, Tensor]:
    """rows: {chosen, rejected} full token lists (prompt + response) and optionally `margin`."""
    width = max(len(r[k]) for r in rows for k in ("chosen", "rejected"))
    out = {}
    for k in ("chosen", "rejected"):
        out[f"{k}_input_ids"], out[f"{k}_attention_mask"] = _right_pad([r[k] for r in rows], pad_id, width)
    if all("margin" in r for r in rows):
        out["margin"] = torch.tensor([float(r["margin"]) for r in rows])
    return out


def prompt_response_layout(prompts: list[list[int]], responses: list[list[int]], pad_id: int,
                           P: Optional[int] = None, T: Optional[int] = None) -> tuple[Tensor, Tensor, Tensor]:
    """(input_ids, attention_mask (B, P+T), response_mask (B, T)): prompts left-padded to P, responses
    right-padded to T (the `rollout.RolloutBatch` layout)."""
    P = max(map(len, prompts)) if P is None else P
    T = max(map(len, responses)) if T is None else T
    ids = torch.full((len(prompts), P + T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), P + T), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids[i, P - len(p) : P] = torch.tensor(p, dtype=torch.long)
        ids[i, P : P + len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, P - len(p) : P + len(r)] = 1
    return ids, mask, mask[:, P:].float()


def dpo_batch(rows: list[dict], pad_id: int) -> dict[str, Tensor]:
    """rows: {prompt_ids, chosen_ids, rejected_ids, ref_chosen_logps, ref_rejected_logps}. Chosen and rejected
    share P and T, so the loss stacks them into one (2B, P+T) forward."""
    prompts = [r["prompt_ids"] for r in rows]
    P = max(map(len, prompts))
    T = max(len(r[k]) for r in rows for k in ("chosen_ids", "rejected_ids"))
    out = {}
    for k in ("chosen", "rejected"):
        ids, mask, resp = prompt_response_layout(prompts, [r[f"{k}_ids"] for r in rows], pad_id, P, T)
        out.update({f"{k}_input_ids": ids, f"{k}_attention_mask": mask, f"{k}_response_mask": resp,
                    f"ref_{k}_logps": torch.tensor([float(r[f"ref_{k}_logps"]) for r in rows])})
    return out


def stack_pair(mb: dict[str, Tensor], fields: tuple[str, ...]) -> dict[str, Tensor]:
    """{field: cat(chosen_field, rejected_field)}: one (2B, ...) forward for both halves; rows [:B] are chosen."""
    return {f: torch.cat([mb[f"chosen_{f}"], mb[f"rejected_{f}"]]) for f in fields}
