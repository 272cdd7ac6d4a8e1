"""Every actor of a PPO run, started on its placement, called through typed methods, and kept alive.

Generator and scorer calls travel as `Calls`, and `Fleet.results` is the one place where a death is handled: the
actor is replaced on its slot (same name, same arguments; a generator brought to the push's policy version) and
its calls are made again, so no share is lost or counted twice. Learner ranks cannot be replaced inside their
torch.distributed group: their calls are `Collective`s, and losing one stops the run (stopping.LearnerLost), to be
resumed from the newest checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pyarrow as pa
import ray
import torch

from actors.learner import Learner
from actors.reference import Reference
from actors.reward_function import RewardFunction
from actors.reward_model import RewardModel
from cluster import pools
from cluster.actor_group import ActorGroup, GroupError, NodeLost
from rlhf_ray import models
from rlhf_ray.algos import forward
from rlhf_ray.config import Config, TrainConfig
from rlhf_ray.engines import vllm_engine
from rlhf_ray.engines.scoring import resolve as resolve_function
from rlhf_ray.rollout import RolloutBatch
from rlhf_ray.stages import generation, push
from rlhf_ray.stages.push import Probe, WeightPush


@dataclass
class Call:
    """One call to a generator or scorer, kept so that it can be made again: `make(actor)` returns its ref."""

    rank: int
    make: Callable[[Any], Any]
    ref: Any = None
    actor: Any = None
    """The actor it went to. If it died and the rank holds another actor already (replaced when another of its
    calls failed), the call is only sent again."""
    kept: bool = False
    """Its answer is in the object store (`Calls.keep`): never asked of an actor again."""


class Calls:
    """Calls in flight on one generator or scorer group, by key (the generator share they concern); a call whose
    actor died is made again on its replacement (`Fleet.results`)."""

    def __init__(self, group: ActorGroup, say: Optional[Callable[[int], str]] = None):
        self.group, self.items = group, {}
        self.say = say
        """What to print when the call of a key is made again (None: nothing)."""

    def send(self, key: int, rank: int, make: Callable[[Any], Any]) -> None:
        self.items[key] = Call(rank, make)
        self.resend(key)

    def resend(self, key: int) -> None:
        """Make the call again on its rank's current actor."""
        call = self.items[key]
        call.actor = self.group.actors[call.rank]
        call.ref = call.make(call.actor)

    def keep(self, key: int, answer: Any) -> None:
        """`answer` is the call's result: from now on it is read from the object store, never asked again."""
        ref = ray.put(answer)
        self.items[key].ref, self.items[key].make, self.items[key].kept = ref, lambda actor: ref, True

    @classmethod
    def answered(cls, group: ActorGroup, answers: list) -> "Calls":
        """Calls whose answers are in already, one per share (a checkpoint's batches in flight: split over as many
        generators as the run had then, which need not be as many as it has now)."""
        calls = cls(group)
        for key, answer in enumerate(answers):
            rank = key % len(group)
            calls.items[key] = Call(rank, None, None, group.actors[rank])
            calls.keep(key, answer)
        return calls

    def on(self, rank: int) -> "Calls":
        """The calls not answered yet that went to `rank` (the same Call objects)."""
        mine = Calls(self.group, self.say)
        mine.items = {key: call for key, call in self.items.items() if call.rank == rank and not call.kept}
        return mine


@dataclass
class Scoring:
    """One batch's scorer calls. Each generator share goes to every scorer as soon as it lands (to rank i % ranks
    of each scorer group), so scoring overlaps the generation still running; `Fleet.ref_logprobs` and
    `Fleet.rewards` wait for the answers."""

    reference: Optional[Calls]
    reward_model: Optional[Calls]
    reward_fn: Optional[Calls]
    temperature: float = 1.0
    """The sampling temperature: the reference's log-probs are taken at it (rollout.temperature)."""

    def send(self, i: int, share: pa.Table) -> None:
        """Generator i's share of the batch to each scorer."""
        for calls, make in ((self.reference, lambda a: a.logprobs.remote(share, self.temperature)),
                            (self.reward_model, lambda a: a.scores.remote(share)),
                            (self.reward_fn, lambda a: a.scores.remote(share))):
            if calls is not None:
                calls.send(i, i % len(calls.group), make)


