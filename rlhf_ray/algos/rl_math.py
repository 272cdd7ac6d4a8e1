"""The RL math of RLHF, as pure torch functions: no Ray, no models, coefficients as arguments.

Shapes: B = sequences, T = response tokens (left-aligned: token t of every row is response token t; `mask` marks
real tokens). Per-token losses are returned unreduced together with `masked_sum`/`token_mean` so that a loss
summed over micro-batches and divided by the *global* token count equals the loss of the whole batch — the
invariant that lets learners split a batch across ranks and micro-batches without changing the gradient.

Names follow the papers: Bradley-Terry (Christiano et al. 2017; Ouyang et al. 2022), DPO (Rafailov et al. 2023),
IPO (Azar et al. 2023), conservative DPO (Mitchell 2023), GAE (Schulman et al. 2016), PPO (Schulman et al. 2017),
dual-clip PPO (Ye et al. 2020), KL estimators k1/k2/k3 (Schulman 2020), adaptive KL (Ziegler et al. 2019),
GRPO (Shao et al. 2024), RLOO (Ahmadian et al. 2024), Dr. GRPO (Liu et al. 2025).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

# Numerical guards, the values verl and OpenRLHF use. A log-ratio past ±20 is a token the two policies disagree on
# by a factor of e^20: exp() of it overflows float32 near 88 and its gradient has long stopped meaning anything.
LOG_RATIO_CLAMP = 20.0  # |log π - log π_other| before exp(): the PPO ratio, k3's π_ref/π
K3_CLAMP = 10.0  # k3 per token: at log-ratio -15 it is 3.3e6, one token would outweigh the batch's reward

LOSS_AGGS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


# ---------------------------------------------------------------- masked reductions


def masked_sum(x: Tensor, mask: Tensor, dim: Optional[int] = None) -> Tensor:
    """Sum of `x` where `mask` is true. x, mask: same shape."""
    x = x * mask
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: Optional[int] = None) -> Tensor:
    """Mean of `x` over masked-in entries (0 where there are none)."""
    return masked_sum(x, mask, dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of the masked-in entries of `x` (a scalar)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    return var * n / (n - 1).clamp(min=1) if unbiased else var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x - mean) / std over the masked-in entries; with shift_mean=False the mean is added back."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    white = (x - mean) * torch.rsqrt(var + eps)
    return white if shift_mean else white + mean


def token_mean(loss: Tensor, mask: Tensor, num_tokens: Optional[float] = None) -> Tensor:
    """Token-weighted mean. Pass the *global* token count of the whole batch as `num_tokens` when `loss` is one
    micro-batch: then the micro-batch losses add up to the full-batch loss exactly."""
    return masked_sum(loss, mask) / (mask.sum().clamp(min=1) if num_tokens is None else num_tokens)


def aggregate(loss: Tensor, mask: Tensor, mode: str, n_global: Optional[float] = None,
              norm_len: Optional[float] = None) -> Tensor:
    """A per-token loss (B, T) reduced to the scalar the optimizer sees; exact under micro-batching when
    `n_global` is the global batch's `aggregate_count` (then the micro-batch values add up to the full batch's).

    token-mean:              Σ_i Σ_t l_it / Σ_i |o_i|   (every token weighs the same; DAPO, OpenRLHF, TRL)
    seq-mean-token-mean:     1/N Σ_i (1/|o_i|) Σ_t l_it (every sequence weighs the same; GRPO as published)
    seq-mean-token-sum-norm: 1/N Σ_i Σ_t l_it / L      (Dr. GRPO: L a constant, the longest response allowed,
                                                         so a sequence's weight does not depend on its length)
    N counts the sequences with at least one token; `norm_len` is L (seq-mean-token-sum-norm only)."""
    if mode == "token-mean":
        return token_mean(loss, mask, n_global)
    n_seq = aggregate_count(mask, mode) if n_global is None else n_global
    n_seq = max(float(n_seq), 1.0)
    if mode == "seq-mean-token-mean":
        return masked_mean(loss, mask, dim=1).sum() / n_seq  # an empty row's mean is 0: it adds nothing
    if mode == "seq-mean-token-sum-norm":
        if not norm_len or norm_len <= 0:
            raise ValueError(f"seq-mean-token-sum-norm needs norm_len > 0 (the longest response), got {norm_len}")
        return masked_sum(loss, mask) / (n_seq * norm_len)
    raise ValueError(f"unknown loss aggregation {mode!r}; choose {', '.join(LOSS_AGGS)}")


def aggregate_count(mask: Tensor, mode: str) -> float:
    """This micro-batch's part of `aggregate`'s n_global: its tokens (token-mean), or its sequences with at least
    one token (the seq-mean modes)."""
    if mode == "token-mean":
        return float(mask.sum())
    if mode in LOSS_AGGS:
        return float((mask.sum(-1) > 0).sum())
    raise ValueError(f"unknown loss aggregation {mode!r}; choose {', '.join(LOSS_AGGS)}")


# ---------------------------------------------------------------- log-probabilities and entropy


def logprobs_from_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """log p(labels). logits (B, T, V), labels (B, T) -> (B, T)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the categorical distribution at each position. (B, T, V) -> (B, T)."""
    logits = logits.float()
    p = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (p * logits).sum(-1)


# ---------------------------------------------------------------- preference losses


def bradley_terry_loss(r_chosen: Tensor, r_rejected: Tensor, margin: Optional[Tensor] = None) -> Tensor:
    """-log σ(r_c - r_r - m), per pair. r_chosen, r_rejected, margin: (B,) -> (B,)."""
    diff = r_chosen - r_rejected
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff)


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """DPO and variants on summed response log-probs, all (B,).

    h = (log π(y_c) - log π_ref(y_c)) - (log π(y_r) - log π_ref(y_r)).
    sigmoid: -(1-ε) log σ(βh) - ε log σ(-βh)   (ε = label_smoothing: conservative DPO; ε = 0: DPO).
    ipo:     (h - 1/(2β))²                       (Azar et al. 2023, eq. 17).
    hinge:   max(0, 1 - βh)                      (SLiC, Zhao et al. 2023).
    robust:  (-(1-ε) log σ(βh) + ε log σ(-βh)) / (1 - 2ε)   (rDPO, Chowdhury et al. 2024: unbiased under labels
             flipped at rate ε; ε = 0 is DPO).
    Returns (losses (B,), chosen_rewards (B,), rejected_rewards (B,)), rewards = β · log-ratio, detached.
    """
    chosen_ratio = policy_chosen_logps - ref_chosen_logps
    rejected_ratio = policy_rejected_logps - ref_rejected_logps
    h = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = F.relu(1 - beta * h)
    elif loss_type == "robust":
        eps = label_smoothing
        losses = (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; choose sigmoid, ipo, hinge or robust")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


# ---------------------------------------------------------------- KL


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token estimate of KL(π || π_ref) from samples of π. (B, T) -> (B, T).

    With r = π_ref/π (log r = ref - logp): k1 = -log r (unbiased, high variance, can be < 0);
    k2 = (log r)²/2 (biased, low variance); k3 = (r - 1) - log r (unbiased, >= 0). k3 is guarded as verl and
    OpenRLHF guard it: log r clamped to ±LOG_RATIO_CLAMP before exp (no inf, and no inf·0 = NaN gradient), the
    estimate to at most K3_CLAMP (one token far out of the reference's support would otherwise dominate the
    batch). The cap binds where π_ref/π > 13.6 (or π/π_ref > e^11) on the sampled token, the log-ratio clamp
    only at a factor e^20. `low_var_kl` is veRL's name for this k3, clamps included.
    """
    log_ratio = logprobs.float() - ref_logprobs.float()
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator in ("k3", "low_var_kl"):
        log_ratio = log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        return (torch.expm1(-log_ratio) + log_ratio).clamp(max=K3_CLAMP)
    raise ValueError(f"unknown KL estimator {estimator!r}; choose k1, k2, k3 or low_var_kl (k3)")


def last_token_index(mask: Tensor) -> Tensor:
    """Index of the last masked-in token of each row (0 for an empty row). (B, T) -> (B,) long."""
    t = torch.arange(mask.shape[1], device=mask.device)
    return (mask.long() * (t + 1)).argmax(dim=1) if mask.shape[1] else torch.zeros(mask.shape[0], dtype=torch.long)


def kl_shaped_rewards(scores: Tensor, kl: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """Per-token reward: -β·KL at every response token, plus the task score at the last one.

    scores (B,), kl (B, T), mask (B, T) -> rewards (B, T), zero outside the mask.
    """
    rewards = -kl_coef * kl * mask
    last = last_token_index(mask)
    rows = torch.arange(scores.shape[0], device=scores.device)
    rewards[rows, last] += scores.to(rewards.dtype) * (mask.sum(1) > 0)
    return rewards


class FixedKLController:
    """β stays where it is set."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


class AdaptiveKLController:
    """Ziegler et al. 2019 (sec. 2.2): β ← β · (1 + K_β · e), e = clip(KL/target - 1, ±0.2), K_β = n / horizon."""

    def __init__(self, kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon
        return self.value


# ---------------------------------------------------------------- advantages


@torch.no_grad()
def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalized Advantage Estimation over each response; the value after the last token is 0.

    δ_t = r_t + γ V_{t+1} - V_t,  A_t = δ_t + γ λ A_{t+1},  R_t = A_t + V_t.
    rewards, values, mask: (B, T) -> advantages (B, T), returns (B, T), both zero outside the mask.
    """
    rewards, values = rewards * mask, values * mask
    next_value = torch.zeros_like(values[:, 0])
    next_adv = torch.zeros_like(values[:, 0])
    adv = torch.zeros_like(values)
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * mask[:, t]
        # Positions past the end are masked out: they pass nothing back.
        next_value = torch.where(mask[:, t].bool(), values[:, t], next_value)
        adv[:, t] = next_adv
    return adv, (adv + values) * mask


SCALES = ("group", "batch", "none")


def group_advantages(scores: Tensor, group_size: int, scale: str = "group", eps: float = 1e-6) -> Tensor:
    """GRPO: (r - mean_group) / (std + eps); groups are consecutive runs of `group_size`. (B,) -> (B,).

    scale (TRL's `scale_rewards`): `group` divides by the group's std (GRPO), `batch` by the whole batch's (more
    robust to groups of near-equal rewards: Hu et al. 2025), `none` not at all (Dr. GRPO, Liu et al. 2025: the
    std's division favours easy and hard prompts). Stds unbiased, as torch.std."""
    g = scores.float().view(-1, group_size)
    adv = g - g.mean(1, keepdim=True)
    if scale == "group":
        adv = adv / (g.std(1, keepdim=True) + eps)
    elif scale == "batch":
        adv = adv / (g.std() + eps)
    elif scale != "none":
        raise ValueError(f"unknown reward scale {scale!r}; choose {', '.join(SCALES)}")
    return adv.view(-1)


def varied_groups(scores: Tensor, group_size: int) -> Tensor:
    """(G,) True where a group's rewards are not all equal; groups are consecutive runs of `group_size`. A group of
    equal rewards has zero advantage under any group baseline: DAPO's dynamic sampling trains on the others."""
    g = scores.view(-1, group_size)
    return (g != g[:, :1]).any(1)


def rloo_advantages(scores: Tensor, group_size: int) -> Tensor:
    """RLOO: r_i minus the mean of the other k-1 rewards in its group. (B,) -> (B,)."""
    if group_size < 2:
        raise ValueError("RLOO needs a group of at least 2 samples")
    g = scores.float().view(-1, group_size)
    baseline = (g.sum(1, keepdim=True) - g) / (group_size - 1)
    return (g - baseline).view(-1)


# ---------------------------------------------------------------- PPO losses


def ppo_policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, clip_eps: float, dual_clip: Optional[float] = None,
    clip_eps_high: Optional[float] = None,
) -> tuple[Tensor, Tensor]:
    """Clipped surrogate, per token. All (B, T) -> (loss (B, T), clipped (B, T) bool).

    pg_loss = max(-A·ρ, -A·clip(ρ, 1-ε, 1+ε_high)), ρ = π/π_old, ε_high = ε unless given (DAPO's clip-higher, Yu
    et al. 2025: a larger ε_high lets low-probability tokens with A > 0 rise further). With dual clip c > 1 the
    loss of negative-advantage
    tokens is further capped at -c·A (Ye et al. 2020), so one huge ratio cannot dominate the batch. log ρ is
    clamped to ±LOG_RATIO_CLAMP before exp (verl's guard): ρ stays finite, and such a token gets no gradient.
    """
    ratio = torch.exp((logprobs - old_logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * ratio.clamp(1 - clip_eps, 1 + (clip_eps if clip_eps_high is None else clip_eps_high))
    loss = torch.max(pg_loss1, pg_loss2)
    clipped = pg_loss2 > pg_loss1
    if dual_clip is not None:
        pg_loss3 = -advantages * dual_clip
        loss = torch.where(advantages < 0, torch.min(loss, pg_loss3), loss)
    return loss, clipped


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, clip_eps: Optional[float]) -> Tensor:
    """0.5 · max((V - R)², (V_clip - R)²), V_clip = V_old + clip(V - V_old, ±ε). All (B, T) -> (B, T)."""
    loss = (values - returns) ** 2
    if clip_eps is not None:
        v_clipped = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
        loss = torch.max(loss, (v_clipped - returns) ** 2)
    return 0.5 * loss
