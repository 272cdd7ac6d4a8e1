"""From scored rollouts to PPO experience (`ScoredBatch` -> `Experience` -> learner mini-batches), and the PPO
losses on a real (tiny) model."""

from types import SimpleNamespace

import pytest
import torch

from rlhf_ray import models
from rlhf_ray.algos import experience, forward, ppo_losses, rl_math


def test_shape_task_reward():
    task, ended = torch.tensor([1.0, 5.0, -4.0]), torch.tensor([True, False, True])
    assert experience.shape_task_reward(task, ended, None, None, False).tolist() == [1.0, 5.0, -4.0]
    assert experience.shape_task_reward(task, ended, None, -1.0, False).tolist() == [1.0, -1.0, -4.0]
    assert experience.shape_task_reward(task, ended, 2.0, None, False).tolist() == [1.0, 2.0, -2.0]
    normed = experience.shape_task_reward(task, ended, None, None, True)
    assert normed.mean().item() == pytest.approx(0.0, abs=1e-6) and normed.std().item() == pytest.approx(1.0, abs=1e-5)


def test_gae_advantages_are_whitened_gae_of_kl_shaped_rewards():
    g = torch.Generator().manual_seed(0)
    reward, kl, values = torch.randn(4, generator=g), torch.rand(4, 5, generator=g), torch.randn(4, 5, generator=g)
    mask = torch.tensor([[1.0] * 5, [1.0] * 3 + [0.0] * 2, [1.0] * 5, [1.0] + [0.0] * 4])
    adv, ret = experience.advantages("gae", reward, kl, mask, 0.1, True, values, 1.0, 0.95, 1)
    raw, ret_ref = rl_math.gae(rl_math.kl_shaped_rewards(reward, kl, mask, 0.1), values, mask, 1.0, 0.95)
    assert torch.allclose(ret, ret_ref)
    assert torch.allclose(adv, rl_math.masked_whiten(raw, mask) * mask)
    # The KL as a loss term instead: the rewards carry no KL.
    _, ret_nokl = experience.advantages("gae", reward, kl, mask, 0.1, False, values, 1.0, 0.95, 1)
    assert torch.allclose(ret_nokl, rl_math.gae(rl_math.kl_shaped_rewards(reward, kl, mask, 0.0), values, mask,
                                                1.0, 0.95)[1])
    with pytest.raises(ValueError, match="needs critic values"):
        experience.advantages("gae", reward, kl, mask, 0.1, True, None, 1.0, 0.95, 1)