@dataclass
class Rewards:
    """The task reward's parts for each response of a batch, in batch order."""

    model: Optional[list[float]]
    """The reward model's score (None without one)."""
    functions: dict[str, list[float]]
    """Each reward function's score, by its spec (`file.py:name`)."""


@dataclass
class Collective:
    """One call on every rank of a learner group (ZeRO forwards and updates are collective), under way. A
    learner rank cannot be replaced: its death is raised (then stopping.LearnerLost)."""

    group: ActorGroup
    refs: list
    timeout_s: float
    phase: str
    join: Callable[[list], Any]
    """The ranks' answers -> the result (shards concatenated, or rank 0's metrics)."""

    def get(self) -> Any:
        return self.join(self.group.get(self.refs, self.timeout_s, self.phase))


@dataclass
class Fleet:
    """Every actor of a PPO run, called through typed methods."""

    placement: pools.Placement
    generators: ActorGroup
    reference: Optional[ActorGroup]
    """None when the KL is not used (see Config.uses_reference)."""
    policy: ActorGroup
    critic: Optional[ActorGroup]
    reward_model: Optional[ActorGroup]
    reward_fn: Optional[ActorGroup]
    timeout_s: float
    """cluster.call_timeout_s: how long any call may take."""
    start_version: int = 0
    """The policy version the generators were started with (a checkpoint's, on resume)."""
    max_restarts: int = 3
    """Replacements of dead actors allowed per group (cluster.max_actor_restarts)."""
    temperature: float = 1.0
    """rollout.temperature: the generators sample at it, the learner's and the reference's log-probs are taken at
    it (the policy being trained is the one that samples)."""
    push: Optional[WeightPush] = None
    """Policy rank 0 -> every generator: the one owner of the weight transport (stages/push.py)."""
    moved: Optional[Callable[[str, list[dict]], None]] = None
    """Told (event, `pools.records` of the rank) where a replacement (`replaced`) or a rank the fleet grew by
    (`added`) was placed, and of a rank removed (`removed`): the PPO driver appends it to placement.jsonl."""
    scale_wait_s: float = 300.0
    """cluster.scale_wait_s: how long a rank the fleet grows by may wait for room (`pools.grow`)."""

    # ------------------------------------------------------------ generators and scorers: replaced when they die

    def results(self, calls: Calls, phase: str) -> Iterator[tuple[int, Any]]:
        """(key, answer) of each call as it lands. A call whose actor died is made again on a replacement (same
        slot and name; a generator brought to the push's version first): no key is lost or answered twice. The
        timeout runs from the start and again from each replacement."""
        pending = {call.ref: key for key, call in calls.items.items()}
        deadline = time.monotonic() + self.timeout_s
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                ranks = sorted({calls.items[key].rank for key in pending.values()})
                raise GroupError(calls.group.role, ranks, phase, f"no answer within {self.timeout_s:g} s")
            key = pending.pop(ready[0])
            try:
                answer = calls.group.get(ready, self.timeout_s, phase, ranks=[calls.items[key].rank])[0]
            except GroupError as e:
                if not e.died:
                    raise
                self.revive(calls, key, phase)
                pending[calls.items[key].ref] = key
                deadline = time.monotonic() + self.timeout_s
                continue
            yield key, answer

    def gather(self, calls: Calls, phase: str) -> list:
        """Every call's answer, in key order (see `results`)."""
        answers = dict(self.results(calls, phase))
        return [answers[key] for key in sorted(answers)]

    def revive(self, calls: Calls, key: int, phase: str) -> None:
        """The call of `key` made again on a replacement of its dead actor (started here, unless a call to the
        same actor that failed earlier started it already)."""
        call, group = calls.items[key], calls.group
        if call.actor is group.actors[call.rank]:
            if group is self.generators:
                self.revive_generator(call.rank, phase)
            else:
                self._restart(group, call.rank, phase)
        calls.resend(key)
        if calls.say is not None:
            print(f"{phase}: {calls.say(key)}", flush=True)

    def revive_generator(self, rank: int, phase: str) -> None:
        """A new generator for `rank`, brought to the push's version (the policy learner holds it whenever
        generation is awaited) and probed."""
        self._restart(self.generators, rank, phase)
        if self.push.version != self.start_version:  # else it started with these weights
            self.push.bring(rank)

    def _restart(self, group: ActorGroup, rank: int, phase: str) -> None:
        """A fresh actor on the slot of a dead generator or scorer (same name and arguments); said in the log."""
        if group.restarts >= self.max_restarts:
            raise GroupError(group.role, [rank], phase, f"actor died; {group.restarts} replacements already "
                                                        f"(cluster.max_actor_restarts = {self.max_restarts})")
        print(f"{phase}: {group.role}-{rank} died; starting a replacement", flush=True)
        group.restart(rank, self.timeout_s)
        self._placed_again(group, rank, phase)

    def groups(self) -> dict[str, ActorGroup]:
        """The generator and scorer groups of this run, by their cluster.roles key."""
        groups = {"generator": self.generators, "reference": self.reference, "reward": self.reward_model,
                  "reward_fn": self.reward_fn}
        return {role: g for role, g in groups.items() if g is not None}

    def _role(self, group: ActorGroup) -> str:
        return next(role for role, g in self.groups().items() if g is group)

    def _tell(self, event: str, role: str, rank: int) -> None:
        if self.moved is not None:
            self.moved(event, [r for r in pools.records(self.placement, [role]) if r["rank"] == rank])

    def _placed_again(self, group: ActorGroup, rank: int, phase: str, event: str = "replaced") -> None:
        """Wait until a replacement has started, and note its node. A lost node takes its bundles with it: Ray
        places them again once a node with room (and the pool's node_resource) is alive, and the replacement starts
        there; one started before Ray declared the node dead is cancelled with it (it never ran) and is started
        again, not counted as a restart. Bounded, so a node that never comes back stops the run with one message
        (and the newest checkpoint to resume from) instead of a silent wait."""
        role = self._role(group)
        pool, deadline = self.placement.plan.roles[role].pool, time.monotonic() + self.timeout_s
        while True:
            ready = group.actors[rank].__ray_ready__.remote()
            if not ray.wait([ready], timeout=max(0.0, deadline - time.monotonic()))[0]:
                raise NodeLost(group.role, [rank], phase, f"its node was lost and pool {pool!r} has no node to "
                                                          f"place it again on within {self.timeout_s:g} s")
            try:
                ray.get(ready)
                break
            except ray.exceptions.RayActorError as e:
                if e.actor_init_failed:
                    raise GroupError(group.role, [rank], phase, f"its replacement failed to start: {e}") from e
                group.restart(rank, self.timeout_s, counted=False)
        pools.refresh(self.placement, pool)
        self._tell(event, role, rank)

    # ------------------------------------------------------------ the fleet's size: generators and scorers

    def sizes(self) -> dict[str, int]:
        """Actors per generator or scorer role of this run."""
        return {role: len(g) for role, g in self.groups().items()}

    def scale(self, role: str, n: int, inflight: list[Calls]) -> None:
        """`role`'s actors to n, between steps. A removed generator first answers what is queued on it (kept in
        the object store: its share of a batch in flight stays sampled by it, once); an added one is placed
        (`pools.grow`: NoCapacity when no node has room in time), started, and brought to the push's version and
        probed before it is dealt a share. Learners cannot change size: their process group cannot take in
        members."""
        group = self.groups()[role]
        while len(group) > n:
            rank = len(group) - 1
            for calls in inflight if group is self.generators else []:
                for key, answer in self.results(calls.on(rank), f"scale: drain generator-{rank}"):
                    calls.keep(key, answer)
            self._tell("removed", role, rank)
            group.remove()
            pools.shrink(self.placement, role, rank)
        while len(group) < n:
            rank = len(group)
            group.add(pools.grow(self.placement, role, rank, self.scale_wait_s), self.timeout_s)
            self._placed_again(group, rank, f"scale: {role}-{rank}", "added")
            if group is self.generators and self.push.version != self.start_version:
                self.push.bring(rank)

    def restarts(self) -> int:
        """Generators and scorers replaced so far."""
        return sum(g.restarts for g in (self.generators, self.reference, self.reward_model, self.reward_fn) if g)

    def generate(self, prompts: list[dict], params: vllm_engine.Sampling, seed: int) -> Calls:
        """Queue `prompts` ({prompt, ids}) on the generators, a near-equal share each (`generation.deal`);
        rank i's rollouts are key i. A share whose generator dies is sampled again, same prompts and seed."""
        shares = generation.deal(prompts, len(self.generators))
        calls = Calls(self.generators, lambda i: f"the share of generator-{i} is sampled again "
                                                 f"({len(shares[i])} prompts)")
        for rank, share in enumerate(shares):
            calls.send(rank, rank, generation.generate_call(share, params, seed))
        return calls

    def scoring(self) -> Scoring:
        """A batch's scorer calls, to `send` each share to as it lands."""
        return Scoring(*(None if g is None else Calls(g) for g in (self.reference, self.reward_model,
                                                                     self.reward_fn)), self.temperature)

    def ref_logprobs(self, scoring: Scoring, phase: str) -> Optional[list[list[float]]]:
        """log π_ref of each response's tokens, in batch order; None without a reference."""
        if scoring.reference is None:
            return None
        return [lp for share in self.gather(scoring.reference, phase) for lp in share]

    def rewards(self, scoring: Scoring) -> Rewards:
        """The reward model's and reward functions' scores of each response, in batch order."""
        model, functions = None, {}
        if scoring.reward_model is not None:
            model = [x for share in self.gather(scoring.reward_model, "score: reward model") for x in share]
        if scoring.reward_fn is not None:
            by_share = self.gather(scoring.reward_fn, "score: reward functions")
            functions = {spec: [x for share in by_share for x in share[spec]] for spec in by_share[0]}
        return Rewards(model, functions)

    # ------------------------------------------------------------ learners: collective calls, never replaced

    def _collective(self, group: ActorGroup, batch: dict, call: Callable, phase: str, join) -> Collective:
        shards = group.shard(batch)
        return Collective(group, group.map(lambda a, r: call(a, shards[r])), self.timeout_s, phase, join)

    def old_logprobs(self, batch: RolloutBatch) -> Collective:
        """The policy learner's log π_θold of each response token at the sampling temperature: (B, T) once `get`
        joins the ranks' shards."""
        T, temperature = batch.response_mask.shape[1], self.temperature
        return self._collective(self.policy, _ids(batch), lambda a, shard: a.logprobs.remote(shard, T, temperature),
                                "score: old logprobs", torch.cat)

    def base_logprobs(self, batch: RolloutBatch) -> Collective:
        """The reference's log-probs from the policy learner with its LoRA adapters off (no reference actor):
        (B, T) once joined."""
        T, temperature = batch.response_mask.shape[1], self.temperature
        return self._collective(self.policy, _ids(batch),
                                lambda a, shard: a.logprobs.remote(shard, T, temperature, adapters=False),
                                "score: reference (adapters off)", torch.cat)

    def old_values(self, batch: RolloutBatch) -> Optional[Collective]:
        """The critic's V(s_t) before each response token: (B, T) once joined; None without a critic."""
        if self.critic is None:
            return None
        T = batch.response_mask.shape[1]
        return self._collective(self.critic, _ids(batch), lambda a, shard: a.values.remote(shard, T),
                                "score: values", torch.cat)

    def train_policy(self, mini_batch: dict, loss: forward.Loss) -> Collective:
        """One optimizer step of the policy on `mini_batch` (an equal shard per rank); `get`: its metrics."""
        return self._collective(self.policy, mini_batch, lambda a, shard: a.train_step.remote(shard, loss),
                                "train: policy", _first)

    def train_critic(self, mini_batch: dict, loss: forward.Loss) -> Optional[Collective]:
        """The critic's optimizer step, as `train_policy`; None without a critic."""
        if self.critic is None:
            return None
        return self._collective(self.critic, mini_batch, lambda a, shard: a.train_step.remote(shard, loss),
                                "train: critic", _first)

    def learners(self) -> list[tuple[str, ActorGroup]]:
        """(checkpoint folder name, group) of each learner group."""
        return [("policy", self.policy)] + ([("critic", self.critic)] if self.critic else [])

    def save_checkpoint(self, folder: Path) -> None:
        """Each learner's weights, optimizer and schedule into folder/<policy|critic>."""
        for name, group in self.learners():
            group.call(lambda a, r: a.save.remote(str(folder / name), True), self.timeout_s, f"checkpoint: {name}")

    def load_checkpoint(self, folder: Path) -> None:
        """The learners' states from a `save_checkpoint` folder."""
        for name, group in self.learners():
            group.call(lambda a, r: a.load_checkpoint.remote(str(folder / name)), self.timeout_s, f"resume: {name}")

    def save_policy(self, folder: Path) -> None:
        """The policy as a Hugging Face folder (what later stages and vLLM load)."""
        self.policy.call(lambda a, r: a.save.remote(str(folder), False), self.timeout_s, "save")

    def kill(self) -> None:
        for g in (self.generators, self.reference, self.policy, self.critic, self.reward_model, self.reward_fn):
            if g is not None:
                g.kill()
        pools.remove(self.placement)


