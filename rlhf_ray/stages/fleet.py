"""Every actor of a PPO run, started on its placement, and kept alive: a generator or scorer that dies is replaced
on its slot (same name, same arguments) and a generator is brought to the current policy version before it
samples again. Learner ranks cannot be replaced inside their torch.distributed group: losing one stops the run
(stopping.LearnerLost), to be resumed from the newest checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from actors.learner import Learner
from actors.reference import Reference
from actors.reward_function import RewardFunction
from actors.reward_model import RewardModel
from cluster import pools
from cluster.actor_group import ActorGroup, GroupError
from rlhf_ray import models
from rlhf_ray.config import Config, TrainConfig
from rlhf_ray.stages import generation

BUCKET_BYTES = 64 << 20  # weight-sync bucket size

# How each scorer scores a generator's share (a rollout table); the keys are Fleet.scorers()'.
SCORE_CALLS = {"reference": lambda actor, share: actor.logprobs.remote(share),
               "reward": lambda actor, share: actor.scores.remote(share),
               "reward-fn": lambda actor, share: actor.scores.remote(share)}


@dataclass
class Fleet:
    """Every actor of a PPO run."""

    placement: pools.Placement
    generators: ActorGroup
    reference: Optional[ActorGroup]
    """None when the KL is not used (see uses_reference)."""
    policy: ActorGroup
    critic: Optional[ActorGroup]
    reward_model: Optional[ActorGroup]
    reward_fn: Optional[ActorGroup]
    start_version: int = 0
    """The policy version the generators were started with (a checkpoint's, on resume)."""
    max_restarts: int = 3
    """Replacements of dead actors allowed per group (cluster.max_actor_restarts)."""

    def scorers(self) -> dict[str, Optional[ActorGroup]]:
        """The groups that score a generator's share, by the key PPO's scoring dicts use."""
        return {"reference": self.reference, "reward": self.reward_model, "reward-fn": self.reward_fn}

    def revive(self, group: ActorGroup, rank: int, phase: str, timeout_s: float) -> None:
        """Replace a dead generator or scorer (learners cannot be: see LearnerLost); say so in the log."""
        if group.restarts >= self.max_restarts:
            raise GroupError(group.role, [rank], phase, f"actor died; {group.restarts} replacements already "
                                                        f"(cluster.max_actor_restarts = {self.max_restarts})")
        print(f"{phase}: {group.role}-{rank} died; starting a replacement", flush=True)
        group.restart(rank, timeout_s)

    def learners(self) -> list[tuple[str, ActorGroup]]:
        """(checkpoint folder name, group) of each learner group."""
        return [("policy", self.policy)] + ([("critic", self.critic)] if self.critic else [])

    def export_weights(self, version: int, timeout_s: float, phase: str) -> list:
        """The policy's full weights as `version`'s bucket refs in the object store (policy rank 0 returns them)."""
        return self.policy.call(lambda a, r: a.export_buckets.remote(version, BUCKET_BYTES), timeout_s, phase)[0]

    def revive_generator(self, rank: int, version: int, timeout_s: float, phase: str) -> None:
        """A new generator for `rank`, brought to policy `version` with weights exported from the policy learner
        now (the learner holds `version` wherever generation is awaited)."""
        self.revive(self.generators, rank, phase, timeout_s)
        if version == self.start_version:
            return  # it started with these weights
        buckets = self.export_weights(version, timeout_s, f"{phase}: weights for generator-{rank}")
        actor = self.generators.actors[rank]
        self.generators.get([actor.update_weights.remote(version, buckets, timeout_s)], timeout_s,
                            f"{phase}: weights for generator-{rank}", ranks=[rank])

    def kill(self) -> None:
        for g in (self.generators, self.reference, self.policy, self.critic, self.reward_model, self.reward_fn):
            if g is not None:
                g.kill()
        pools.remove(self.placement)


def uses_reference(cfg: Config) -> bool:
    """A reference policy is loaded when the KL is used (β > 0, or a KL target) or model.reference names one (to
    watch the KL at β = 0). Otherwise its forward would be spent on a term multiplied by 0 (TRL and OpenRLHF skip
    it too): the KL metrics are then null."""
    return cfg.ppo.kl_coef > 0 or cfg.ppo.kl_target is not None or cfg.model.reference is not None


def roles(cfg: Config) -> list[str]:
    roles = ["generator"] + (["reference"] if uses_reference(cfg) else []) + ["policy"]
    roles += ["critic"] if cfg.ppo.advantage == "gae" else []
    roles += ["reward"] if cfg.model.reward else []
    return roles


def start_fleet(cfg: Config, policy: str, total_steps: int, weights: Optional[str] = None, version: int = 0) -> Fleet:
    """Placement groups first (fails fast when the cluster is too small), then every actor group. weights: the
    generators start from this folder as policy `version` (a checkpoint's), learners from `policy` (their
    checkpoint is loaded next)."""
    # The critic values each policy token (GAE): it starts from the RM only when the RM reads the policy's tokens.
    critic_start = (models.critic_start(cfg.model.critic, cfg.model.reward, policy) if cfg.ppo.advantage == "gae"
                    else None)
    placement = pools.create(pools.plan(cfg.cluster, roles(cfg)), timeout_s=cfg.cluster.call_timeout_s)
    print(pools.describe(placement), flush=True)
    slots, p, m = placement.slots, cfg.ppo, cfg.model

    def on(role: str) -> dict:
        return {"slots": slots(role), "threads": cfg.cluster.roles[role].threads}

    gen = generation.start_generators(cfg, weights or policy, slots("generator"), version)
    ref = ActorGroup(Reference, "reference", (m.reference or policy, m.dtype, cfg.train.micro_batch_size),
                     distributed=False, **on("reference")) if uses_reference(cfg) else None
    learner = (cfg.train, m.dtype, cfg.seed, total_steps, p.mini_batch_size)
    pol = ActorGroup(Learner, "policy-learner", (policy, "policy", *learner), **on("policy"))
    critic = None
    if p.advantage == "gae":
        critic_train = TrainConfig(**{**cfg.train.__dict__, "lr": p.critic_lr})
        print(f"critic starts from {critic_start}", flush=True)
        critic = ActorGroup(Learner, "critic-learner", (critic_start, "critic", critic_train, *learner[1:]),
                            **on("critic"))
    rm = None
    if m.reward:
        rm = ActorGroup(RewardModel, "reward", (models.resolve_model(m.reward), policy, m.dtype,
                                                cfg.train.micro_batch_size), distributed=False, **on("reward"))
    fns = list(dict.fromkeys([f.function for f in cfg.reward.functions] + ([p.gold] if p.gold else [])))
    reward_fn = ActorGroup(RewardFunction, "reward-fn", (fns,), num_ranks=1, num_cpus=0.01,
                           distributed=False) if fns else None
    return Fleet(placement, gen, ref, pol, critic, rm, reward_fn, version, cfg.cluster.max_actor_restarts)
