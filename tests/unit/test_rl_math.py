"""rl_math against plain Python loops and hand-computed values."""

import math

import pytest
import torch

from rlhf_ray.algos import rl_math as M

torch.manual_seed(0)


def _mask(lengths, T):
    return torch.tensor([[1.0 if t < n else 0.0 for t in range(T)] for n in lengths])


# ---------------------------------------------------------------- reductions


def test_masked_reductions_match_loops():
    x = torch.randn(3, 5)
    m = _mask([5, 2, 0], 5)
    vals = [x[i, t].item() for i in range(3) for t in range(5) if m[i, t]]
    mean = sum(vals) / len(vals)
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    assert M.masked_sum(x, m).item() == pytest.approx(sum(vals), abs=1e-5)
    assert M.masked_mean(x, m).item() == pytest.approx(mean, abs=1e-5)
    assert M.masked_var(x, m).item() == pytest.approx(var, abs=1e-5)
    row_means = M.masked_mean(x, m, dim=1)
    assert row_means[1].item() == pytest.approx((x[1, 0] + x[1, 1]).item() / 2, abs=1e-6)
    assert row_means[2].item() == 0.0  # empty row: 0, not NaN
    w = M.masked_whiten(x, m)
    assert M.masked_mean(w, m).item() == pytest.approx(0.0, abs=1e-5)
    assert M.masked_var(w, m).item() == pytest.approx(1.0, abs=1e-4)
    w2 = M.masked_whiten(x, m, shift_mean=False)
    assert M.masked_mean(w2, m).item() == pytest.approx(mean, abs=1e-5)


# ---------------------------------------------------------------- logprobs, entropy


def test_logprobs_and_entropy_match_loops():
    logits = torch.randn(2, 3, 7)
    labels = torch.randint(0, 7, (2, 3))
    lp = M.logprobs_from_logits(logits, labels)
    ent = M.entropy_from_logits(logits)
    for b in range(2):
        for t in range(3):
            z = [math.exp(v) for v in logits[b, t].tolist()]
            s = sum(z)
            p = [v / s for v in z]
            assert lp[b, t].item() == pytest.approx(math.log(p[labels[b, t]]), abs=1e-5)
            assert ent[b, t].item() == pytest.approx(-sum(q * math.log(q) for q in p), abs=1e-5)
    uniform = M.entropy_from_logits(torch.zeros(1, 1, 8))
    assert uniform.item() == pytest.approx(math.log(8), abs=1e-6)


# ---------------------------------------------------------------- preference losses


def test_bradley_terry_values_and_gradient_direction():
    rc, rr = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])
    loss = M.bradley_terry_loss(rc, rr)
    assert loss[0].item() == pytest.approx(-math.log(1 / (1 + math.exp(-1))), abs=1e-6)
    assert loss[1].item() == pytest.approx(math.log(2), abs=1e-6)
    m = M.bradley_terry_loss(rc, rr, margin=torch.tensor([1.0, 0.0]))
    assert m[0].item() == pytest.approx(math.log(2), abs=1e-6)  # a margin equal to the gap leaves 0.5
    # Raising the chosen reward lowers the loss; raising the rejected one raises it.
    rc = torch.tensor([0.3], requires_grad=True)
    rr = torch.tensor([0.1], requires_grad=True)
    M.bradley_terry_loss(rc, rr).sum().backward()
    assert rc.grad.item() < 0 < rr.grad.item()


def _dpo_reference(pc, pr, rc, rr, beta, kind, eps):
    h = (pc - rc) - (pr - rr)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    if kind == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    if kind == "hinge":
        return max(0.0, 1 - beta * h)
    if kind == "robust":
        return (-(1 - eps) * math.log(sig(beta * h)) + eps * math.log(sig(-beta * h))) / (1 - 2 * eps)
    return -(1 - eps) * math.log(sig(beta * h)) - eps * math.log(sig(-beta * h))


