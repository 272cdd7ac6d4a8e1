"""PPO losses as `forward.Loss` objects for the policy and critic learners.

Micro-batch keys (all (B, ·) tensors in the `rollout.RolloutBatch` layout): input_ids, attention_mask (B, P+T);
response_mask, old_logprobs, advantages, is_weights (B, T) for the policy, plus ref_logprobs when the KL is a loss
term; response_mask, old_values, returns (B, T) for the critic. Losses are token means over the *global* token
count (the invariant that makes micro-batching and ranks exact). Coefficients are bound with functools.partial,
so the Loss pickles into the learner actors.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import torch

from rlhf_ray.algos import forward, rl_math


def response_tokens(mb: forward.Batch) -> float:
    return float(mb["response_mask"].sum())


def policy_loss(model, mb: forward.Batch, n_global: float, clip_eps: float, dual_clip: Optional[float],
                entropy_coef: float, kl_coef: float, kl_estimator: str, on_policy: bool = False
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate on the proximal policy π_θold, each token weighted by its truncated importance weight
    π_θold/μ against the behaviour policy μ that sampled it (1 for on-policy samples); minus the entropy bonus;
    plus β·KL(π || π_ref) when the KL is a loss term (kl_coef > 0 here).

    on_policy: this is the only update on a batch sampled by the current weights, so π_θold is the model being
    trained and its log-probs are this forward's, detached (the ratio is 1, the gradient that of the surrogate);
    mb["old_logprobs"] then holds the generator's log-probs μ, and their gap to the learner's is reported."""
    mask = mb["response_mask"]
    T = mask.shape[1]
    logits = forward.response_logits(model, mb["input_ids"], mb["attention_mask"], T)
    logp = rl_math.logprobs_from_logits(logits, mb["input_ids"][:, -T:])
    old = logp.detach() if on_policy else mb["old_logprobs"]
    pg, clipped = rl_math.ppo_policy_loss(logp, old, mb["advantages"], clip_eps, dual_clip)
    per_token = pg * mb["is_weights"]
    if entropy_coef:
        entropy = rl_math.entropy_from_logits(logits)
        per_token = per_token - entropy_coef * entropy
    else:  # reported only: out of the graph (a full-vocabulary softmax backward per token saved)
        with torch.no_grad():
            entropy = rl_math.entropy_from_logits(logits)
    if kl_coef:
        per_token = per_token + kl_coef * rl_math.kl_estimate(logp, mb["ref_logprobs"], kl_estimator)
    loss = rl_math.token_mean(per_token, mask, n_global)
    with torch.no_grad():
        metrics = {
            "policy_loss": rl_math.token_mean(pg, mask, n_global).item(),
            "clip_frac": rl_math.token_mean(clipped.float(), mask, n_global).item(),
            "entropy": rl_math.token_mean(entropy, mask, n_global).item(),
            "approx_kl": rl_math.token_mean(0.5 * (logp - old) ** 2, mask, n_global).item(),
        }
        if on_policy:
            metrics["logprob_gap"] = rl_math.token_mean((logp - mb["old_logprobs"]).abs(), mask, n_global).item()
    return loss, metrics


def value_loss(model, mb: forward.Batch, n_global: float, clip_eps: Optional[float]
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value loss on the critic's V(s_t) for each response token."""
    mask = mb["response_mask"]
    values = forward.values(model, mb["input_ids"], mb["attention_mask"], mask.shape[1])
    loss = rl_math.token_mean(rl_math.value_loss(values, mb["old_values"], mb["returns"], clip_eps), mask, n_global)
    return loss, {"value_loss": loss.item()}


def make_policy_loss(clip_eps: float, dual_clip: Optional[float], entropy_coef: float, kl_coef: float,
                     kl_estimator: str, on_policy: bool = False) -> forward.Loss:
    return forward.Loss(partial(policy_loss, clip_eps=clip_eps, dual_clip=dual_clip, entropy_coef=entropy_coef,
                                  kl_coef=kl_coef, kl_estimator=kl_estimator, on_policy=on_policy), response_tokens)


def make_value_loss(clip_eps: Optional[float]) -> forward.Loss:
    return forward.Loss(partial(value_loss, clip_eps=clip_eps), response_tokens)
