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
from pathlib import Path
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from cluster.actor_group import ActorGroup, GroupError
from rlhf_ray import data, models, rollout
from rlhf_ray.algos import experience, ppo_losses, rl_math
from rlhf_ray.config import Config, ConfigError, to_dict
from rlhf_ray.runtime import checkpoint, faults
from rlhf_ray.runtime.run_dir import RunDir
from rlhf_ray.runtime.stopping import GracefulStop, SkipGuard, Stopped
from rlhf_ray.stages import generation
from rlhf_ray.stages.fleet import SCORE_CALLS, Fleet, start_fleet
from rlhf_ray.stages.result import StageResult

IS_WEIGHT_CAP = 2.0  # truncation c of the behaviour importance weight min(π_θold/μ, c) (IMPALA-style)


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
        self.kl_ctl, self.version, self.rng, self.launches = kl, 0, random.Random(cfg.seed), 0
        self.timeout = cfg.cluster.call_timeout_s
        # One update per batch, sampled by the weights being trained: π_θold is the learner itself, so its
        # log-probs need no separate forward (ppo_losses.policy_loss, on_policy).
        self.on_policy = r.max_staleness == 0 and p.epochs == 1 and p.mini_batch_size == self.samples
        self.evals: list[dict] = []
        self.history: list[dict] = []
        self.guard = SkipGuard(cfg.train.max_skipped_updates)

    def _load_prompts(self) -> list[dict]:
        ds, d = self.cfg.data.prompts, self.cfg.data
        if ds.path is None:
            raise data.DataError("data.prompts.path: PPO needs a prompts dataset")
        limits = data.Limits(d.max_prompt_len, d.max_response_len, d.truncation)

        def encode(rows: list[dict], report: data.LoadReport) -> list[dict]:
            return [{"prompt": row["prompt"], "ids": ids} for row, ids in
                    data.encode_kept(self.tokenizer, rows, "prompts", limits, report, d.apply_chat_template)]

        train, self.eval_prompts, reports = data.load_held_out(ds, "prompts", d.skip_malformed, self.cfg.seed, encode)
        print("; ".join(map(str, reports)) + f"; {len(self.eval_prompts)} prompts held out", flush=True)
        return train

    # ------------------------------------------------------------ phases

    def _next_prompts(self) -> list[dict]:
        return [self.rng.choice(self.prompts) for _ in range(self.cfg.rollout.batch_size)]

    def launch_generate(self, fleet: Fleet, prompts: Optional[list[dict]] = None) -> generation.Launch:
        """Queue one batch (the next training prompts, or `prompts`) on the generators, a near-equal share each."""
        params = generation.sampling(self.cfg, self.cfg.rollout.n_samples, self.cfg.data.max_response_len)
        self.launches += 1  # each batch samples with a seed of its own (see Generator.generate)
        seed = self.cfg.seed * 1_000_003 + self.launches * 7919
        batch = generation.launch(fleet.generators, prompts or self._next_prompts(), params, seed)
        faults.kill_actors("kill_after_launch", self.launches)
        return batch

    def generated(self, fleet: Fleet, batch: generation.Launch, phase: str):
        """(rank, rollouts) of each share as it lands. A share whose generator died is sampled again, same prompts
        and seed, by a replacement brought to the current weights: no prompt is lost or counted twice."""
        done: set[int] = set()
        while len(done) < len(batch.refs):
            todo = [i for i in range(len(batch.refs)) if i not in done]
            try:
                for i, table in fleet.generators.as_completed([batch.refs[i] for i in todo], self.timeout, phase,
                                                              ranks=todo):
                    done.add(i)
                    yield i, table
            except GroupError as e:
                if not e.died:
                    raise
                for i in e.ranks:
                    if batch.actors[i] is fleet.generators.actors[i]:  # not replaced yet (by an earlier batch)
                        fleet.revive_generator(i, self.version, self.timeout, phase)
                    generation.resubmit(fleet.generators, batch, i)
                    print(f"{phase}: the share of generator-{i} is sampled again ({len(batch.shares[i])} prompts)",
                          flush=True)

    def collect(self, fleet: Fleet, batch: generation.Launch) -> tuple[pa.Table, list[dict]]:
        """Each generator's share as it lands, with its reference log-probs and task rewards requested at once:
        scoring overlaps the generation still running on other generators. Returns the batch in generator order
        (groups numbered across it) and each share's scorer refs."""
        shares, scoring = {}, {}
        for i, t in self.generated(fleet, batch, "generate"):
            shares[i], scoring[i] = t, self._score_share(fleet, t, i)
        order = sorted(shares)
        return generation.join([shares[i] for i in order]), [scoring[i] for i in order]

    @staticmethod
    def _score_share(fleet: Fleet, share: pa.Table, i: int) -> dict:
        """(rank, ref) per scorer for share i, and the share itself (to score again if a scorer dies); shares go
        round-robin over each scorer group's ranks."""
        out: dict = {"share": share}
        for key, group in fleet.scorers().items():
            out[key] = None if group is None else (i % len(group), SCORE_CALLS[key](group.actors[i % len(group)], share))
        return out

    def _await(self, fleet: Fleet, scoring: list[dict], key: str, phase: str) -> list:
        """The `key` scorer's answers for every share; a scorer that died is replaced and its shares re-sent."""
        group = fleet.scorers()[key]
        while True:
            items = [s[key] for s in scoring]
            try:
                return group.get([ref for _, ref in items], self.timeout, phase, ranks=[rank for rank, _ in items])
            except GroupError as e:
                if not e.died:
                    raise
                for rank in sorted(set(e.ranks)):
                    fleet.revive(group, rank, phase, self.timeout)
                for s in scoring:
                    if s[key][0] in e.ranks:
                        s[key] = (s[key][0], SCORE_CALLS[key](group.actors[s[key][0]], s["share"]))

    def _ref_logprobs(self, fleet: Fleet, scoring: list[dict], T: int, phase: str) -> Optional[torch.Tensor]:
        """The reference actors' log-probs of every share, as one (B, T) batch; None without a reference."""
        if fleet.reference is None:
            return None
        return _pad([lp for part in self._await(fleet, scoring, "reference", phase) for lp in part], T)

    def task_rewards(self, fleet: Fleet, scoring: list[dict]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Reward model scores and reward functions, weighted and summed: (B,); and each function's own (B,)."""
        parts, by_fn = [], {}
        if fleet.reward_model:
            rm = [x for part in self._await(fleet, scoring, "reward", "score: reward model") for x in part]
            parts.append(self.cfg.reward.model_weight * torch.tensor(rm))
        if fleet.reward_fn:
            by_share = self._await(fleet, scoring, "reward-fn", "score: reward functions")
            by_fn = {spec: torch.tensor([x for part in by_share for x in part[spec]]) for spec in by_share[0]}
            parts += [f.weight * by_fn[f.function] for f in self.cfg.reward.functions]
        return torch.stack(parts).sum(0), by_fn

    def score(self, fleet: Fleet, table: pa.Table, batch: rollout.RolloutBatch, scoring: list[dict]
              ) -> experience.Scores:
        """Old log-probs and values from the learners (the whole batch, one equal shard per rank: ZeRO-3 forwards
        are collective), then the share scorers' answers. On-policy, μ stands in for π_θold here (see __init__)."""
        T = batch.response_mask.shape[1]
        ids = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        old_refs = None if self.on_policy else _learner_forward(fleet.policy, "logprobs", ids, T)
        value_refs = _learner_forward(fleet.critic, "values", ids, T) if fleet.critic else None
        ref_lp = self._ref_logprobs(fleet, scoring, T, "score: reference")
        task, _ = self.task_rewards(fleet, scoring)
        old = batch.logprobs if old_refs is None else torch.cat(fleet.policy.get(old_refs, self.timeout,
                                                                                   "score: old logprobs"))
        values = torch.cat(fleet.critic.get(value_refs, self.timeout, "score: values")) if value_refs else None
        ended = torch.tensor([f == "stop" for f in table.column("finish_reason").to_pylist()])
        mask = batch.response_mask
        ref_lp, values = (None if x is None else x * mask for x in (ref_lp, values))
        return experience.Scores(task, ref_lp, old * mask, values, ended)

    def evaluate(self, fleet: Fleet) -> dict:
        """The held-out prompts at the generators' current weights: task reward, KL(π || π_ref) per response (k3,
        unbiased and non-negative), length. The samples go to rollouts/eval_vNNNNNN.parquet."""
        table, scoring = self.collect(fleet, self.launch_generate(fleet, self.eval_prompts))
        batch = rollout.collate(table, self.tokenizer.pad_token_id)
        mask = batch.response_mask
        ref_lp = self._ref_logprobs(fleet, scoring, mask.shape[1], "eval: reference")
        task, by_fn = self.task_rewards(fleet, scoring)
        kl = None if ref_lp is None else rl_math.masked_sum(rl_math.kl_estimate(batch.logprobs, ref_lp, "k3") * mask,
                                                            mask, dim=1)
        self.run_dir.write_rollouts(f"eval_v{self.version:06d}", table.append_column("reward", pa.array(task.tolist()))
                                    .append_column("kl", _column(kl, len(task))))
        row = {"step": self.version, "policy_version": self.version, "eval_reward_mean": task.mean().item(),
               "eval_reward_std": task.std().item() if len(task) > 1 else 0.0, "eval_kl_mean": _mean(kl),
               "eval_response_length_mean": mask.sum(1).mean().item(), "eval_samples": len(task)}
        if self.cfg.ppo.gold:
            row["eval_gold_mean"] = by_fn[self.cfg.ppo.gold].mean().item()
        self.run_dir.log_metrics(row)
        self.evals.append(row)
        return row

    def make_experience(self, batch: rollout.RolloutBatch, s: experience.Scores) -> tuple[dict, dict]:
        p, rw, mask = self.cfg.ppo, self.cfg.reward, batch.response_mask
        reward = experience.shape_task_reward(s.task, s.ended, rw.clip, rw.no_eos_penalty, rw.normalize)
        # Without a reference (the KL unused: fleet.uses_reference) the KL terms are 0 and its metrics null.
        kl = (torch.zeros_like(mask) if s.ref_logprobs is None
              else rl_math.kl_estimate(s.old_logprobs, s.ref_logprobs, p.kl_estimator) * mask)
        adv, ret = experience.advantages(p.advantage, reward, kl, mask, self.kl_ctl.value, p.kl_in_reward, s.values,
                                         p.gamma, p.lam, self.cfg.rollout.n_samples)
        # Behaviour correction: samples came from μ (the generator, possibly some versions old). On-policy the
        # weight is 1 and old_logprobs carries μ, for the gap the loss reports.
        is_w = mask if self.on_policy else torch.exp(s.old_logprobs - batch.logprobs).clamp(max=IS_WEIGHT_CAP) * mask
        exp = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "response_mask": mask,
               "old_logprobs": s.old_logprobs, "advantages": adv, "is_weights": is_w,
               "returns": ret, "old_values": s.values if s.values is not None else torch.zeros_like(mask)}
        if s.ref_logprobs is not None:
            exp["ref_logprobs"] = s.ref_logprobs
        kl_seq = None if s.ref_logprobs is None else rl_math.masked_sum(kl, mask, dim=1)
        stats = {"reward_mean": s.task.mean().item(), "reward_std": s.task.std().item() if len(s.task) > 1 else 0.0,
                 "kl_mean": _mean(kl_seq), "kl_coef": self.kl_ctl.value,
                 "response_length_mean": mask.sum(1).mean().item(), "eos_frac": s.ended.float().mean().item()}
        if not self.on_policy:  # on-policy, the policy loss measures the gap in its own forward
            stats["logprob_gap"] = rl_math.masked_mean((s.old_logprobs - batch.logprobs).abs(), mask).item()
        return exp, {**stats, "_kl_seq": kl_seq, "_reward": s.task}

    def train(self, fleet: Fleet, exp: dict) -> dict:
        """PPO epochs over shuffled mini-batches; each mini-batch is one optimizer step of policy and critic."""
        p = self.cfg.ppo
        pol_loss = ppo_losses.make_policy_loss(p.clip_eps, p.dual_clip, p.entropy_coef,
                                               0.0 if p.kl_in_reward else self.kl_ctl.value, p.kl_estimator,
                                               self.on_policy)
        val_loss = ppo_losses.make_value_loss(p.value_clip_eps)
        sums: dict[str, float] = {}
        n = 0
        g = torch.Generator().manual_seed(self.cfg.seed * 7919 + self.version)
        for _ in range(p.epochs):
            order = torch.randperm(self.samples, generator=g)
            for start in range(0, self.samples, p.mini_batch_size):
                idx = rollout.by_prompt_length(order[start : start + p.mini_batch_size], exp["response_mask"],
                                        exp["attention_mask"])
                mb = {k: v[idx] for k, v in exp.items()}
                refs = _train_refs(fleet.policy, mb, pol_loss)
                crefs = _train_refs(fleet.critic, mb, val_loss) if fleet.critic else []
                out = fleet.policy.get(refs, self.timeout, "train: policy")[0]
                self.guard.see(out["skipped"], f"ppo policy update (version {self.version})")
                if crefs:
                    critic = fleet.critic.get(crefs, self.timeout, "train: critic")[0]
                    self.guard.see(critic["skipped"], f"ppo critic update (version {self.version})")
                    out = {**out, **critic, "skipped": out["skipped"] + critic["skipped"]}
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + v
                n += 1
        means = {k: v / n for k, v in sums.items() if k in ("policy_loss", "value_loss", "clip_frac", "entropy",
                                                             "approx_kl", "grad_norm", "logprob_gap")}
        return {**means, "skipped_updates": int(sums.get("skipped", 0))}

    def sync(self, fleet: Fleet) -> dict:
        """Weights v+1 from policy rank 0 to every generator (object store; queued after in-flight generation)."""
        buckets = fleet.export_weights(self.version, self.timeout, "sync: export")
        return {"buckets": buckets, "refs": fleet.generators.map(
            lambda a, r: a.update_weights.remote(self.version, buckets, self.timeout))}

    def synced(self, fleet: Fleet, sync: dict) -> list[dict]:
        """Each generator's load report; one that died is replaced and given the same buckets."""
        try:
            return fleet.generators.get(sync["refs"], self.timeout, "sync: load")
        except GroupError as e:
            if not e.died:
                raise
            for rank in e.ranks:  # a replacement starts on the first weights, then loads these buckets
                fleet.revive(fleet.generators, rank, "sync: load", self.timeout)
                sync["refs"][rank] = fleet.generators.actors[rank].update_weights.remote(
                    self.version, sync["buckets"], self.timeout)
            return self.synced(fleet, sync)

    # ------------------------------------------------------------ the loop

    def fit(self) -> list[dict]:
        """The run: resumes from the newest complete checkpoint (resume: auto), checkpoints every
        train.checkpoint_every steps and on SIGTERM / Ctrl-C (then raises stopping.Stopped)."""
        cfg = self.cfg
        ckpt = checkpoint.resume_point(self.run_dir.path, "ppo", to_dict(cfg), cfg.resume)
        state = ckpt[1] if ckpt else None
        if state:
            self._restore(state)
        weights = str(ckpt[0] / "policy") if ckpt else None
        fleet = start_fleet(cfg, self.policy, self.total_steps, weights, self.version)
        try:
            with GracefulStop() as stop:
                self.run_dir.expect_steps(cfg.ppo.steps)
                inflight: deque = self._load(fleet, ckpt[0], state) if ckpt else deque()
                if ckpt is None and self.eval_prompts:
                    self.evaluate(fleet)  # before any update
                start = state["step"] if state else 0
                if not inflight and start < cfg.ppo.steps:
                    inflight.append(self.launch_generate(fleet))
                for step in range(start, cfg.ppo.steps):
                    self.history.append(self.step(fleet, step, inflight))
                    self.guard.check()
                    every, last = cfg.train.eval_every, step + 1 == cfg.ppo.steps
                    if self.eval_prompts and (last or (every and (step + 1) % every == 0)):
                        self.evaluate(fleet)
                    every = cfg.train.checkpoint_every
                    if stop.requested or (every and (last or (step + 1) % every == 0)):
                        where = self.save_checkpoint(fleet, step + 1, inflight)
                        if stop.requested:
                            raise Stopped(f"ppo: stopped by {stop.requested} after step {step + 1} of "
                                          f"{cfg.ppo.steps}; checkpoint {where}; the same command resumes")
                    faults.maybe("ppo.after_step", step + 1)
            fleet.policy.call(lambda a, r: a.save.remote(str(self.run_dir.final("ppo")), False), self.timeout,
                              "save")
        except GroupError as e:
            raise checkpoint.learner_lost(e, self.run_dir.path, "ppo") or e
        finally:
            fleet.kill()
        return self.history

    def step(self, fleet: Fleet, step: int, inflight: deque) -> dict:
        """One PPO step on the oldest batch in flight; keeps up to max_staleness batches generating ahead."""
        cfg, k = self.cfg, self.cfg.rollout.max_staleness
        faults.kill_actors("kill", step)
        t0 = time.perf_counter()
        table, scoring = self.collect(fleet, inflight.popleft())
        busy = rollout.seconds(table)  # the generators' sampling seconds for this batch (partly in earlier steps)
        while len(inflight) < k and step + len(inflight) + 1 < cfg.ppo.steps:
            inflight.append(self.launch_generate(fleet))  # overlap with training
        t1, depth = time.perf_counter(), len(inflight)  # batches generating while this one trains
        batch = rollout.collate(table, self.tokenizer.pad_token_id)
        staleness = self.version - batch.policy_version
        assert int(staleness.max()) <= k, f"sample {int(staleness.max())} versions old, bound {k}"
        exp, stats = self.make_experience(batch, self.score(fleet, table, batch, scoring))
        t2 = time.perf_counter()
        losses = self.train(fleet, exp)
        self.version += 1
        t3 = time.perf_counter()
        sync = self.sync(fleet)
        if not inflight and step + 1 < cfg.ppo.steps:
            inflight.append(self.launch_generate(fleet))  # after the sync: on-policy
        loaded = self.synced(fleet, sync)
        t4 = time.perf_counter()
        self.kl_ctl.update(stats["kl_mean"], self.samples)
        gen_tokens = int(batch.response_mask.sum())
        row = {"step": step, "policy_version": self.version, **{k_: v for k_, v in stats.items()
                                                                  if not k_.startswith("_")},
               "actor_restarts": sum(g.restarts for g in (fleet.generators, *fleet.scorers().values()) if g),
               **losses, "staleness_max": int(staleness.max()), "staleness_mean": staleness.float().mean().item(),
               "tokens_per_s": gen_tokens / max(t4 - t0, 1e-9), "time_generate_s": t1 - t0,
               "time_score_s": t2 - t1, "time_train_s": t3 - t2, "time_sync_s": t4 - t3,
               "sync_bytes": sum(r["bytes"] for r in loaded), "buffer_depth": depth,
               "generator_busy_s": busy}
        self.run_dir.log_metrics(row)
        self.run_dir.write_rollouts(step, table.append_column("reward", pa.array(stats["_reward"].tolist()))
                                    .append_column("kl", _column(stats["_kl_seq"], len(stats["_reward"])))
                                    .append_column("staleness", pa.array(staleness.tolist())))
        return row

    # ------------------------------------------------------------ checkpoints

    def save_checkpoint(self, fleet: Fleet, steps_done: int, inflight: deque) -> Path:
        """Learners (weights, optimizer, schedule), the batches in flight (waited for: their samples came from
        older weights, which the checkpoint does not keep), and the driver's state; complete or absent."""
        tmp = checkpoint.begin(self.run_dir.path, "ppo", steps_done)
        for name, group in fleet.learners():
            group.call(lambda a, r: a.save.remote(str(tmp / name), True), self.timeout, f"checkpoint: {name}")
        for j, batch in enumerate(inflight):
            for i, share in self.generated(fleet, batch, "checkpoint: rollouts in flight"):
                self.run_dir.write_table(share, tmp / "buffer" / f"batch_{j}_share_{i}.parquet")
                batch.refs[i] = ray.put(share)
        state = {"step": steps_done, "version": self.version, "kl_coef": self.kl_ctl.value,
                 "rng": checkpoint.rng_state(self.rng), "launches": self.launches, "buffer": len(inflight),
                 "shares": len(fleet.generators), "rows": self.run_dir.metrics(self.run_dir.stage),
                 "config": to_dict(self.cfg)}
        return checkpoint.commit(tmp, state, self.cfg.train.keep_checkpoints)

    def _restore(self, state: dict) -> None:
        """The driver's side of a checkpoint (before any actor starts)."""
        self.version, self.kl_ctl.value, self.launches = state["version"], state["kl_coef"], state["launches"]
        checkpoint.set_rng_state(self.rng, state["rng"])
        self.run_dir.replace_metrics(self.run_dir.stage, state["rows"])
        self.history = [r for r in state["rows"] if "reward_mean" in r]
        self.evals = [r for r in state["rows"] if "eval_reward_mean" in r]
        print(f"ppo: resuming after step {state['step']} (policy version {self.version}) from the checkpoint",
              flush=True)

    def _load(self, fleet: Fleet, path: Path, state: dict) -> deque:
        """Learner states into the fresh actors; the saved batches back in flight, in order."""
        for name, group in fleet.learners():
            group.call(lambda a, r: a.load_checkpoint.remote(str(path / name)), self.timeout, f"resume: {name}")
        if state["buffer"] and state["shares"] != len(fleet.generators):
            raise ConfigError([f"resume: the checkpoint holds batches split over {state['shares']} generators, "
                               f"the run now has {len(fleet.generators)}; resume with "
                               f"cluster.roles.generator.count={state['shares']}"])

        def saved(j: int) -> generation.Launch:  # a batch whose samples are in: its refs hold the tables
            refs = [ray.put(pq.read_table(path / "buffer" / f"batch_{j}_share_{i}.parquet"))
                    for i in range(state["shares"])]
            return generation.Launch([], None, None, refs, list(fleet.generators.actors))

        return deque(saved(j) for j in range(state["buffer"]))