@pytest.mark.parametrize("kind,eps", [("sigmoid", 0.0), ("sigmoid", 0.1), ("ipo", 0.0), ("hinge", 0.0),
                                      ("robust", 0.0), ("robust", 0.2)])
def test_dpo_losses_match_formulas(kind, eps):
    """hinge and robust as TRL computes them (huggingface/trl at f2cd577, 1.10.0.dev0, trl/trainer/dpo_trainer.py
    lines 1437-1438: relu(1 - beta * delta_score); lines 1475-1478: (-(1 - ε) logσ(β delta) + ε logσ(-β delta)) /
    (1 - 2ε), delta_score being h with the default reverse-KL divergence)."""
    pc, pr, rc, rr = (torch.randn(4) for _ in range(4))
    losses, cr, rj = M.dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type=kind, label_smoothing=eps)
    for i in range(4):
        ref = _dpo_reference(pc[i].item(), pr[i].item(), rc[i].item(), rr[i].item(), 0.5, kind, eps)
        assert losses[i].item() == pytest.approx(ref, abs=1e-5)
    assert torch.allclose(cr, 0.5 * (pc - rc)) and torch.allclose(rj, 0.5 * (pr - rr))


def test_dpo_gradient_raises_chosen_lowers_rejected():
    pc = torch.tensor([-5.0], requires_grad=True)
    pr = torch.tensor([-5.0], requires_grad=True)
    losses, _, _ = M.dpo_loss(pc, pr, torch.tensor([-5.0]), torch.tensor([-5.0]), beta=0.1)
    losses.sum().backward()
    assert pc.grad.item() < 0 < pr.grad.item()
    with pytest.raises(ValueError, match="unknown DPO loss_type"):
        M.dpo_loss(pc, pr, pc, pr, beta=0.1, loss_type="kto")


# ---------------------------------------------------------------- KL


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    d = [0.5, -1.0]  # log π - log π_ref
    assert M.kl_estimate(logp, ref, "k1").tolist()[0] == pytest.approx(d)
    assert M.kl_estimate(logp, ref, "k2").tolist()[0] == pytest.approx([0.5 * v * v for v in d])
    assert M.kl_estimate(logp, ref, "k3").tolist()[0] == pytest.approx([math.exp(-v) - 1 + v for v in d])
    with pytest.raises(ValueError):
        M.kl_estimate(logp, ref, "k4")


def test_kl_estimators_are_unbiased_where_claimed():
    # Sample from p, estimate KL(p || q) for two categoricals: k1 and k3 are unbiased, k3 >= 0 always.
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.4, 0.4])
    true_kl = (p * (p / q).log()).sum().item()
    x = torch.multinomial(p, 200_000, replacement=True, generator=g)
    logp, logq = p.log()[x][None], q.log()[x][None]
    for est in ("k1", "k3"):
        assert M.kl_estimate(logp, logq, est).mean().item() == pytest.approx(true_kl, abs=5e-3)
    assert (M.kl_estimate(logp, logq, "k3") >= 0).all()


def test_kl_shaped_rewards_put_score_on_last_token():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    mask = _mask([3, 2], 3)
    r = M.kl_shaped_rewards(torch.tensor([1.0, 2.0]), kl, mask, kl_coef=0.5)
    expected = [[-0.05, -0.1, -0.15 + 1.0], [-0.2, -0.25 + 2.0, 0.0]]
    assert r.tolist() == [pytest.approx(row) for row in expected]


def test_fixed_and_adaptive_kl_controllers():
    assert M.FixedKLController(0.1).update(5.0, 100) == 0.1
    c = M.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    # KL far above target: error clipped to +0.2 -> β · (1 + 0.2 · 256 / 10000)
    assert c.update(100.0, 256) == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000))
    c = M.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert c.update(3.0, 100) == pytest.approx(0.1 * (1 - 0.2 * 100 / 10000))  # error -0.5 clipped to -0.2
    c = M.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert c.update(6.6, 100) == pytest.approx(0.1 * (1 + 0.1 * 100 / 10000))


