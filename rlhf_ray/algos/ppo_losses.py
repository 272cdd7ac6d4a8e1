"""PPO losses as `forward.Loss` objects for the policy and critic learners.

Micro-batch keys (all (B, ·) tensors in the `rollout.RolloutBatch` layout): input_ids, attention_mask (B, P+T);
response_mask, old_logprobs, advantages, is_weights (B, T) for the policy, plus ref_logprobs when the KL is a loss
term; response_mask, old_values, returns (B, T) for the critic. The policy loss is reduced by `rl_math.aggregate`
(ppo.loss_agg), the value loss is a token mean, each over the *global* batch's count (the invariant that makes
micro-batching and ranks exact). Coefficients are bound with functools.partial, so the Loss pickles into the
learner actors.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import torch

from rlhf_ray.algos import forward, rl_math


def response_tokens(mb: forward.Batch) -> float:
    return float(mb["response_mask"].sum())


def response_count(mb: forward.Batch, loss_agg: str) -> float:
    """The micro-batch's part of the policy loss's n_global: tokens or sequences (`rl_math.aggregate_count`)."""
    return rl_math.aggregate_count(mb["response_mask"], loss_agg)


def policy_loss(model, mb: forward.Batch, n_global: float, clip_eps: float, dual_clip: Optional[float],
                entropy_coef: float, kl_coef: float, kl_estimator: str, on_policy: bool = False,
                temperature: float = 1.0, loss_agg: str = "token-mean", max_response_len: Optional[int] = None,
                clip_eps_high: Optional[float] = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate on the proximal policy π_θold, each token weighted by its truncated importance weight
    π_θold/μ against the behaviour policy μ that sampled it (1 for on-policy samples); minus the entropy bonus;
    plus β·KL(π || π_ref) when the KL is a loss term (kl_coef > 0 here). π, its entropy and its KL are those of the
    logits divided by the sampling `temperature` (the distribution the generators sampled from).

    loss_agg: how the per-token terms become the loss (`rl_math.aggregate`; max_response_len is Dr. GRPO's
    constant L). The `policy_loss` metric is aggregated the same way; clip_frac, entropy, approx_kl and
    logprob_gap stay means (over tokens, or per sequence then over sequences in the seq-mean modes, whose n_global
    counts sequences), so they read the same under every mode.

    on_policy: this is the only update on a batch sampled by the current weights, so π_θold is the model being
    trained and its log-probs are this forward's, detached (the ratio is 1, the gradient that of the surrogate);
    mb["old_logprobs"] then holds the generator's log-probs μ, and their gap to the learner's is reported."""
    mask = mb["response_mask"]
    T = mask.shape[1]

    def agg(x: torch.Tensor) -> torch.Tensor:
        return rl_math.aggregate(x, mask, loss_agg, n_global, max_response_len)

    def mean(x: torch.Tensor) -> float:
        return rl_math.aggregate(x, mask, "token-mean" if loss_agg == "token-mean" else "seq-mean-token-mean",
                                 n_global).item()

    logits = forward.response_logits(model, mb["input_ids"], mb["attention_mask"], T, temperature)
    logp = rl_math.logprobs_from_logits(logits, mb["input_ids"][:, -T:])
    old = logp.detach() if on_policy else mb["old_logprobs"]
    pg, clipped = rl_math.ppo_policy_loss(logp, old, mb["advantages"], clip_eps, dual_clip, clip_eps_high)
    per_token = pg * mb["is_weights"]
    if entropy_coef:
        entropy = rl_math.entropy_from_logits(logits)
        per_token = per_token - entropy_coef * entropy
    else:  # reported only: out of the graph (a full-vocabulary softmax backward per token saved)
        with torch.no_grad():
            entropy = rl_math.entropy_from_logits(logits)
    if kl_coef:
        per_token = per_token + kl_coef * rl_math.kl_estimate(logp, mb["ref_logprobs"], kl_estimator)
    loss = agg(per_token)
    with torch.no_grad():
        metrics = {
            "policy_loss": agg(pg).item(),
            "clip_frac": mean(clipped.float()),
            "entropy": mean(entropy),
            "approx_kl": mean(0.5 * (logp - old) ** 2),
        }
        if on_policy:
            metrics["logprob_gap"] = mean((logp - mb["old_logprobs"]).abs())
    return loss, metrics


def value_loss(model, mb: forward.Batch, n_global: float, clip_eps: Optional[float]
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value loss on the critic's V(s_t) for each response token, a token mean (the critic has an
    optimizer and a learning rate of its own, ppo.critic_lr: no weight against the policy loss)."""
    mask = mb["response_mask"]
    values = forward.values(model, mb["input_ids"], mb["attention_mask"], mask.shape[1])
    loss = rl_math.token_mean(rl_math.value_loss(values, mb["old_values"], mb["returns"], clip_eps), mask, n_global)
    return loss, {"value_loss": loss.item()}


def make_policy_loss(clip_eps: float, dual_clip: Optional[float], entropy_coef: float, kl_coef: float,
                     kl_estimator: str, on_policy: bool = False, temperature: float = 1.0,
                     loss_agg: str = "token-mean", max_response_len: Optional[int] = None,
                     clip_eps_high: Optional[float] = None) -> forward.Loss:
    if loss_agg not in rl_math.LOSS_AGGS:
        raise ValueError(f"unknown loss aggregation {loss_agg!r}; choose {', '.join(rl_math.LOSS_AGGS)}")
    fn = partial(policy_loss, clip_eps=clip_eps, dual_clip=dual_clip, entropy_coef=entropy_coef, kl_coef=kl_coef,
                 kl_estimator=kl_estimator, on_policy=on_policy, temperature=temperature, loss_agg=loss_agg,
                 max_response_len=max_response_len, clip_eps_high=clip_eps_high)
    return forward.Loss(fn, partial(response_count, loss_agg=loss_agg))


def make_value_loss(clip_eps: Optional[float]) -> forward.Loss:
    return forward.Loss(partial(value_loss, clip_eps=clip_eps), response_tokens)
