"""From scored rollouts to PPO experience: rewards, KL, advantages. Pure torch, no Ray.

One PPO step's data: rollouts (a pyarrow Table, padded into a `rollout.RolloutBatch`) -> `ScoredBatch` (the
scorers' and learners' answers) -> `Experience` (`make_experience`) -> learner mini-batches (`Experience.
mini_batch`, split into one shard per rank). Shapes: B rollouts, T response tokens, layout of
`rollout.RolloutBatch` (response token t at column P + t).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

import torch

from rlhf_ray.algos import rl_math

Tensor = torch.Tensor


IS_WEIGHT_CAP = 2.0  # truncation c of the behaviour importance weight min(π_θold/μ, c) (IMPALA-style)


class Rollouts(Protocol):
    """The padded tensors of B rollouts: `rollout.RolloutBatch` (a layer above this one, so named by shape)."""

    input_ids: Tensor  # (B, P + T) long: prompt left-padded to P, then the response right-padded to T
    attention_mask: Tensor  # (B, P + T) long: 1 on real tokens
    response_mask: Tensor  # (B, T) float: 1 on real response tokens
    logprobs: Tensor  # (B, T) log μ: the behaviour policy's (the generator that sampled), 0 on padding


@dataclass
class ScoredBatch:
    """B rollouts and what the scorers and learners said of them: the input of `make_experience`. Per-token
    tensors are 0 on padding."""

    rollouts: Rollouts
    task_reward: Tensor  # (B,) summed task reward (reward model and functions, weighted)
    ref_logprobs: Optional[Tensor]  # (B, T) log π_ref of each response token; None without a reference
    old_logprobs: Tensor  # (B, T) log π_θold (the policy learner before this step's update; μ on-policy)
    old_values: Optional[Tensor]  # (B, T) V(s_t) from the critic before this step's update; None without one
    ended: Tensor  # (B,) bool: the response ended with EOS


@dataclass(frozen=True)
class Settings:
    """How scores become experience (config: ppo.*, reward.*, rollout.n_samples)."""

    advantage: str  # ppo.advantage: gae | grpo | rloo | reinforce++
    kl_estimator: str  # ppo.kl_estimator: k1 | k2 | k3 | low_var_kl (k3)
    kl_in_reward: bool  # ppo.kl_in_reward: -β·KL in the rewards (else a loss term)
    gamma: float
    lam: float
    group_size: int  # samples per prompt (rollout.n_samples), the group of grpo / rloo
    reward_clip: Optional[float]  # reward.clip
    no_eos_penalty: Optional[float]  # reward.no_eos_penalty
    normalize: bool  # reward.normalize
    on_policy: bool
    """One update per batch, sampled by the weights being trained: π_θold is μ, importance weights are 1."""
    scale_rewards: str = "group"  # ppo.scale_rewards: GRPO's std: group | batch | none


@dataclass
class Experience:
    """One PPO batch ready for the learners (OpenRLHF's `Experience`, typed). B sequences; P prompt columns
    (left-padded), T response columns (right-padded): response token t sits at column P + t. Per-token tensors
    are 0 on padding.

    input_ids:      (B, P + T) long
    attention_mask: (B, P + T) long, 1 on real tokens
    response_mask:  (B, T) float, 1 on real response tokens
    old_logprobs:   (B, T) log π_θold; on-policy the generator's log μ (only for the gap the loss reports)
    ref_logprobs:   (B, T) log π_ref, or None without a reference (the KL unused)
    advantages:     (B, T)
    returns:        (B, T) the critic's targets (grpo / rloo: the advantages; unused without a critic)
    old_values:     (B, T) V(s_t) before the update; zeros without a critic
    is_weights:     (B, T) truncated behaviour importance weights min(π_θold/μ, c), masked (on-policy: the mask)
    task_reward:    (B,) the scorers' summed task reward, before shaping (what rollouts/*.parquet record)
    kl:             (B,) KL(π_θold || π_ref) summed over each response, or None without a reference
    ended:          (B,) bool, the response ended with EOS
    kl_coef:        β the rewards were shaped with
    logprob_gap:    mean |log π_θold - log μ| over response tokens; None on-policy (the policy loss measures it)
    """

    input_ids: Tensor
    attention_mask: Tensor
    response_mask: Tensor
    old_logprobs: Tensor
    ref_logprobs: Optional[Tensor]
    advantages: Tensor
    returns: Tensor
    old_values: Tensor
    is_weights: Tensor
    task_reward: Tensor
    kl: Optional[Tensor]
    ended: Tensor
    kl_coef: float
    logprob_gap: Optional[float]

    def mini_batch(self, idx: Tensor) -> dict[str, Tensor]:
        """Rows `idx` as a learner batch (`forward.Batch`): the keys `ppo_losses` reads, ref_logprobs only
        with a reference."""
        mb = {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "response_mask": self.response_mask,
              "old_logprobs": self.old_logprobs, "advantages": self.advantages, "is_weights": self.is_weights,
              "returns": self.returns, "old_values": self.old_values}
        if self.ref_logprobs is not None:
            mb["ref_logprobs"] = self.ref_logprobs
        return {k: v[idx] for k, v in mb.items()}

    def metrics(self) -> dict[str, Optional[float]]:
        """The batch's metrics row entries; the KL's are None without a reference."""
        r = self.task_reward
        out = {"reward_mean": r.mean().item(), "reward_std": r.std().item() if len(r) > 1 else 0.0,
               "kl_mean": None if self.kl is None else self.kl.mean().item(), "kl_coef": self.kl_coef,
               "response_length_mean": self.response_mask.sum(1).mean().item(),
               "eos_frac": self.ended.float().mean().item()}
        if self.logprob_gap is not None:
            out["logprob_gap"] = self.logprob_gap
        return out


def make_experience(scored: ScoredBatch, s: Settings, kl_coef: float) -> Experience:
    """Shaped task rewards, the per-token KL to the reference, advantages and returns, importance weights."""
    batch, mask = scored.rollouts, scored.rollouts.response_mask
    reward = shape_task_reward(scored.task_reward, scored.ended, s.reward_clip, s.no_eos_penalty, s.normalize)
    # Without a reference (the KL unused) the KL terms are 0 and its metrics null.
    kl = (torch.zeros_like(mask) if scored.ref_logprobs is None
          else rl_math.kl_estimate(scored.old_logprobs, scored.ref_logprobs, s.kl_estimator) * mask)
    adv, ret = advantages(s.advantage, reward, kl, mask, kl_coef, s.kl_in_reward, scored.old_values, s.gamma,
                          s.lam, s.group_size, s.scale_rewards)
    # Behaviour correction: samples came from μ (the generator, possibly some versions old). On-policy the
    # weight is 1 and old_logprobs carries μ, for the gap the loss reports.
    gap = scored.old_logprobs - batch.logprobs
    is_w = mask if s.on_policy else torch.exp(gap).clamp(max=IS_WEIGHT_CAP) * mask
    return Experience(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, response_mask=mask,
        old_logprobs=scored.old_logprobs, ref_logprobs=scored.ref_logprobs, advantages=adv, returns=ret,
        old_values=torch.zeros_like(mask) if scored.old_values is None else scored.old_values, is_weights=is_w,
        task_reward=scored.task_reward,
        kl=None if scored.ref_logprobs is None else rl_math.masked_sum(kl, mask, dim=1), ended=scored.ended,
        kl_coef=kl_coef, logprob_gap=None if s.on_policy else rl_math.masked_mean(gap.abs(), mask).item())


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
               values: Optional[Tensor], gamma: float, lam: float, group_size: int, scale_rewards: str = "group"
               ) -> tuple[Tensor, Tensor]:
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
        seq_adv = rl_math.group_advantages(seq_reward, group_size, scale_rewards)
    elif estimator == "rloo":
        seq_adv = rl_math.rloo_advantages(seq_reward, group_size)
    else:
        raise ValueError(f"unknown advantage estimator {estimator!r}; choose gae, grpo, rloo or reinforce++")
    adv = seq_adv[:, None] * mask
    return adv, adv.clone()
