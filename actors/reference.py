"""Reference actor: a frozen copy of the starting policy; per-token log-probs of given responses (for the KL
penalty and DPO)."""

from __future__ import annotations

import pyarrow as pa

from cluster import quiet
from rlhf_ray import models, rollout
from rlhf_ray.algos import packing
from rlhf_ray.engines import scoring


class Reference:
    """Wrap with `ray.remote`; named `reference-<rank>`."""

    def __init__(self, model_path: str, dtype: str = "float32", micro_batch_size: int = 8,
                 trust_remote_code: bool = False, packed: bool = False):
        quiet.actor_start()
        self.model = models.load_policy(model_path, dtype, trust_remote_code).eval().requires_grad_(False)
        if packed:  # train.packing: padding-free forwards
            self.model = packing.Packed(self.model)
        self.pad_id = models.load_tokenizer(model_path, trust_remote_code).pad_token_id
        self.micro_batch_size = micro_batch_size

    def logprobs(self, table: pa.Table, temperature: float = 1.0) -> list[list[float]]:
        """log π_ref of each response token at sampling temperature `temperature` (the reference as the policy
        would sample it), one list per rollout row (no padding)."""
        batch = rollout.collate(table, self.pad_id)
        lp = scoring.response_logprobs(self.model, batch, self.micro_batch_size, temperature)
        lengths = batch.response_mask.sum(1).long().tolist()
        return [row[:n] for row, n in zip(lp.tolist(), lengths)]
