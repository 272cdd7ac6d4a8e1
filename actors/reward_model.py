"""Reward-model actor: a sequence classifier with one output; a scalar score per prompt + response."""

from __future__ import annotations

import pyarrow as pa

from cluster import quiet
from rlhf_ray import models, rollout
from rlhf_ray.algos import packing
from rlhf_ray.engines import scoring


class RewardModel:
    """Wrap with `ray.remote`; named `reward-<rank>`.

    When the reward model reads the policy's tokens (same vocabulary) it scores the rollout's token ids as they
    are; otherwise (e.g. a MiniLM encoder) it re-tokenizes the prompt and response texts as a pair."""

    def __init__(self, model_path: str, policy_tokenizer: str, dtype: str = "float32", micro_batch_size: int = 8,
                 trust_remote_code: bool = False, packed: bool = False):
        quiet.actor_start()
        self.model = models.load_value_model(model_path, dtype, trust_remote_code).eval().requires_grad_(False)
        if packed and getattr(self.model, "score", None) is not None:  # a decoder; an encoder pools [CLS], unpacked
            self.model = packing.Packed(self.model)
        self.tokenizer = models.load_tokenizer(model_path, trust_remote_code)
        self.same_vocab = self.tokenizer.get_vocab() == models.load_tokenizer(policy_tokenizer, trust_remote_code).get_vocab()
        self.micro_batch_size = micro_batch_size

    def scores(self, table: pa.Table) -> list[float]:
        if self.same_vocab:
            batch = rollout.collate(table, self.tokenizer.pad_token_id)
            ids, mask = batch.input_ids, batch.attention_mask
        else:
            ids, mask = scoring.encode_text_pairs(self.tokenizer, table.column("prompt").to_pylist(),
                                                  table.column("response").to_pylist())
        return scoring.reward_scores(self.model, ids, mask, self.micro_batch_size).tolist()
