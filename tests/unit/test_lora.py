"""LoRA (peft) on the tiny policy and value model, no DeepSpeed: what is trained, the merged HF weights the
learners export, the reference with adapters switched off, and target modules that do not exist."""

import pytest
import torch

from rlhf_ray import lora, models
from rlhf_ray.config import LoraConfig
from tests import oracles


def _trained(model, seed=0):
    """Every adapter moved off its initialisation (B starts at zero: a fresh adapter changes nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def test_only_adapters_train_and_the_merged_weights_are_pefts_merge(tiny):
    base = models.load_policy(tiny)
    names = [n for n, _ in base.named_parameters()]
    model = _trained(lora.wrap(models.load_policy(tiny), LoraConfig(rank=4, alpha=8), "policy"))
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained)
    merged = dict(oracles.merged_weights(model))
    assert list(merged) == names  # HF names, HF order, nothing extra
    want = model.merge_and_unload().state_dict()  # peft's own merge (done last: it changes the model)
    assert max((merged[n] - want[n]).abs().max().item() for n in names) < 1e-6
    moved = [n for n in names if not torch.equal(merged[n], base.state_dict()[n])]
    assert moved and all(n.endswith("proj.weight") for n in moved)  # the adapted linears, nothing else


def test_with_adapters_off_the_policy_is_its_base(tiny):
    ids = torch.tensor([[5, 17, 99, 3, 42, 8]])
    model = _trained(lora.wrap(models.load_policy(tiny), LoraConfig(rank=4), "policy")).eval()
    with torch.no_grad():
        base = models.load_policy(tiny).eval()(ids).logits
        with model.disable_adapter():
            off = model(ids).logits
        on = model(ids).logits
    assert torch.allclose(off, base, atol=1e-6) and (on - base).abs().max() > 1e-3


def test_a_value_model_trains_its_head_in_full(tiny):
    model = lora.wrap(models.load_value_model(tiny), LoraConfig(rank=2, target_modules=["q_proj", "v_proj"]),
                      "critic")
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("score" in n for n in trained) and any("lora_A" in n for n in trained)
    merged = dict(oracles.merged_weights(model))
    assert "score.weight" in merged and not any("original_module" in n or "lora" in n for n in merged)


def test_targets_that_do_not_exist_are_named(tiny):
    assert lora.missing_targets(tiny, LoraConfig(target_modules=["q_proj", "qkv", "all-linear"])) == ["qkv"]
    assert lora.missing_targets(tiny, LoraConfig()) == []
