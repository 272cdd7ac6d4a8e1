"""Preference losses on the plain tiny model (no DeepSpeed, no Ray): hand-checkable values at the start, the
micro-batch invariant the learners rely on, and `ds_engine.eval_step` against the full-batch loss."""

import math

import pytest
import torch

from rlhf_ray import models
from rlhf_ray.algos import batching, forward, pref_losses, rl_math
from rlhf_ray.engines import ds_engine


def _pairs(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)

    def seq(lo, hi):
        return torch.randint(3, 700, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()

    return [{"prompt_ids": seq(2, 6), "chosen_ids": seq(1, 5), "rejected_ids": seq(1, 5)} for _ in range(n)]


def _dpo_rows(model, rows):
    """Reference log-probs from the same model: the policy starts as its reference."""
    for r in rows:
        for k in ("chosen", "rejected"):
            ids, mask, resp = batching.prompt_response_layout([r["prompt_ids"]], [r[f"{k}_ids"]], 0)
            with torch.no_grad():
                lp = forward.logprobs(model, ids, mask, resp.shape[1])
            r[f"ref_{k}_logps"] = float(rl_math.masked_sum(lp, resp))
    return rows


def test_dpo_at_the_reference_is_log2_and_adds_up_over_micro_batches(tiny):
    model = models.load_policy(tiny).eval()
    batch = batching.dpo_batch(_dpo_rows(model, _pairs()), pad_id=0)
    loss = pref_losses.make_dpo_loss(beta=0.1, loss_type="sigmoid", label_smoothing=0.0)
    full, metrics = loss.fn(model, batch, loss.count(batch))
    assert full.item() == pytest.approx(math.log(2), abs=1e-4)  # policy == reference: h = 0
    assert metrics["reward_margin"] == pytest.approx(0.0, abs=1e-4)
    assert 0 <= metrics["policy_accuracy"] <= 1 and metrics["chosen_logps"] < 0
    n = loss.count(batch)
    parts = [loss.fn(model, mb, n) for mb in ds_engine.split_micro_batches(batch, 2)]
    assert sum(p[0].item() for p in parts) == pytest.approx(full.item(), rel=1e-5)
    assert sum(p[1]["chosen_logps"] for p in parts) == pytest.approx(metrics["chosen_logps"], rel=1e-5)


def test_reward_loss_matches_bradley_terry_on_the_scores(tiny):
    torch.manual_seed(0)
    model = models.load_value_model(tiny).eval()
    rows = [{"chosen": r["prompt_ids"] + r["chosen_ids"], "rejected": r["prompt_ids"] + r["rejected_ids"]}
            for r in _pairs()]
    batch = batching.pair_batch(rows, pad_id=0)
    loss = pref_losses.make_reward_loss(use_margin=False)
    with torch.no_grad():
        value, metrics = loss.fn(model, batch, loss.count(batch))
        r_c = forward.sequence_rewards(model, batch["chosen_input_ids"], batch["chosen_attention_mask"])
        r_r = forward.sequence_rewards(model, batch["rejected_input_ids"], batch["rejected_attention_mask"])
    assert value.item() == pytest.approx(rl_math.bradley_terry_loss(r_c, r_r).mean().item(), rel=1e-5)
    assert metrics["accuracy"] == pytest.approx((r_c > r_r).float().mean().item())
    assert metrics["margin"] == pytest.approx((r_c - r_r).mean().item(), abs=1e-6)


def test_eval_step_equals_the_full_batch_loss_without_gradients(tiny):
    model = models.load_policy(tiny)
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(3, 700, (n,), generator=g).tolist(), "loss_mask": [0, 0] + [1] * (n - 2)}
            for n in (5, 9, 7, 4, 6)]
    batch = batching.sft_batch(rows, 0)
    out = ds_engine.eval_step(model, ds_engine.split_micro_batches(batch, 2, exact=False), forward.SFT_LOSS)
    assert model.training and all(p.grad is None for p in model.parameters())  # back in train mode, no grads
    with torch.no_grad():
        full, _ = forward.sft_nll(model.eval(), batch, forward.sft_count(batch))
    assert out["loss"] == pytest.approx(full.item(), rel=1e-5)