# ---------------------------------------------------------------- advantages


def _gae_loop(rewards, values, length, gamma, lam):
    adv = [0.0] * len(rewards)
    last = 0.0
    for t in reversed(range(length)):
        next_v = values[t + 1] if t + 1 < length else 0.0
        delta = rewards[t] + gamma * next_v - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv, [a + v if t < length else 0.0 for t, (a, v) in enumerate(zip(adv, values))]


def test_gae_matches_plain_loop():
    B, T = 4, 6
    rewards, values = torch.randn(B, T), torch.randn(B, T)
    lengths = [6, 3, 1, 5]
    mask = _mask(lengths, T)
    adv, ret = M.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    for b in range(B):
        a_ref, r_ref = _gae_loop(rewards[b].tolist(), values[b].tolist(), lengths[b], 0.9, 0.8)
        assert adv[b].tolist() == pytest.approx(a_ref, abs=1e-5)
        assert ret[b].tolist() == pytest.approx(r_ref, abs=1e-5)


def test_gae_lambda_one_gamma_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.2, 0.4, 0.6]])
    adv, ret = M.gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    assert ret.tolist()[0] == pytest.approx([1.0, 1.0, 1.0])
    assert adv.tolist()[0] == pytest.approx([0.8, 0.6, 0.4])


def test_group_advantages_grpo_and_rloo():
    scores = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 6.0])
    adv = M.group_advantages(scores, group_size=3)
    for g in range(2):
        s = scores[3 * g : 3 * g + 3].tolist()
        mu = sum(s) / 3
        sd = math.sqrt(sum((v - mu) ** 2 for v in s) / 2)
        assert adv[3 * g : 3 * g + 3].tolist() == pytest.approx([(v - mu) / (sd + 1e-6) for v in s], abs=1e-5)
    assert M.group_advantages(scores, 3, "none").tolist() == pytest.approx([-1, 0, 1, -2, -2, 4])
    loo = M.rloo_advantages(scores, group_size=3)
    assert loo.tolist() == pytest.approx([1 - 2.5, 2 - 2.0, 3 - 1.5, 0 - 3, 0 - 3, 6 - 0])
    with pytest.raises(ValueError):
        M.rloo_advantages(scores, group_size=1)


# ---------------------------------------------------------------- PPO losses


def test_ppo_policy_loss_matches_loop_and_clips():
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1, 3.0]]))
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    loss, clipped = M.ppo_policy_loss(new, old, adv, clip_eps=0.2)
    ref = []
    for rho, a in zip([1.5, 0.5, 1.1, 3.0], [1.0, -1.0, 1.0, -1.0]):
        ref.append(max(-a * rho, -a * min(max(rho, 0.8), 1.2)))
    assert loss.tolist()[0] == pytest.approx(ref, abs=1e-6)
    assert clipped.tolist()[0] == [True, True, False, False]
    # Dual clip caps the negative-advantage loss at c·|A|: ratio 3 with A=-1 gives 3 -> capped at 2.
    loss_dc, _ = M.ppo_policy_loss(new, old, adv, clip_eps=0.2, dual_clip=2.0)
    assert loss_dc.tolist()[0] == pytest.approx(ref[:3] + [2.0], abs=1e-6)


def test_ppo_gradient_pushes_toward_positive_advantage():
    old = torch.zeros(2)
    new = torch.zeros(2, requires_grad=True)
    loss, _ = M.ppo_policy_loss(new, old, torch.tensor([1.0, -1.0]), clip_eps=0.2)
    loss.sum().backward()
    assert new.grad[0] < 0 < new.grad[1]  # descent raises log π of the good token, lowers the bad one