def test_reinforce_pp_is_whitened_return_to_go():
    reward = torch.tensor([1.0, 0.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    adv, ret = experience.advantages("reinforce++", reward, kl, mask, 0.5, True, None, 1.0, 0.95, 1)
    # rewards: [-0.05, -0.1, 1 - 0.15], [-0.25]; return-to-go sums them from each token on (γ = 1).
    assert ret.tolist() == [pytest.approx([0.7, 0.75, 0.85]), pytest.approx([-0.25, 0.0, 0.0])]
    assert torch.allclose(adv, rl_math.masked_whiten(ret, mask) * mask)


def test_group_advantages_spread_over_tokens():
    reward = torch.tensor([1.0, 0.0, 2.0, 2.0])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    kl = torch.zeros(4, 2)
    adv, _ = experience.advantages("rloo", reward, kl, mask, 0.1, True, None, 1.0, 1.0, 2)
    assert adv.tolist() == [[1.0, 1.0], [-1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    adv, _ = experience.advantages("grpo", reward, kl, mask, 0.1, True, None, 1.0, 1.0, 2)
    assert adv[0, 0] > 0 > adv[1, 0] and adv[1, 1] == 0
    with pytest.raises(ValueError, match="unknown advantage"):
        experience.advantages("vtrace", reward, kl, mask, 0.1, True, None, 1.0, 1.0, 2)


def _settings(**kw) -> experience.Settings:
    base = dict(advantage="grpo", kl_estimator="k1", kl_in_reward=True, gamma=1.0, lam=0.95, group_size=2,
                reward_clip=None, no_eos_penalty=None, normalize=False, on_policy=False)
    return experience.Settings(**{**base, **kw})


def _scored(reference: bool = True, critic: bool = False) -> experience.ScoredBatch:
    """4 rollouts (2 prompts x 2 samples): prompts of P = 2 columns, responses of T = 3 (the last one cut short)."""
    g = torch.Generator().manual_seed(3)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    rollouts = SimpleNamespace(input_ids=torch.arange(20).view(4, 5), attention_mask=torch.ones(4, 5, dtype=torch.long),
                               response_mask=mask, logprobs=-torch.rand(4, 3, generator=g) * mask)
    old, ref, values = -torch.rand(4, 3, generator=g) * mask, -torch.rand(4, 3, generator=g) * mask, torch.randn(4, 3)
    return experience.ScoredBatch(rollouts=rollouts, task_reward=torch.tensor([1.0, 0.0, 0.5, 2.0]),
                                  ref_logprobs=ref if reference else None, old_logprobs=old,
                                  old_values=values * mask if critic else None,
                                  ended=torch.tensor([True, True, False, True]))


def test_make_experience_off_policy_weights_the_behaviour_gap_and_reports_it():
    scored = _scored()
    mask, behaviour = scored.rollouts.response_mask, scored.rollouts.logprobs
    exp = experience.make_experience(scored, _settings(), kl_coef=0.1)
    kl = rl_math.kl_estimate(scored.old_logprobs, scored.ref_logprobs, "k1") * mask
    adv, ret = experience.advantages("grpo", scored.task_reward, kl, mask, 0.1, True, None, 1.0, 0.95, 2)
    assert torch.equal(exp.advantages, adv) and torch.equal(exp.returns, ret)
    assert torch.equal(exp.kl, rl_math.masked_sum(kl, mask, dim=1))
    gap = scored.old_logprobs - behaviour
    assert torch.equal(exp.is_weights, torch.exp(gap).clamp(max=experience.IS_WEIGHT_CAP) * mask)
    assert exp.logprob_gap == pytest.approx(rl_math.masked_mean(gap.abs(), mask).item())
    assert torch.equal(exp.old_values, torch.zeros_like(mask))  # no critic
    assert exp.task_reward is scored.task_reward and exp.ended is scored.ended  # unshaped: what rollouts record
    metrics = exp.metrics()
    assert list(metrics) == ["reward_mean", "reward_std", "kl_mean", "kl_coef", "response_length_mean", "eos_frac",
                             "logprob_gap"]
    assert metrics["reward_mean"] == pytest.approx(0.875) and metrics["kl_coef"] == 0.1
    assert metrics["response_length_mean"] == pytest.approx(2.25) and metrics["eos_frac"] == pytest.approx(0.75)
    assert metrics["kl_mean"] == pytest.approx(exp.kl.mean().item())


def test_make_experience_on_policy_and_without_a_reference():
    scored = _scored(reference=False, critic=True)
    exp = experience.make_experience(scored, _settings(advantage="gae", on_policy=True, no_eos_penalty=-1.0), 0.1)
    mask = scored.rollouts.response_mask
    assert torch.equal(exp.is_weights, mask) and exp.logprob_gap is None  # the loss measures the gap
    assert exp.kl is None and exp.ref_logprobs is None and exp.old_values is scored.old_values
    shaped = experience.shape_task_reward(scored.task_reward, scored.ended, None, -1.0, False)
    adv, _ = experience.advantages("gae", shaped, torch.zeros_like(mask), mask, 0.1, True, scored.old_values,
                                   1.0, 0.95, 2)
    assert torch.equal(exp.advantages, adv)
    metrics = exp.metrics()
    assert metrics["kl_mean"] is None and "logprob_gap" not in metrics


def test_mini_batch_holds_the_loss_keys_for_the_rows_asked():
    idx = torch.tensor([2, 0])
    with_ref = experience.make_experience(_scored(), _settings(), 0.1)
    mb = with_ref.mini_batch(idx)
    assert set(mb) == {"input_ids", "attention_mask", "response_mask", "old_logprobs", "ref_logprobs", "advantages",
                       "is_weights", "returns", "old_values"}
    assert torch.equal(mb["input_ids"], with_ref.input_ids[idx]) and torch.equal(mb["advantages"],
                                                                                  with_ref.advantages[idx])
    without = experience.make_experience(_scored(reference=False), _settings(), 0.1)
    assert "ref_logprobs" not in without.mini_batch(idx)


@pytest.fixture(scope="module")
def tiny_lm(tiny):
    return models.load_policy(tiny).eval()


def _mb(model, adv_sign=1.0):
    torch.manual_seed(0)
    ids = torch.randint(3, 800, (4, 10))
    mask = torch.ones(4, 10, dtype=torch.long)
    resp = torch.ones(4, 6)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, -7:-1]
    old = rl_math.logprobs_from_logits(logits, ids[:, -6:])
    exp = experience.Experience(  # the learner batch as the driver builds it (Experience.mini_batch)
        input_ids=ids, attention_mask=mask, response_mask=resp, old_logprobs=old, ref_logprobs=old,
        advantages=adv_sign * torch.ones(4, 6), returns=torch.ones(4, 6), old_values=torch.zeros(4, 6),
        is_weights=torch.ones(4, 6), task_reward=torch.zeros(4), kl=None, ended=torch.ones(4, dtype=torch.bool),
        kl_coef=0.0, logprob_gap=None)
    return exp.mini_batch(torch.arange(4))


def test_policy_loss_on_policy_is_minus_the_advantage(tiny_lm):
    loss = ppo_losses.make_policy_loss(0.2, None, 0.0, 0.0, "k1")
    mb = _mb(tiny_lm)
    value, metrics = loss.fn(tiny_lm, mb, loss.count(mb))
    assert value.item() == pytest.approx(-1.0, abs=1e-5)  # ratio 1, advantage 1
    assert metrics["clip_frac"] == 0.0 and metrics["approx_kl"] == pytest.approx(0.0, abs=1e-8)
    assert metrics["entropy"] > 0
    # Halving the importance weights halves the surrogate; a KL term to an identical reference adds nothing.
    half = dict(mb, is_weights=0.5 * mb["is_weights"])
    assert loss.fn(tiny_lm, half, loss.count(mb))[0].item() == pytest.approx(-0.5, abs=1e-5)
    with_kl = ppo_losses.make_policy_loss(0.2, None, 0.0, 0.5, "k3")
    assert with_kl.fn(tiny_lm, mb, 24.0)[0].item() == pytest.approx(-1.0, abs=1e-5)


def test_on_policy_loss_needs_no_old_logprobs_and_reports_the_generator_gap(tiny_lm):
    """on_policy: π_θold is this forward, detached; old_logprobs then carries μ (here shifted by 0.01) only for
    the gap metric. Same loss and gradient as the general loss given exact old log-probs."""
    mb = _mb(tiny_lm)
    mb["advantages"] = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    exact = ppo_losses.make_policy_loss(0.2, None, 0.0, 0.0, "k1")
    fast = ppo_losses.make_policy_loss(0.2, None, 0.0, 0.0, "k1", on_policy=True)
    grads = []
    for loss, batch in ((exact, mb), (fast, dict(mb, old_logprobs=mb["old_logprobs"] + 0.01))):
        tiny_lm.zero_grad()
        value, metrics = loss.fn(tiny_lm, batch, 24.0)
        value.backward()
        grads.append((value.item(), tiny_lm.lm_head.weight.grad.clone(), metrics))
    (v1, g1, m1), (v2, g2, m2) = grads
    tiny_lm.zero_grad()
    assert v2 == pytest.approx(v1, abs=1e-6) and torch.allclose(g1, g2, atol=1e-6)
    assert "logprob_gap" not in m1 and m2["logprob_gap"] == pytest.approx(0.01, abs=1e-5)


@pytest.mark.parametrize("loss_agg,temperature", [("token-mean", 1.0)] + [(a, 0.7) for a in rl_math.LOSS_AGGS])
def test_policy_loss_splits_exactly_into_micro_batches_and_ranks(tiny_lm, loss_agg, temperature):
    """2 simulated ranks x 2 micro-batches of 1 row (what ds_engine.train_step does: the count all-reduced first):
    the shares' losses, gradients and metrics add up to the whole batch's, in every aggregation."""
    loss = ppo_losses.make_policy_loss(0.2, 3.0, 0.01, 0.1, "k3", temperature=temperature, loss_agg=loss_agg,
                                       max_response_len=8)
    mb = _mb(tiny_lm)
    mb["response_mask"][1, 3:] = 0
    mb["response_mask"][3, 1:] = 0
    mb["advantages"] = torch.randn(4, 6, generator=torch.Generator().manual_seed(2))
    mb["old_logprobs"] = mb["old_logprobs"] + 0.1 * torch.randn(4, 6, generator=torch.Generator().manual_seed(3))

    def run(batch, n_global):
        tiny_lm.zero_grad()
        value, metrics = loss.fn(tiny_lm, batch, n_global)
        value.backward()
        return value.item(), metrics, [p.grad.clone() for p in tiny_lm.parameters()]

    full, full_metrics, full_grads = run(mb, loss.count(mb))
    ranks = [[{k: v[i:i + 1] for k, v in mb.items()} for i in rows] for rows in ((0, 1), (2, 3))]
    n_global = sum(loss.count(micro) for rank in ranks for micro in rank)  # the all-reduce
    parts = [run(micro, n_global) for rank in ranks for micro in rank]
    tiny_lm.zero_grad()
    assert sum(p[0] for p in parts) == pytest.approx(full, abs=1e-6)
    for key in full_metrics:
        assert sum(p[1][key] for p in parts) == pytest.approx(full_metrics[key], abs=1e-6), key
    for i, g in enumerate(full_grads):
        torch.testing.assert_close(sum(p[2][i] for p in parts), g, atol=1e-6, rtol=1e-5)


def test_policy_loss_aggregations_weigh_responses_as_their_papers_do(tiny_lm):
    """Ratio 1, advantage 1: every token's surrogate is -1. A token or response mean keeps -1; Dr. GRPO's sum over
    a constant L = 8 gives -(total tokens) / (responses x L): long responses weigh more."""
    mb = _mb(tiny_lm)
    mb["response_mask"][1, 3:] = 0  # lengths 6, 3, 6, 6
    got = {}
    for agg in rl_math.LOSS_AGGS:
        loss = ppo_losses.make_policy_loss(0.2, None, 0.0, 0.0, "k1", loss_agg=agg, max_response_len=8)
        got[agg] = loss.fn(tiny_lm, mb, loss.count(mb))[0].item()
    assert got == pytest.approx({"token-mean": -1.0, "seq-mean-token-mean": -1.0,
                                 "seq-mean-token-sum-norm": -21 / (4 * 8)}, abs=1e-5)
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        ppo_losses.make_policy_loss(0.2, None, 0.0, 0.0, "k1", loss_agg="seq-sum")


def test_policy_loss_at_a_temperature_is_that_of_the_sampling_policy(tiny_lm):
    """Old and reference log-probs taken at T = 0.7 (what the generators and the reference record): the ratio is 1,
    the KL to an identical reference 0, and the entropy that of softmax(logits / 0.7). At T = 1 they are not."""
    mb = _mb(tiny_lm)
    with torch.no_grad():
        cold = forward.logprobs(tiny_lm, mb["input_ids"], mb["attention_mask"], 6, temperature=0.7)
        logits = forward.response_logits(tiny_lm, mb["input_ids"], mb["attention_mask"], 6)
    mb.update(old_logprobs=cold, ref_logprobs=cold)
    loss = ppo_losses.make_policy_loss(0.2, None, 0.0, 0.5, "k3", temperature=0.7)
    value, metrics = loss.fn(tiny_lm, mb, loss.count(mb))
    assert value.item() == pytest.approx(-1.0, abs=1e-5) and metrics["approx_kl"] == pytest.approx(0.0, abs=1e-10)
    assert metrics["clip_frac"] == 0.0
    assert metrics["entropy"] == pytest.approx(rl_math.entropy_from_logits(logits / 0.7).mean().item(), abs=1e-5)
    at_one = ppo_losses.make_policy_loss(0.2, None, 0.0, 0.5, "k3")  # the learner before: T = 1 against T = 0.7
    assert at_one.fn(tiny_lm, mb, loss.count(mb))[1]["approx_kl"] > 1e-3


def test_value_loss_metric(tiny_lm, tmp_path):
    critic = models.load_value_model(str(tmp_path_from(tiny_lm, tmp_path))).eval()
    loss = ppo_losses.make_value_loss(0.2)
    mb = _mb(tiny_lm)
    value, metrics = loss.fn(critic, mb, loss.count(mb))
    assert value.item() == pytest.approx(metrics["value_loss"]) and value.item() > 0


def tmp_path_from(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def test_vader_warmth_orders_replies():
    from examples.warm.labelers import vader_warmth

    warm, flat, cold = vader_warmth(["q"] * 3, ["I'm so glad you asked, happy to help! Great idea.",
                                                "The form is on page two.", "That is a stupid, awful question."])
    assert 0 <= cold < flat < warm <= 1 and flat == 0.5
