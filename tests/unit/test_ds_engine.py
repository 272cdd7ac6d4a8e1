"""ds_engine's pure parts on a plain tiny model (no DeepSpeed engine, no Ray): schedule, config, micro-batching,
the exactness of the SFT loss under splitting, and the forward passes against models.py."""

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from rlhf_ray import models
from rlhf_ray.algos import forward
from rlhf_ray.config import TrainConfig
from rlhf_ray.engines import ds_engine as E


def _batch(B=8, T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 800, (B, T), generator=g)
    lengths = torch.randint(4, T + 1, (B,), generator=g)
    attention = (torch.arange(T) < lengths[:, None]).long()
    loss_mask = attention * (torch.arange(T) >= 2).long()
    return {"input_ids": ids * attention, "attention_mask": attention, "loss_mask": loss_mask}


def test_lr_factor_warmup_then_schedule():
    assert [E.lr_factor(s, 0, 10, "constant") for s in (0, 5, 9)] == [1.0, 1.0, 1.0]  # no warm-up: full LR at once
    assert [E.lr_factor(s, 4, 10, "constant") for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert E.lr_factor(2, 2, 10, "linear") == 1.0 and E.lr_factor(6, 2, 10, "linear") == pytest.approx(0.5)
    assert E.lr_factor(6, 2, 10, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))
    assert E.lr_factor(50, 2, 10, "cosine") == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="unknown lr_schedule"):
        E.lr_factor(3, 0, 10, "step")


def test_ds_config_accumulation_and_errors():
    cfg = E.ds_config(TrainConfig(batch_size=16, micro_batch_size=2, zero_stage=3, grad_clip=0.5), world_size=2)
    assert (cfg["train_batch_size"], cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"]) == (
        16, 2, 4)
    assert cfg["zero_optimization"]["stage"] == 3 and cfg["gradient_clipping"] == 0.5
    assert cfg["optimizer"]["type"] == "AdamW" and cfg["optimizer"]["params"]["torch_adam"] is True
    assert "scheduler" not in cfg and cfg["bf16"]["enabled"] is False
    assert E.ds_config(TrainConfig(), 1, "bfloat16")["bf16"]["enabled"] is True
    ppo = E.ds_config(TrainConfig(batch_size=8, micro_batch_size=4), 1, batch_size=32)
    assert ppo["gradient_accumulation_steps"] == 8
    with pytest.raises(ValueError, match="does not split into 3 rank"):
        E.ds_config(TrainConfig(batch_size=8, micro_batch_size=2), world_size=3)
    with pytest.raises(ValueError, match="dtype"):
        E.ds_config(TrainConfig(), 1, "float16")


def test_split_micro_batches():
    b = _batch(B=5)
    parts = E.split_micro_batches(b, 2, exact=False)
    assert [len(p["input_ids"]) for p in parts] == [2, 2, 1]
    assert torch.equal(torch.cat([p["loss_mask"] for p in parts]), b["loss_mask"])
    with pytest.raises(ValueError, match="5 rows do not split"):
        E.split_micro_batches(b, 2)
    with pytest.raises(ValueError, match="differ in length"):
        E.split_micro_batches({"a": torch.zeros(4), "b": torch.zeros(3)}, 2)


def test_sft_loss_and_gradient_add_up_over_micro_batches(tiny):
    """The invariant train_step relies on: shares normalised by the global count sum to the full-batch loss and
    their gradients to the full-batch gradient."""
    model = models.load_policy(tiny)
    batch = _batch()
    full, _ = forward.sft_nll(model, batch, forward.sft_count(batch))
    full.backward()
    full_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    n = forward.sft_count(batch)
    total = 0.0
    for mb in E.split_micro_batches(batch, 2):
        loss, _ = forward.sft_nll(model, mb, n)
        loss.backward()
        total += loss.item()
    assert total == pytest.approx(full.item(), rel=1e-6)
    for g_full, p in zip(full_grads, model.parameters()):
        torch.testing.assert_close(p.grad, g_full, atol=1e-7, rtol=1e-5)