def test_value_loss_clipping():
    v, old, ret = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]), torch.tensor([2.0, 0.5])
    plain = M.value_loss(v, old, ret, clip_eps=None)
    assert plain.tolist() == pytest.approx([0.5 * 1.0, 0.5 * 0.25])
    clipped = M.value_loss(v, old, ret, clip_eps=0.2)
    # first: clipped value 0.2 -> (0.2-2)² = 3.24 > 1 -> 1.62
    assert clipped.tolist() == pytest.approx([0.5 * 3.24, 0.5 * 0.25])


# ---------------------------------------------------------------- the micro-batch invariant


@pytest.mark.parametrize("splits", [[8], [4, 4], [1, 3, 4], [1] * 8])
def test_token_weighted_loss_is_invariant_to_micro_batching(splits):
    """Summing micro-batch losses normalised by the global token count equals the full-batch loss, and so do
    the gradients: what lets learners split a batch across ranks and accumulation steps."""
    g = torch.Generator().manual_seed(1)
    B, T = 8, 5
    logits_param = torch.randn(B, T, requires_grad=True, generator=g)
    old, adv = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    mask = _mask([5, 1, 3, 4, 2, 5, 1, 3], T)
    n_tokens = mask.sum()

    full_loss, _ = M.ppo_policy_loss(logits_param, old, adv, 0.2)
    full = M.token_mean(full_loss, mask)
    (full_grad,) = torch.autograd.grad(full, logits_param)

    total, start = 0.0, 0
    grad = torch.zeros_like(logits_param)
    for size in splits:
        sl = slice(start, start + size)
        part, _ = M.ppo_policy_loss(logits_param[sl], old[sl], adv[sl], 0.2)
        loss = M.token_mean(part, mask[sl], num_tokens=n_tokens)
        (g_part,) = torch.autograd.grad(loss, logits_param)
        grad += g_part
        total += loss.item()
        start += size
    assert total == pytest.approx(full.item(), abs=1e-6)
    assert torch.allclose(grad, full_grad, atol=1e-7)
    # The naive per-micro-batch mean differs whenever lengths differ: the test can fail.
    if len(splits) > 1:
        naive = sum(M.token_mean(M.ppo_policy_loss(logits_param[s:s + n], old[s:s + n], adv[s:s + n], 0.2)[0],
                                 mask[s:s + n]).item() / len(splits)
                    for s, n in zip([sum(splits[:i]) for i in range(len(splits))], splits))
        assert naive != pytest.approx(full.item(), abs=1e-4)


def test_last_token_index():
    mask = _mask([3, 1, 0], 4)
    assert M.last_token_index(mask).tolist() == [2, 0, 0]
    left_and_right = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 0, 0]])
    assert M.last_token_index(left_and_right).tolist() == [1, 3, 3, 1]


# ---------------------------------------------------------------- loss aggregation (ppo.loss_agg)


def _agg_loop(loss, lengths, mode, max_len):
    """The three aggregations as written in the papers, one plain Python loop each (rows with no tokens left out)."""
    rows = [[loss[b][t] for t in range(n)] for b, n in enumerate(lengths) if n]
    if mode == "token-mean":
        return sum(sum(r) for r in rows) / sum(len(r) for r in rows)
    if mode == "seq-mean-token-mean":
        return sum(sum(r) / len(r) for r in rows) / len(rows)
    return sum(sum(r) / max_len for r in rows) / len(rows)  # Dr. GRPO: a constant L, not |o_i|


@pytest.mark.parametrize("mode", M.LOSS_AGGS)
def test_loss_aggregations_match_plain_loops(mode):
    lengths, T, L = [5, 1, 0, 3], 5, 8
    loss, mask = torch.randn(4, T), _mask(lengths, T)
    got = M.aggregate(loss, mask, mode, norm_len=L)
    assert got.item() == pytest.approx(_agg_loop(loss.tolist(), lengths, mode, L), abs=1e-6)
    assert M.aggregate_count(mask, mode) == (9.0 if mode == "token-mean" else 3.0)  # the empty row counts nothing


