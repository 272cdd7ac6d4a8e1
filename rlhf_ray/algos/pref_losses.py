"""Preference losses as `forward.Loss` objects: Bradley-Terry for reward models, DPO/IPO for policies.

Micro-batch layouts are `rlhf_ray.algos.batching.pair_batch` (reward model) and `batching.dpo_batch` (DPO). Chosen and
rejected halves are stacked into one (2B, ·) forward, rows [:B] chosen. Losses and metrics are sums over pairs
divided by the *global* pair count, so micro-batches and ranks add up to the full-batch values (the same
invariant as `ppo_losses`). Coefficients are bound with functools.partial, so the Loss pickles into the actors.
"""

from __future__ import annotations

from functools import partial

import torch

from rlhf_ray.algos import forward, rl_math
from rlhf_ray.algos.batching import stack_pair


def pairs(mb: forward.Batch) -> float:
    return float(mb["chosen_input_ids"].shape[0])


def _share(x: torch.Tensor, n_global: float) -> float:
    return float(x.detach().float().sum() / n_global)


def reward_loss(model, mb: forward.Batch, n_global: float, use_margin: bool
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """-log σ(r_c - r_r [- m]) per pair; metrics: accuracy (r_c > r_r) and margin (r_c - r_r)."""
    x = stack_pair(mb, ("input_ids", "attention_mask"))
    r = forward.sequence_rewards(model, x["input_ids"], x["attention_mask"])  # (2B,)
    B = r.shape[0] // 2
    r_c, r_r = r[:B], r[B:]
    losses = rl_math.bradley_terry_loss(r_c, r_r, mb["margin"] if use_margin else None)
    return losses.sum() / n_global, {"accuracy": _share(r_c > r_r, n_global), "margin": _share(r_c - r_r, n_global)}


def response_logps(model, mb: forward.Batch) -> torch.Tensor:
    """Summed log π of each response, chosen rows then rejected: (2B,)."""
    x = stack_pair(mb, ("input_ids", "attention_mask", "response_mask"))
    T = x["response_mask"].shape[1]
    logp = forward.logprobs(model, x["input_ids"], x["attention_mask"], T)  # (2B, T)
    return rl_math.masked_sum(logp, x["response_mask"], dim=1)


def dpo_loss(model, mb: forward.Batch, n_global: float, beta: float, loss_type: str, label_smoothing: float
             ) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO / IPO / conservative DPO (`rl_math.dpo_loss`) against the reference log-probs in the batch.

    accuracy: implicit reward r_c > r_r (r = β log π/π_ref; TRL's "rewards/accuracies"); policy_accuracy: the
    policy itself gives the chosen response the higher likelihood, log π(y_c) > log π(y_r), which is also
    meaningful before any training (when the implicit rewards are all ~0)."""
    logps = response_logps(model, mb)
    B = logps.shape[0] // 2
    pi_c, pi_r = logps[:B], logps[B:]
    losses, rw_c, rw_r = rl_math.dpo_loss(pi_c, pi_r, mb["ref_chosen_logps"], mb["ref_rejected_logps"], beta,
                                          loss_type, label_smoothing)
    metrics = {"accuracy": _share(rw_c > rw_r, n_global), "reward_margin": _share(rw_c - rw_r, n_global),
               "chosen_rewards": _share(rw_c, n_global), "rejected_rewards": _share(rw_r, n_global),
               "chosen_logps": _share(pi_c, n_global), "rejected_logps": _share(pi_r, n_global),
               "policy_accuracy": _share(pi_c > pi_r, n_global)}
    return losses.sum() / n_global, metrics


def make_reward_loss(use_margin: bool) -> forward.Loss:
    return forward.Loss(partial(reward_loss, use_margin=use_margin), pairs)


def make_dpo_loss(beta: float, loss_type: str, label_smoothing: float) -> forward.Loss:
    return forward.Loss(partial(dpo_loss, beta=beta, loss_type=loss_type, label_smoothing=label_smoothing), pairs)