def _ids(batch: RolloutBatch) -> dict:
    return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}


def _first(answers: list) -> Any:  # metrics of an update: equal on every rank
    return answers[0]


def start_fleet(cfg: Config, policy: str, total_steps: int, weights: Optional[str] = None, version: int = 0,
                probe: Optional[Probe] = None) -> Fleet:
    """Placement groups first (fails fast when the cluster is too small), then every actor group. weights: the
    generators start from this folder as policy `version` (a checkpoint's), learners from `policy` (their
    checkpoint is loaded next)."""
    # The critic values each policy token (GAE): it starts from the RM only when the RM reads the policy's tokens.
    critic_start = (models.critic_start(cfg.model.critic, cfg.model.reward, policy, cfg.model.trust_remote_code)
                    if cfg.ppo.advantage == "gae" else None)
    placement = pools.create(pools.plan(cfg.cluster, cfg.stage_roles("ppo")), timeout_s=cfg.cluster.call_timeout_s)
    print(pools.describe(placement), flush=True)
    slots, p, m = placement.slots, cfg.ppo, cfg.model

    def on(role: str) -> dict:
        return {"slots": slots(role), "threads": cfg.cluster.roles[role].threads}

    # Pushed adapters are served on the base policy, from the checkpoint's adapters if any; else the full weights.
    adapters = m.lora is not None and m.lora.sync == "adapters"
    gen = generation.start_generators(cfg, policy if adapters else weights or policy, slots("generator"), version,
                                      adapters, str(Path(weights) / "adapter") if weights and adapters else None)
    ref = ActorGroup(Reference, "reference", (m.reference or policy, m.dtype, cfg.train.micro_batch_size,
                                              m.trust_remote_code, cfg.train.packing),
                     distributed=False, **on("reference")) if "reference" in cfg.stage_roles("ppo") else None
    learner = (cfg.train, m.dtype, cfg.seed, total_steps, p.mini_batch_size, m.lora, m.trust_remote_code)
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
                                                cfg.train.micro_batch_size, m.trust_remote_code, cfg.train.packing),
                          distributed=False, **on("reward"))
    # Shipped as the driver read them (the checks before Ray did): every node runs the code that was checked.
    codes = [resolve_function(f) for f in cfg.reward_functions()]
    reward_fn = ActorGroup(RewardFunction, "reward-fn", (codes,), distributed=False,
                           **on("reward_fn")) if codes else None
    fleet = Fleet(placement, gen, ref, pol, critic, rm, reward_fn, cfg.cluster.call_timeout_s, version,
                  cfg.cluster.max_actor_restarts, cfg.rollout.temperature, scale_wait_s=cfg.cluster.scale_wait_s)
    fleet.push = WeightPush(push.chosen(cfg), push.backend(cfg.cluster.roles["policy"].gpus), pol, gen,
                            cfg.rollout.engine.tensor_parallel_size, cfg.cluster.call_timeout_s, version, probe,
                            fleet._restart, cfg.rollout.engine.sleep_level)
    fleet.push.open(list(range(len(gen))))  # the broadcast group formed before the first batch is queued
    how = fleet.push.transport + (f" ({fleet.push.backend})" if fleet.push.transport == "broadcast" else "")
    print(f"weight sync: {how}" + (", probed after every sync" if probe is not None else ""), flush=True)
    return fleet