def test_loss_aggregations_differ_and_refuse_what_they_cannot_do():
    loss, mask = torch.arange(6.0).view(2, 3), _mask([3, 1], 3)
    means = {m: M.aggregate(loss, mask, m, norm_len=4).item() for m in M.LOSS_AGGS}
    # token mean (0+1+2+3)/4; mean of the row means (1 + 3)/2; Dr. GRPO (3/4 + 3/4)/2
    assert means == pytest.approx({"token-mean": 1.5, "seq-mean-token-mean": 2.0, "seq-mean-token-sum-norm": 0.75})
    with pytest.raises(ValueError, match="needs norm_len"):
        M.aggregate(loss, mask, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="unknown loss aggregation 'sum'"):
        M.aggregate(loss, mask, "sum")
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        M.aggregate_count(mask, "sum")


@pytest.mark.parametrize("mode", M.LOSS_AGGS)
@pytest.mark.parametrize("ranks", [[[8]], [[4, 4]], [[1, 3], [2, 2]], [[2, 2], [2, 2]]],
                         ids=["whole", "2-micro", "2-ranks-uneven", "2-ranks-2-micro"])
def test_every_loss_aggregation_is_exact_under_micro_batches_and_ranks(mode, ranks):
    """What `ds_engine.train_step` does: n_global is the sum of every rank's micro-batch counts (all-reduced), each
    micro-batch's loss is its share, and the shares' losses and gradients sum to the whole batch's."""
    g = torch.Generator().manual_seed(2)
    B, T, L = 8, 5, 6
    logp = torch.randn(B, T, requires_grad=True, generator=g)
    old, adv = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    mask = _mask([5, 1, 3, 4, 2, 5, 0, 3], T)

    def per_token(sl):
        return M.ppo_policy_loss(logp[sl], old[sl], adv[sl], 0.2)[0]

    full = M.aggregate(per_token(slice(None)), mask, mode, norm_len=L)
    (full_grad,) = torch.autograd.grad(full, logp)
    bounds, start = [], 0
    for rank in ranks:
        for size in rank:
            bounds.append(slice(start, start + size))
            start += size
    n_global = sum(M.aggregate_count(mask[sl], mode) for sl in bounds)  # the all-reduce
    shares = [M.aggregate(per_token(sl), mask[sl], mode, n_global, L) for sl in bounds]
    grad = sum(torch.autograd.grad(s, logp)[0] for s in shares)
    assert sum(s.item() for s in shares) == pytest.approx(full.item(), abs=1e-6)
    assert torch.allclose(grad, full_grad, atol=1e-7)
    if len(bounds) > 1 and mode != "seq-mean-token-sum-norm":  # each part normalised on its own: not the same
        naive = sum(M.aggregate(per_token(sl), mask[sl], mode, norm_len=L).item() for sl in bounds) / len(bounds)
        assert naive != pytest.approx(full.item(), abs=1e-4)


# ---------------------------------------------------------------- numerical guards


def test_k3_and_the_ppo_ratio_are_clamped_as_verl_and_openrlhf_do():
    logp = torch.tensor([[-16.0, -100.0, -1.0]], requires_grad=True)
    ref = torch.tensor([[-1.0, -1.0, -1.2]])  # log-ratios -15, -99, 0.2
    k3 = M.kl_estimate(logp, ref, "k3")
    assert k3[0, :2].tolist() == [M.K3_CLAMP, M.K3_CLAMP]  # unclamped: 3.3e6 and inf
    assert k3[0, 2].item() == pytest.approx(math.exp(-0.2) - 1 + 0.2, abs=1e-7)  # untouched where it is sane
    (g,) = torch.autograd.grad(k3.sum(), logp)
    assert torch.isfinite(g).all() and g[0, :2].tolist() == [0.0, 0.0]  # no inf·0 = NaN through the clamp
    # The PPO ratio: log ρ = 99 would be inf (then NaN in the loss for A = 0); clamped at e^20, finite.
    new = torch.tensor([0.0, 0.0], requires_grad=True)
    loss, _ = M.ppo_policy_loss(new, torch.tensor([-99.0, -0.1]), torch.tensor([-1.0, 1.0]), 0.2)
    assert loss[0].item() == pytest.approx(math.exp(M.LOG_RATIO_CLAMP), rel=1e-6)
    (g,) = torch.autograd.grad(loss.sum(), new)
    assert torch.isfinite(g).all() and g[0].item() == 0.0