def run(cfg: Config, run_dir: RunDir) -> StageResult:
    """The PPO stage: `cfg.model.policy` is the starting policy (the SFT output in a pipeline)."""
    trainer = PPOTrainer(cfg, run_dir)
    history = trainer.fit()
    first, last, out = history[0], history[-1], run_dir.final("ppo")
    line = f"ppo: reward {first['reward_mean']:.3f} -> {last['reward_mean']:.3f}, kl {_text(last['kl_mean'])}"
    metrics = {"reward_first": first["reward_mean"], "reward_last": last["reward_mean"], "kl_last": last["kl_mean"]}
    if len(trainer.evals) >= 2:
        before, after = trainer.evals[0], trainer.evals[-1]
        line += (f"; held-out prompts ({before['eval_samples']} samples): reward {before['eval_reward_mean']:.3f} "
                 f"-> {after['eval_reward_mean']:.3f}, kl to the reference {_text(after['eval_kl_mean'])}")
        metrics.update(eval_reward_before=before["eval_reward_mean"], eval_reward_after=after["eval_reward_mean"],
                       eval_kl_after=after["eval_kl_mean"])
        if "eval_gold_mean" in before:
            line += f", gold {before['eval_gold_mean']:.3f} -> {after['eval_gold_mean']:.3f}"
            metrics.update(eval_gold_before=before["eval_gold_mean"], eval_gold_after=after["eval_gold_mean"])
    return StageResult({"policy": str(out)}, f"{line}; policy in {out}", metrics=metrics)


def _mean(x: Optional[torch.Tensor]) -> Optional[float]:  # None: not computed (the KL without a reference)
    return None if x is None else x.mean().item()


def _column(x: Optional[torch.Tensor], n: int) -> pa.Array:
    return pa.array([None] * n if x is None else x.tolist(), pa.float64())


def _text(x: Optional[float]) -> str:
    return "not computed (no reference: kl_coef 0)" if x is None else f"{x:.3f}"


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
