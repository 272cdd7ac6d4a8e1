"""From scored rollouts to PPO experience: rewards, KL, advantages. Pure torch, no Ray.

Shapes: B rollouts, T response tokens, layout of `rollout.RolloutBatch` (response token t at column P + t).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from rlhf_ray.algos import rl_math

Tensor = torch.Tensor


@dataclass
class Scores:
    """What the scorers returned for B rollouts."""

    task: Tensor  # (B,) summed task reward (reward model and functions, weighted)
    ref_logprobs: Optional[Tensor]  # (B, T) log π_ref of each response token; None without a reference
    old_logprobs: Tensor  # (B, T) log π_θold (the policy learner, before this step's update)
    values: Optional[Tensor]  # (B, T) V(s_t) from the critic, None for critic-free estimators
    ended: Tensor  # (B,) bool: the response ended with EOS


def shape_task_reward(task: Tensor, ended: Tensor, clip: Optional[float], no_eos_penalty: Optional[float],
                      normalize: bool) -> Tensor:
    """Task reward after the no-EOS penalty (replaces the score of cut-off responses), clipping and whitening."""
    r = task.float().clone()
    if no_eos_penalty is not None:
        r = torch.where(ended, r, torch.full_like(r, no_eos_penalty))
    if clip is not None:
        r = r.clamp(-clip, clip)
    if normalize and r.numel() > 1:
        r = (r - r.mean()) / (r.std() + 1e-8)
    return r


def advantages(estimator: str, reward: Tensor, kl: Tensor, mask: Tensor, kl_coef: float, kl_in_reward: bool,
               values: Optional[Tensor], gamma: float, lam: float, group_size: int) -> tuple[Tensor, Tensor]:
    """(advantages (B, T), returns (B, T)); advantages whitened over the batch's response tokens.

    gae: per-token rewards -β·KL (when the KL is in the reward) plus the task reward at the last token, then GAE
    with the critic's values. reinforce++: the return-to-go of those rewards, whitened over the batch. grpo / rloo: a sequence-level advantage from the group of samples of one prompt,
    minus β·(summed KL) when the KL is in the reward, spread over the response tokens; returns are unused."""
    coef = kl_coef if kl_in_reward else 0.0
    if estimator == "gae":
        if values is None:
            raise ValueError("advantage 'gae' needs critic values")
        token_rewards = rl_math.kl_shaped_rewards(reward, kl, mask, coef)
        adv, ret = rl_math.gae(token_rewards, values, mask, gamma, lam)
        return rl_math.masked_whiten(adv, mask) * mask, ret
    if estimator == "reinforce++":
        # REINFORCE++ (Hu 2025): the return-to-go of the KL-shaped token rewards, no critic, whitened over the
        # whole batch (not per group).
        token_rewards = rl_math.kl_shaped_rewards(reward, kl, mask, coef)
        ret, _ = rl_math.gae(token_rewards, torch.zeros_like(token_rewards), mask, gamma, 1.0)
        return rl_math.masked_whiten(ret, mask) * mask, ret
    seq_reward = reward - coef * rl_math.masked_sum(kl, mask, dim=1)
    if estimator == "grpo":
        seq_adv = rl_math.group_advantages(seq_reward, group_size)
    elif estimator == "rloo":
        seq_adv = rl_math.rloo_advantages(seq_reward, group_size)
    else:
        raise ValueError(f"unknown advantage estimator {estimator!r}; choose gae, grpo, rloo or reinforce++")
    adv = seq_adv[:, None] * mask
    return adv, adv.clone()