def test_low_var_kl_is_verls_name_for_the_clamped_k3():
    """veRL's `low_var_kl` (volcengine/verl at b178a3c, verl/trainer/ppo/core_algos.py lines 1890-1895:
    kl = ref - logp clamped to ±20, then clamp(exp(kl) - kl - 1, -10, 10)), written out here, against ours."""
    logp = torch.tensor([[-16.0, -100.0, -1.0, -3.0, -0.5]])
    ref = torch.tensor([[-1.0, -1.0, -1.2, 30.0, -0.7]])
    kl = (ref - logp).clamp(-20, 20)
    verl = (torch.exp(kl) - kl - 1).clamp(-10, 10)
    assert torch.allclose(M.kl_estimate(logp, ref, "low_var_kl"), verl, atol=1e-6)
    assert torch.equal(M.kl_estimate(logp, ref, "low_var_kl"), M.kl_estimate(logp, ref, "k3"))


def test_clip_higher_moves_only_the_upper_bound_as_verl_and_trl_do():
    """DAPO's clip-higher as veRL computes it (volcengine/verl at b178a3c, verl/trainer/ppo/core_algos.py lines
    1134-1145: max(-A·ρ, -A·clamp(ρ, 1 - cliprange_low, 1 + cliprange_high))) and TRL (huggingface/trl at f2cd577,
    trl/trainer/grpo_trainer.py line 3084: clamp(ρ, 1 - epsilon_low, 1 + epsilon_high)), written out here."""
    old = torch.zeros(6)
    new = torch.log(torch.tensor([0.5, 0.85, 1.1, 1.25, 1.4, 2.0]))
    adv = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0, 1.0])
    ratio = torch.exp(new - old)
    want = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - 0.2, 1 + 0.28))
    loss, clipped = M.ppo_policy_loss(new, old, adv, 0.2, clip_eps_high=0.28)
    assert torch.allclose(loss, want)
    assert clipped.tolist() == [False, False, False, False, False, True]  # 1.25 is inside 1.28 now, 2.0 is not
    same, _ = M.ppo_policy_loss(new, old, adv, 0.2)
    assert torch.equal(M.ppo_policy_loss(new, old, adv, 0.2, clip_eps_high=0.2)[0], same)
    assert same[3].item() == pytest.approx(-1.2)  # ε alone clips the A > 0 token at 1.2


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_scale_rewards_as_trl_scales_them(scale):
    """TRL's GRPO advantages (huggingface/trl at f2cd577, trl/trainer/grpo_trainer.py lines 2684-2707: r minus the
    group mean, divided by the group's std (`group`), the batch's (`batch`) or nothing (`none`), + 1e-4), written
    out here; ours adds 1e-6, so the test gives both the same eps."""
    scores, G = torch.tensor([1.0, 2.0, 4.0, 0.0, 0.5, 3.0, 2.0, 2.0, 2.0]), 3
    mean = scores.view(-1, G).mean(1).repeat_interleave(G)
    std = scores.view(-1, G).std(1).repeat_interleave(G) if scale == "group" else scores.std().expand(9)
    trl = scores - mean if scale == "none" else (scores - mean) / (std + 1e-4)
    assert torch.allclose(M.group_advantages(scores, G, scale, eps=1e-4), trl, atol=1e-6)
    assert M.group_advantages(scores, G, scale)[6:].tolist() == [0.0, 0.0, 0.0]  # equal rewards: no signal