def test_logprobs_ignore_left_padding(tiny):
    model = models.load_policy(tiny).eval()
    ids = torch.randint(3, 800, (1, 9), generator=torch.Generator().manual_seed(1))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 9, dtype=torch.long)], 1)
    with torch.no_grad():
        plain = forward.logprobs(model, ids, torch.ones_like(ids), 4)
        left = forward.logprobs(model, padded, mask, 4)
        manual = torch.log_softmax(model(ids).logits[:, -5:-1], -1).gather(-1, ids[:, -4:, None]).squeeze(-1)
    assert plain.shape == (1, 4)
    torch.testing.assert_close(plain, manual, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(left, plain, atol=1e-5, rtol=1e-5)


def test_values_read_the_value_before_each_response_token(tiny):
    torch.manual_seed(0)
    model = models.load_value_model(tiny).eval()
    b = _batch(B=3)
    with torch.no_grad():
        ours = forward.values(model, b["input_ids"], b["attention_mask"], 5)
        ref = forward.token_values(model, b["input_ids"], b["attention_mask"])
    torch.testing.assert_close(ours, ref[:, -6:-1])


def test_hf_name_strips_wrappers():
    assert E.hf_name("module.module.model.norm.weight") == "model.norm.weight"
    assert E.hf_name("lm_head.weight") == "lm_head.weight"


def test_without_left_padding_drops_only_columns_padded_in_every_row():
    ids = torch.tensor([[0, 0, 0, 5, 6], [0, 0, 7, 8, 9]])
    kept_ids, kept_mask = forward.without_left_padding(ids, (ids > 0).long())
    assert kept_ids.tolist() == [[0, 5, 6], [7, 8, 9]] and kept_mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    full = torch.tensor([[1, 2], [3, 4]])
    assert forward.without_left_padding(full, torch.ones_like(full))[0].tolist() == full.tolist()  # nothing to drop


def test_logprobs_and_values_same_with_or_without_shared_left_padding(tiny):
    policy, critic = models.load_policy(tiny).eval(), models.load_value_model(tiny).eval()
    b = _batch(B=3)
    pad = torch.zeros(3, 4, dtype=torch.long)  # 4 more columns of padding in every row: dropped before the forward
    wide_ids, wide_mask = torch.cat([pad, b["input_ids"]], 1), torch.cat([pad, b["attention_mask"]], 1)
    with torch.no_grad():
        torch.testing.assert_close(forward.logprobs(policy, wide_ids, wide_mask, 5),
                                   forward.logprobs(policy, b["input_ids"], b["attention_mask"], 5))
        torch.testing.assert_close(forward.values(critic, wide_ids, wide_mask, 5),
                                   forward.values(critic, b["input_ids"], b["attention_mask"], 5))


def test_logprobs_at_a_temperature_are_those_of_the_scaled_logits(tiny):
    model = models.load_policy(tiny).eval()
    b = _batch(B=3)
    with torch.no_grad():
        plain = forward.logprobs(model, b["input_ids"], b["attention_mask"], 5)
        at_one = forward.logprobs(model, b["input_ids"], b["attention_mask"], 5, temperature=1.0)
        cold = forward.logprobs(model, b["input_ids"], b["attention_mask"], 5, temperature=0.7)
        logits = forward.response_logits(model, b["input_ids"], b["attention_mask"], 5)
    assert torch.equal(at_one, plain)  # T = 1: bit for bit what it was before temperature was an argument
    manual = torch.log_softmax(logits.float() / 0.7, -1).gather(-1, b["input_ids"][:, -5:, None]).squeeze(-1)
    torch.testing.assert_close(cold, manual, atol=1e-6, rtol=1e-6)
    assert (cold - plain).abs().max() > 0.05  # and the temperature matters


class _IgnoresLogitsToKeep(torch.nn.Module):
    """A causal LM whose forward drops `logits_to_keep` (older or custom models): it returns every position."""

    def __init__(self, model, keep_only: int = 0):
        super().__init__()
        self.model, self.keep_only = model, keep_only

    def forward(self, logits_to_keep=None, **kw):
        out = self.model(**kw)
        if self.keep_only:  # a broken model: fewer positions than asked for
            out.logits = out.logits[:, -self.keep_only:]
        return out


def test_a_model_that_ignores_logits_to_keep_gives_the_same_logprobs_or_an_error(tiny):
    model = models.load_policy(tiny).eval()
    b = _batch(B=3)
    with torch.no_grad():
        want = forward.logprobs(model, b["input_ids"], b["attention_mask"], 5)
        got = forward.logprobs(_IgnoresLogitsToKeep(model), b["input_ids"], b["attention_mask"], 5)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)  # the last positions, not the first
        with pytest.raises(ValueError, match="returned logits for 4 positions, fewer than the 6 asked for"):
            forward.logprobs(_IgnoresLogitsToKeep(model, keep_only=4), b["input_ids"], b["attention_mask"], 5)


def test_token_budget_micro_batches_take_the_rows_that_fit():
    b = _batch(B=8, T=12)
    assert [len(m["input_ids"]) for m in E.micro_batches(b, TrainConfig(micro_batch_size=4))] == [4, 4]
    assert [len(m["input_ids"]) for m in E.micro_batches(b, TrainConfig(micro_batch_tokens=36))] == [3, 3, 2]
    assert [len(m["input_ids"]) for m in E.micro_batches(b, TrainConfig(micro_batch_tokens=5))] == [1] * 8
    parts = E.micro_batches(b, TrainConfig(micro_batch_tokens=100))
    assert len(parts) == 1 and all(torch.equal(parts[0][k], b[k]) for k in b)


def test_memory_settings_reach_deepspeed_and_the_model():
    cfg = E.ds_config(TrainConfig(zero_stage=3, offload_optimizer=True, offload_params=True), 1)
    zero = cfg["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == "cpu"
    assert cfg["zero_force_ds_cpu_optimizer"] is False  # torch's AdamW on the CPU copies, no CPUAdam build
    assert "offload_optimizer" not in E.ds_config(TrainConfig(), 1)["zero_optimization"]


def test_gradient_checkpointing_leaves_loss_and_gradients_unchanged(tiny):
    b = _batch(B=4, T=16)
    out = []
    for on in (False, True):
        model = E.prepare_model(models.load_policy(tiny), TrainConfig(gradient_checkpointing=on)).train()
        loss, _ = forward.sft_nll(model, b, forward.sft_count(b))
        loss.backward()
        out.append((model.is_gradient_checkpointing, loss.item(), [p.grad.clone() for p in model.parameters()]))
    (off, loss0, g0), (on, loss1, g1) = out
    assert not off and on
    assert loss1 == pytest.approx(loss0, rel=1e-6)
    assert max((a - c).abs().max().item() for a, c in zip(g0, g1)) < 1e-6
