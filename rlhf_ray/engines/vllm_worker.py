"""What rlhf-ray adds to each vLLM worker: loading new weights in place.

vLLM builds its workers with this class mixed in (`LLM(worker_extension_cls=...)`, its supported extension
point, as in vLLM's own RLHF examples) and `llm.collective_rpc("<method>", args=...)` runs a method on every worker,
in the engine's process or in its worker processes (multiprocessing, tensor parallelism) alike: only the method's
name and its arguments travel, never a function.
"""

from __future__ import annotations

import os

import torch

from cluster import weight_sync

EXTENSION = f"{__name__}.WeightLoader"


class WeightLoader:
    """Mixed into vLLM's worker class: `self` is the worker."""

    def rlhf_load_buckets(self, buckets: list) -> int:
        """Load weight buckets (`weight_sync.portable`: full tensors, each worker's model takes its tensor-parallel
        shard) in place; returns how many tensors were loaded."""
        named = [pair for layout, buffer in buckets for pair in weight_sync.from_portable(layout, buffer)]
        self.reload_weights(weights_iterator=named)
        _retie_lm_head(self.model_runner.get_model())
        return len(named)

    def rlhf_pid(self) -> int:
        """The worker's process id (tests: are the workers in processes of their own?)."""
        return os.getpid()


def _retie_lm_head(model: torch.nn.Module) -> None:
    """Tied embeddings (SmolLM2, most small models) load only `embed_tokens`; vLLM's layer-wise reload then puts
    the LM head's old kernel tensors back ("ParallelLMHead: Failed to load weights"): on CPU the head multiplies
    by a packed copy of the old embedding, so the engine would sample from new layers and a stale head. Point
    the head at the new embedding and redo its kernel setup."""
    if getattr(model.config, "tie_word_embeddings", False):
        head, embed = model.lm_head, model.model.embed_tokens
        if head.weight.data_ptr() != embed.weight.data_ptr():
            head.weight.data.copy_(embed.weight.data)
        head.quant_method.process_weights_after_loading(head)
