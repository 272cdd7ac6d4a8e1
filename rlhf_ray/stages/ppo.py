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
import shutil
import time
from collections import deque
from pathlib import Path
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from cluster import pools
from cluster.actor_group import GroupError
from rlhf_ray import data, models, rollout
from rlhf_ray.algos import experience, ppo_losses, rl_math
from rlhf_ray.config import Config, to_dict
from rlhf_ray.runtime import checkpoint, control, faults
from rlhf_ray.rewards import distinct_2
from rlhf_ray.runtime.guard import Guard, GuardSettings
from rlhf_ray.runtime.run_dir import RunDir
from rlhf_ray.stages import dynamic_sampling, generation, headline
from rlhf_ray.stages.fleet import Calls, Fleet, Scoring, start_fleet
from rlhf_ray.stages.loop import Loop
from rlhf_ray.stages.push import Probe, SyncMismatch
from rlhf_ray.stages.result import StageResult


class PPOTrainer:
    """Runs `cfg.ppo.steps` PPO steps; writes metrics.jsonl, rollouts/*.parquet and final/ppo to the run dir."""

    def __init__(self, cfg: Config, run_dir: RunDir, policy: Optional[str] = None):
        self.cfg, self.run_dir = cfg, run_dir
        self.policy = models.resolve_model(policy or cfg.model.policy)
        self.tokenizer = models.load_tokenizer(cfg.model.tokenizer or self.policy, cfg.model.trust_remote_code)
        self.prompts = self._load_prompts()
        p, r, t = cfg.ppo, cfg.rollout, cfg.train
        self.samples = r.batch_size * r.n_samples
        self.total_steps = p.steps * p.epochs * (self.samples // p.mini_batch_size)
        kl = (rl_math.AdaptiveKLController(p.kl_coef, p.kl_target, p.kl_horizon) if p.kl_target
              else rl_math.FixedKLController(p.kl_coef))
        self.kl_ctl, self.version, self.rng, self.launches = kl, 0, random.Random(cfg.seed), 0
        # One update per batch, sampled by the weights being trained: π_θold is the learner itself, so its
        # log-probs need no separate forward (ppo_losses.policy_loss, on_policy).
        self.on_policy = r.max_staleness == 0 and p.epochs == 1 and p.mini_batch_size == self.samples
        self.settings = experience.Settings(p.advantage, p.kl_estimator, p.kl_in_reward, p.gamma, p.lam,
                                            r.n_samples, cfg.reward.clip, cfg.reward.no_eos_penalty,
                                            cfg.reward.normalize, self.on_policy, p.scale_rewards)
        self.guard_settings = GuardSettings(p.kl_budget, p.keep_best, p.hack_window, cfg.data.max_response_len,
                                            p.length_collapse, p.distinct2_floor)
        self.guard = Guard(self.guard_settings)
        self.loop = Loop("ppo", p.steps, t.eval_every, t.checkpoint_every, t.max_skipped_updates, run_dir,
                         "ppo.after_step", evaluates=bool(self.eval_prompts),
                         stop_early=lambda: self.guard.stop_reason)
        self.best_at_checkpoint: Optional[int] = None  # the kept policy the newest checkpoint names
        self.history: list[dict] = []
        self.fleet: Optional[Fleet] = None  # while `fit` runs
        self.inflight: deque[Calls] = deque()  # batches generating, oldest first
        self.said: set = set()  # scale lines said once (and asks that found no room)

    @property
    def evals(self) -> list[dict]:
        """The held-out evaluation rows, in order (the guard sees each one)."""
        return self.guard.evals

    def _load_prompts(self) -> list[dict]:
        ds, d = self.cfg.data.prompts, self.cfg.data
        if ds.path is None:
            raise data.DataError("data.prompts.path: PPO needs a prompts dataset")
        limits = data.Limits(d.max_prompt_len, d.max_response_len, d.truncation)

        def encode(rows: list[dict], report: data.LoadReport) -> list[dict]:
            return [{"prompt": row["prompt"], "ids": ids, "columns": row["columns"]} for row, ids in
                    data.encode_kept(self.tokenizer, rows, "prompts", limits, report, d.apply_chat_template)]

        train, self.eval_prompts, reports = data.load_held_out(ds, "prompts", d.skip_malformed, self.cfg.seed, encode)
        print("; ".join(map(str, reports)) + f"; {len(self.eval_prompts)} prompts held out", flush=True)
        return [{**p, "index": i} for i, p in enumerate(train)]  # rollout.PROMPT_INDEX

    # ------------------------------------------------------------ the run

    def fit(self) -> list[dict]:
        """The run: resumes from the newest complete checkpoint (resume: auto); `loop.Loop` checkpoints every
        train.checkpoint_every steps and on SIGTERM / Ctrl-C (then raises stopping.Stopped)."""
        cfg = self.cfg
        ckpt = checkpoint.resume_point(self.run_dir.path, "ppo", to_dict(cfg), cfg.resume)
        if ckpt:
            self._restore(ckpt[1])
        weights = str(ckpt[0] / "policy") if ckpt else None
        probe = Probe.make(self.tokenizer, self.prompts[0]["ids"], cfg.model.dtype, cfg.data.max_response_len)
        self.fleet = start_fleet(cfg, self.policy, self.total_steps, weights, self.version, probe)
        # Where every actor is (the node of each), and of each replacement: the steps done when it was placed.
        self.run_dir.log_placement("start", len(self.history), pools.records(self.fleet.placement))
        self.fleet.moved = lambda event, records: self.run_dir.log_placement(event, len(self.history), records)
        try:
            if ckpt:
                self._load(*ckpt)
            self.loop.run(self, ckpt[1]["step"] if ckpt else 0)
            if self.guard.best is None:
                self.fleet.save_policy(self.run_dir.final("ppo"))
            else:  # keep_best: the policy of the best held-out evaluation, saved when it was evaluated
                shutil.copytree(self._best_dir(self.guard.best["step"]), self.run_dir.final("ppo"), dirs_exist_ok=True)
        except GroupError as e:
            raise checkpoint.learner_lost(e, self.run_dir.path, "ppo") or e
        finally:
            self.fleet.kill()
        return self.history

    def step(self, n: int) -> dict:
        """PPO step n on the oldest batch in flight, keeping up to max_staleness batches generating ahead; its
        metrics row (rows and rollouts files number steps from 0: step n - 1)."""
        i, k, steps = n - 1, self.cfg.rollout.max_staleness, self.cfg.ppo.steps
        faults.pause("ppo.pause")
        t_scale = time.perf_counter()
        self._scale()
        if not self.inflight:  # the run's first batch; later ones are launched ahead, below
            self.inflight.append(self.launch_generate())
        faults.kill_actors("kill", i)
        t0 = time.perf_counter()  # a batch queued before a scale was sampled (partly) during it: see time_scale_s
        table, scoring = self.collect(self.inflight.popleft())
        if not self.inflight:
            self.fleet.push.rest()  # colocated generators free the GPU while the policy trains (sleep_level)
        while len(self.inflight) < k and i + len(self.inflight) + 1 < steps:
            self.inflight.append(self.launch_generate())  # overlap with training
        chosen = self.fill(table, scoring) if self.cfg.ppo.dynamic_sampling else None
        if chosen:
            table = chosen.answers.table
        busy = rollout.seconds(table)  # the generators' sampling seconds for this batch (partly in earlier steps)
        t1, depth = time.perf_counter(), len(self.inflight)  # batches generating while this one trains
        batch = rollout.collate(table, self.tokenizer.pad_token_id)
        staleness = self.version - batch.policy_version
        assert int(staleness.max()) <= k, f"sample {int(staleness.max())} versions old, bound {k}"
        exp = self.make_experience(self.score(table, batch, scoring, chosen and chosen.answers))
        t2 = time.perf_counter()
        losses = self.train(exp)
        self.version += 1
        t3 = time.perf_counter()
        loaded = self.sync(launch_next=i + 1 < steps)
        t4 = time.perf_counter()
        stats = exp.metrics()
        self.kl_ctl.update(stats["kl_mean"], self.samples)
        row = {"step": i, "policy_version": self.version, **stats, "actor_restarts": self.fleet.restarts(),
               **losses, "staleness_max": int(staleness.max()), "staleness_mean": staleness.float().mean().item(),
               "tokens_per_s": int(batch.response_mask.sum()) / max(t4 - t0, 1e-9), "time_generate_s": t1 - t0,
               "time_score_s": t2 - t1, "time_train_s": t3 - t2, "time_sync_s": t4 - t3, "time_scale_s": t0 - t_scale,
               "sync_bytes": sum(r["bytes"] for r in loaded), "sync_probe_gap": self.fleet.push.gap(),
               "buffer_depth": depth, "generator_busy_s": busy,
               **{f"fleet_size_{role}": n for role, n in self.fleet.sizes().items()},
               **(chosen.stats if chosen else {})}
        self._check_gap(row)
        self.run_dir.write_rollouts(i, table.append_column("reward", pa.array(exp.task_reward.tolist()))
                                    .append_column("kl", _column(exp.kl, len(exp.task_reward)))
                                    .append_column("staleness", pa.array(staleness.tolist())))
        self.history.append(row)
        return row

    def _scale(self) -> None:
        """The fleet to the size `rlhf-ray scale` asks (runtime/control.py), between steps. An ask that found no
        room is not tried again until it is asked again."""
        try:
            wanted = control.read(self.run_dir.path)
        except control.ControlError as e:
            wanted = {}
            self._say_once(f"scale: {e}")
        sizes = self.fleet.sizes()
        asked_at = (self.run_dir.path / control.FILE).stat().st_mtime_ns if wanted else None
        for role, n in wanted.items():
            ask = (role, n, asked_at)
            if role not in sizes:
                self._say_once(f"scale: {role}: this run has no {role} actors")
            elif sizes[role] != n and ask not in self.said:
                print(f"scale: {role} {sizes[role]} -> {n}", flush=True)
                try:
                    self.fleet.scale(role, n, list(self.inflight))
                except pools.NoCapacity as e:
                    self._say_once(f"scale: {e}", ask)

    def _say_once(self, line: str, key=None) -> None:
        if (key or line) not in self.said:
            self.said.add(key or line)
            print(line, flush=True)

    def _check_gap(self, row: dict) -> None:
        """The step's logprob_gap (learner against generator, on the batch's samples) under the probe's bound when
        the two held the same weights and the generator's log-probs are the full distribution's (no top_k, top_p 1)."""
        gap, probe = row.get("logprob_gap"), self.fleet.push.probe
        truncated = self.cfg.rollout.top_p < 1 or self.cfg.rollout.top_k
        if gap is None or probe is None or row["staleness_max"] or truncated:
            return
        if not gap <= probe.tolerance:
            raise SyncMismatch(f"step {row['step']}: the generators sampled with log-probs that differ from policy "
                               f"rank 0's on the same weights (version {self.version - 1}) by {gap:.2e} on average "
                               f"(logprob_gap; tolerance {probe.tolerance:g}): they serve other weights")

    # ------------------------------------------------------------ phases: generate, score, experience, train, sync

    def launch_generate(self, prompts: Optional[list[dict]] = None) -> Calls:
        """Queue one batch (the next training prompts, or `prompts`) on the generators, a near-equal share each."""
        params = generation.sampling(self.cfg, self.cfg.rollout.n_samples, self.cfg.data.max_response_len)
        self.launches += 1  # each batch samples with a seed of its own (see Generator.generate)
        seed = self.cfg.seed * 1_000_003 + self.launches * 7919
        calls = self.fleet.generate(prompts or self._next_prompts(), params, seed)
        faults.kill_actors("kill_after_launch", self.launches)
        return calls

    def _next_prompts(self) -> list[dict]:
        return [self.rng.choice(self.prompts) for _ in range(self.cfg.rollout.batch_size)]

    def collect(self, calls: Calls) -> tuple[pa.Table, Scoring]:
        """Each generator's share as it lands, sent at once to the scorers: scoring overlaps the generation still
        running on other generators. Returns the rollouts in generator order (groups numbered across the batch)
        and their scoring."""
        shares, scoring = {}, self.fleet.scoring()
        for i, share in self.fleet.results(calls, "generate"):
            shares[i] = share
            scoring.send(i, share)
        return generation.join([shares[i] for i in sorted(shares)]), scoring

    def fill(self, table: pa.Table, scoring: Scoring) -> dynamic_sampling.Choice:
        """DAPO's dynamic sampling (stages/dynamic_sampling.py): refill rounds of rollout.batch_size new prompts,
        each sampled and scored at once, until enough groups have varied rewards or ppo.refill_rounds ran out."""
        n, want, bound = self.cfg.rollout.n_samples, self.cfg.rollout.batch_size, self.cfg.ppo.refill_rounds
        rounds = [self._answers(table, scoring)]
        while not dynamic_sampling.enough(rounds, n, want) and len(rounds) <= bound:
            rounds.append(self._answers(*self.collect(self.launch_generate())))
        chosen = dynamic_sampling.choose(rounds, n, want)
        if chosen.stats["groups_short"]:
            print(f"dynamic sampling: step {self.version + 1} trains on {chosen.stats['groups_short']} of {want} "
                  f"groups with equal rewards: {bound} refill rounds found too few varied ones (ppo.refill_rounds)",
                  flush=True)
        return chosen

    def _answers(self, table: pa.Table, scoring: Scoring) -> dynamic_sampling.Answers:
        ref = None if self._reference_in_policy() else self.fleet.ref_logprobs(scoring, "score: reference")
        return dynamic_sampling.Answers(table, self.task_rewards(scoring)[0], ref)

    def score(self, table: pa.Table, batch: rollout.RolloutBatch, scoring: Scoring,
              answers: Optional[dynamic_sampling.Answers] = None) -> experience.ScoredBatch:
        """Old log-probs and values from the learners (the whole batch, one equal shard per rank: ZeRO-3 forwards
        are collective), sent first so they run while the scorers' answers are awaited (or taken from `answers`,
        dynamic sampling's, already awaited). On-policy, μ stands in for π_θold (see __init__)."""
        old = None if self.on_policy else self.fleet.old_logprobs(batch)
        values = self.fleet.old_values(batch)
        ref_lp = self._ref_logprobs(scoring, batch, "score: reference", answers)
        task = answers.task if answers else self.task_rewards(scoring)[0]
        old_lp = batch.logprobs if old is None else old.get()
        values = None if values is None else values.get()
        ended = torch.tensor([f == "stop" for f in table.column("finish_reason").to_pylist()])
        mask = batch.response_mask
        ref_lp, values = (None if x is None else x * mask for x in (ref_lp, values))
        return experience.ScoredBatch(rollouts=batch, task_reward=task, ref_logprobs=ref_lp, old_logprobs=old_lp * mask,
                                      old_values=values, ended=ended)

    def _ref_logprobs(self, scoring: Scoring, batch: rollout.RolloutBatch, phase: str,
                      answers: Optional[dynamic_sampling.Answers] = None) -> Optional[torch.Tensor]:
        """The reference's log-probs as one (B, T) batch; None without a reference. With LoRA and no reference
        model of its own, the policy learner's with its adapters off."""
        if self._reference_in_policy():
            return self.fleet.base_logprobs(batch).get()
        rows = answers.ref_rows if answers else self.fleet.ref_logprobs(scoring, phase)
        return None if rows is None else _pad(rows, batch.response_mask.shape[1])

    def _reference_in_policy(self) -> bool:
        return self.cfg.uses_reference() and self.cfg.reference_in_policy()

    def task_rewards(self, scoring: Scoring) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Reward model scores and reward functions, weighted and summed: (B,); and each function's own (B,)."""
        rewards = self.fleet.rewards(scoring)
        parts = [] if rewards.model is None else [self.cfg.reward.model_weight * torch.tensor(rewards.model)]
        by_fn = {spec: torch.tensor(scores) for spec, scores in rewards.functions.items()}
        parts += [f.weight * by_fn[f.function] for f in self.cfg.reward.functions]
        return torch.stack(parts).sum(0), by_fn

    def make_experience(self, scored: experience.ScoredBatch) -> experience.Experience:
        return experience.make_experience(scored, self.settings, self.kl_ctl.value)

    def train(self, exp: experience.Experience) -> dict:
        """PPO epochs over shuffled mini-batches; each mini-batch is one optimizer step of policy and critic."""
        p, skipped = self.cfg.ppo, self.loop.skipped
        pol_loss = ppo_losses.make_policy_loss(p.clip_eps, p.dual_clip, p.entropy_coef,
                                               0.0 if p.kl_in_reward else self.kl_ctl.value, p.kl_estimator,
                                               self.on_policy, self.cfg.rollout.temperature, p.loss_agg,
                                               self.cfg.data.max_response_len, p.clip_eps_high)
        val_loss = ppo_losses.make_value_loss(p.value_clip_eps)
        sums: dict[str, float] = {}
        n = 0
        g = torch.Generator().manual_seed(self.cfg.seed * 7919 + self.version)
        for _ in range(p.epochs):
            order = torch.randperm(self.samples, generator=g)
            for start in range(0, self.samples, p.mini_batch_size):
                idx = rollout.by_prompt_length(order[start : start + p.mini_batch_size], exp.response_mask,
                                               exp.attention_mask)
                mb = exp.mini_batch(idx)
                policy, critic = self.fleet.train_policy(mb, pol_loss), self.fleet.train_critic(mb, val_loss)
                out = policy.get()
                skipped.see(out["skipped"], f"ppo policy update (version {self.version})")
                if critic is not None:
                    c = critic.get()
                    skipped.see(c["skipped"], f"ppo critic update (version {self.version})")
                    out = {**out, **c, "skipped": out["skipped"] + c["skipped"]}
                for key, v in out.items():
                    sums[key] = sums.get(key, 0.0) + v
                n += 1
        means = {k: v / n for k, v in sums.items() if k in ("policy_loss", "value_loss", "clip_frac", "entropy",
                                                             "approx_kl", "grad_norm", "logprob_gap")}
        return {**means, "skipped_updates": int(sums.get("skipped", 0))}

    def sync(self, launch_next: bool) -> list[dict]:
        """Weights v+1 from policy rank 0 to every generator; each generator's load report. With no batch in
        flight, the next one (`launch_next`) is queued behind the new weights: on-policy."""
        loaded = self.fleet.push(self.version)
        if not self.inflight and launch_next:
            self.inflight.append(self.launch_generate())
        return loaded

    def evaluate(self, n: int = 0) -> dict:
        """The held-out prompts at the generators' current weights (policy version n): task reward, KL(π || π_ref)
        per response (k3, unbiased and non-negative), length; a row of its own. The samples go to
        rollouts/eval_vNNNNNN.parquet."""
        table, scoring = self.collect(self.launch_generate(self.eval_prompts))
        batch = rollout.collate(table, self.tokenizer.pad_token_id)
        mask = batch.response_mask
        ref_lp = self._ref_logprobs(scoring, batch, "eval: reference")
        task, by_fn = self.task_rewards(scoring)
        kl = None if ref_lp is None else rl_math.masked_sum(rl_math.kl_estimate(batch.logprobs, ref_lp, "k3") * mask,
                                                            mask, dim=1)
        table = table.append_column("reward", pa.array(task.tolist())).append_column("kl", _column(kl, len(task)))
        if self.cfg.ppo.gold:
            table = table.append_column(headline.GOLD, pa.array(by_fn[self.cfg.ppo.gold].tolist(), pa.float64()))
        self.run_dir.write_rollouts(headline.eval_name(self.version), table)
        row = {"step": self.version, "policy_version": self.version, "eval_reward_mean": task.mean().item(),
               "eval_reward_std": task.std().item() if len(task) > 1 else 0.0, "eval_kl_mean": _mean(kl),
               "eval_response_length_mean": mask.sum(1).mean().item(), "eval_samples": len(task)}
        if self.cfg.ppo.gold:
            row["eval_gold_mean"] = by_fn[self.cfg.ppo.gold].mean().item()
        row["eval_distinct2"] = distinct_2(table.column("response").to_pylist())
        for alarm in self.guard.see(row):
            print(f"ppo guard alarm, {alarm}", flush=True)
        if self.guard.is_new_best(row):
            self._keep_best(row["step"])
        if self.cfg.ppo.keep_best:  # the policy the run would end with, were it to end now
            row["eval_kept_step"] = self.guard.best and self.guard.best["step"]
        return row

    def _best_dir(self, version: int) -> Path:
        return checkpoint.stage_dir(self.run_dir.path, "ppo") / "best" / f"v{version:06d}"

    def _keep_best(self, version: int) -> None:
        """The policy at `version` (the learner's weights: evaluations run between steps) as an HF folder, kept
        until a better one is kept and the next checkpoint no longer names it (`_prune_best`)."""
        folder = self._best_dir(version)
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.fleet.save_policy(tmp)
        tmp.replace(folder)
        self._prune_best(keep={version, self.best_at_checkpoint})

    def _prune_best(self, keep: set) -> None:
        for old in self._best_dir(0).parent.glob("v*"):
            if int(old.name[1:7]) not in keep or old.name.endswith(".tmp"):
                shutil.rmtree(old, ignore_errors=True)

    # ------------------------------------------------------------ checkpoints

    def checkpoint(self, n: int) -> Path:
        """Learners (weights, optimizer, schedule), the batches in flight (waited for: their samples came from
        older weights, which the checkpoint does not keep), and the driver's state; complete or absent."""
        tmp = checkpoint.begin(self.run_dir.path, "ppo", n)
        self.fleet.save_checkpoint(tmp)
        for j, calls in enumerate(self.inflight):
            for i, share in self.fleet.results(calls, "checkpoint: rollouts in flight"):
                self.run_dir.write_table(share, tmp / "buffer" / f"batch_{j}_share_{i}.parquet")
                calls.keep(i, share)
        state = {"step": n, "version": self.version, "kl_coef": self.kl_ctl.value,
                 "rng": checkpoint.rng_state(self.rng), "launches": self.launches, "buffer": len(self.inflight),
                 "shares": len(self.fleet.generators), "rows": self.run_dir.metrics(self.run_dir.stage),
                 "guard": self.guard.state(), "config": to_dict(self.cfg)}
        where = checkpoint.commit(tmp, state, self.cfg.train.keep_checkpoints)
        self.best_at_checkpoint = self.guard.best and self.guard.best["step"]
        self._prune_best(keep={self.best_at_checkpoint})
        return where

    def _restore(self, state: dict) -> None:
        """The driver's side of a checkpoint (before any actor starts)."""
        self.version, self.kl_ctl.value, self.launches = state["version"], state["kl_coef"], state["launches"]
        checkpoint.set_rng_state(self.rng, state["rng"])
        self.run_dir.replace_metrics(self.run_dir.stage, state["rows"])
        self.history = [r for r in state["rows"] if "reward_mean" in r]
        self.guard = Guard.restore(self.guard_settings, state.get("guard"),
                                   [r for r in state["rows"] if "eval_reward_mean" in r])
        self.best_at_checkpoint = self.guard.best and self.guard.best["step"]
        self._prune_best(keep={self.best_at_checkpoint})  # a best kept after the checkpoint is replayed
        print(f"ppo: resuming after step {state['step']} (policy version {self.version}) from the checkpoint",
              flush=True)

    def _load(self, path: Path, state: dict) -> None:
        """Learner states into the fresh actors; the saved batches back in flight, in order."""
        self.fleet.load_checkpoint(path)
        # The batches were split over state["shares"] generators; the run may have another count now (answered
        # calls need no generator).
        self.inflight = deque(Calls.answered(self.fleet.generators,
                                             [pq.read_table(path / "buffer" / f"batch_{j}_share_{i}.parquet")
                                              for i in range(state["shares"])])
                              for j in range(state["buffer"]))


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
    guard, metrics = _guard_line(trainer), {**metrics, **_guard_metrics(trainer)}
    best = trainer.guard.best
    gold_metrics, gold_lines = ({}, []) if not cfg.ppo.gold else headline.report(
        run_dir, [r["step"] for r in trainer.evals], best and best["step"])
    return StageResult({"policy": str(out)}, "\n".join([line, f"{guard}; policy in {out}", *gold_lines]),
                       metrics={**metrics, **gold_metrics})


def _guard_line(trainer: PPOTrainer) -> str:
    """What the reward-hacking guard did: the policy kept, the alarms, an early end."""
    g, p = trainer.guard, trainer.cfg.ppo
    parts = []
    if g.best is not None:
        kept = next(r for r in trainer.evals if r["step"] == g.best["step"])
        held = ", ".join(f"{k} {kept[f'eval_{k}_mean']:.3f}" for k in ("reward", "gold", "kl")
                         if kept.get(f"eval_{k}_mean") is not None)
        within = "" if p.kl_budget is None else f" within ppo.kl_budget {p.kl_budget:g}"
        parts.append(f"kept the policy of step {g.best['step']} of {trainer.version} (the best held-out {p.keep_best} "
                     f"of {len(trainer.evals)} evaluations{within}; {held})")
    else:
        parts.append(f"kept the last policy (step {trainer.version})")
    parts.append(f"{len(g.alarms)} alarm(s)" + (f", the first at {g.alarms[0]}" if g.alarms else ""))
    if trainer.loop.stopped_early:
        parts.append(f"ended early: {trainer.loop.stopped_early}")
    return "ppo guard: " + "; ".join(parts)


def _guard_metrics(trainer: PPOTrainer) -> dict:
    g = trainer.guard
    return {"guard_kept_step": g.best["step"] if g.best else trainer.version, "guard_alarms_total": len(g.alarms),
            "guard_stopped_early": trainer.loop.stopped_early}


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
