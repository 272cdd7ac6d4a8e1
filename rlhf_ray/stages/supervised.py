"""The loop the supervised stages share (SFT, reward model, DPO): one DeepSpeed learner group, a fixed dataset,
optimizer steps over seeded shuffles, held-out evaluation, metrics, and the final HF folder.

A stage builds a `Job` (encoded rows, a collate function, a `forward.Loss`) and calls `run`. Data is loaded,
checked and tokenized before any actor starts, so a bad row stops the run before compute is spent.

metrics.jsonl rows: `step` counts optimizer steps done. With an eval split, a row at step 0 holds the eval
metrics of the starting model (`eval_loss`, ...: what training must improve on); every training row has `loss`
and the loss's own metrics on that step's batch, `grad_norm`, `lr`, and the `eval_*` metrics on the steps where
evaluation runs (every `train.eval_every` steps and at the last step).

The learner group is placed on the `policy` role (`cluster.roles.policy`: ranks, pool, CPUs/GPUs) for every
supervised stage, the reward model's included: a stage trains one model at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from actors.learner import Learner
from cluster import pools
from cluster.actor_group import ActorGroup, GroupError
from rlhf_ray import data
from rlhf_ray.algos import batching, forward
from rlhf_ray.config import Config, to_dict
from rlhf_ray.runtime import checkpoint
from rlhf_ray.runtime.run_dir import RunDir
from rlhf_ray.runtime.stopping import SkippedUpdates
from rlhf_ray.stages.loop import Loop

LEARNER_ROLE = "policy"


@dataclass
class Job:
    """One supervised stage's training, ready to run."""

    stage: str
    """sft | rm | dpo: names the actors, the metrics rows and final/<stage>."""
    model: str
    """Folder the learner starts from."""
    kind: str
    """Learner kind: `policy` (causal LM) or `reward` (sequence classifier)."""
    loss: forward.Loss
    train: list[dict]
    """Encoded training rows (what `collate` takes)."""
    eval: list[dict]
    """Encoded held-out rows (may be empty), a multiple of the learner ranks."""
    collate: Callable[[list[dict]], forward.Batch]


def load_split(cfg: Config, name: str, encode: Callable[[list[dict], data.LoadReport], list]
               ) -> tuple[list, list]:
    """Rows of dataset `data.<name>`, encoded by `encode(rows, report)`, split into (train, eval) by
    `eval_fraction` with the run's seed. The eval part is trimmed to a multiple of the learner ranks (every rank
    evaluates an equal shard)."""
    ds = getattr(cfg.data, name)
    if ds.path is None:
        raise data.DataError(f"data.{name}.path: this stage needs a {name} dataset")
    train, held_out, reports = data.load_held_out(ds, name, cfg.data.skip_malformed, cfg.seed, encode)
    ranks = cfg.cluster.roles[LEARNER_ROLE].count
    held_out = held_out[: len(held_out) - len(held_out) % ranks]
    print(f"{'; '.join(map(str, reports))}; {len(train)} for training, {len(held_out)} held out", flush=True)
    if len(train) < cfg.train.batch_size:
        raise data.DataError(f"{ds.path}: {len(train)} training rows are fewer than one batch "
                             f"(train.batch_size = {cfg.train.batch_size})")
    return train, held_out


def run(cfg: Config, run_dir: RunDir, job: Job, roles: tuple[str, ...] = (LEARNER_ROLE,),
        before_learners: Optional[Callable[[pools.Placement], None]] = None) -> list[dict]:
    """Place `roles`, call `before_learners(placement)` (DPO: reference log-probs), start the learner group,
    train, save run_dir.final(stage); returns the metrics rows. Every actor and placement group is released."""
    t = cfg.train
    schedule = batching.step_batches(len(job.train), t.batch_size, t.epochs, cfg.seed, t.max_steps)
    placement = pools.create(pools.plan(cfg.cluster, list(roles)), timeout_s=cfg.cluster.call_timeout_s)
    print(pools.describe(placement), flush=True)
    try:
        if before_learners is not None:
            before_learners(placement)
        group = ActorGroup(Learner, f"{job.stage}-learner", (job.model, job.kind, t, cfg.model.dtype, cfg.seed,
                                                             len(schedule), None, cfg.model.lora,
                                                             cfg.model.trust_remote_code),
                           slots=placement.slots(LEARNER_ROLE),
                             threads=cfg.cluster.roles[LEARNER_ROLE].threads)
        try:
            history = _fit(cfg, run_dir, job, group, schedule)
            out = str(run_dir.final(job.stage))
            group.call(lambda a, r: a.save.remote(out, False), cfg.cluster.call_timeout_s, f"{job.stage}: save")
        except GroupError as e:
            raise checkpoint.learner_lost(e, run_dir.path, job.stage) or e
        finally:
            group.kill()
    finally:
        pools.remove(placement)
    return history


def _fit(cfg: Config, run_dir: RunDir, job: Job, group: ActorGroup, schedule: list[list[int]]) -> list[dict]:
    t = cfg.train
    loop = Loop(job.stage, len(schedule), t.eval_every, t.checkpoint_every, t.max_skipped_updates, run_dir,
                "supervised.after_step", evaluates=bool(job.eval), eval_in_step_row=True)
    training = _Training(cfg, run_dir, job, group, schedule, loop.skipped)
    start = training.resume()
    resumed = [r for r in run_dir.metrics(run_dir.stage) if "loss" in r] if start else []
    return resumed + loop.run(training, start)


@dataclass
class _Training:
    """A supervised stage's steps, evaluation and checkpoints, as `loop.Loop` runs them."""

    cfg: Config
    run_dir: RunDir
    job: Job
    group: ActorGroup
    schedule: list[list[int]]
    """The training rows of each optimizer step (a seeded shuffle, so a step number says where to go on)."""
    skipped: SkippedUpdates

    def _call(self, fn: Callable, phase: str) -> Any:
        """fn(actor, rank) on every rank; rank 0's answer (a step's metrics are equal on every rank)."""
        return self.group.call(fn, self.cfg.cluster.call_timeout_s, f"{self.job.stage}: {phase}")[0]

    def step(self, n: int) -> dict:
        job = self.job
        shards = self.group.shard(job.collate([job.train[i] for i in self.schedule[n - 1]]))
        metrics = self._call(lambda a, r: a.train_step.remote(shards[r], job.loss), f"train step {n}")
        self.skipped.see(metrics["skipped"], f"{job.stage} step {n}")
        return {"step": n, **metrics}

    def evaluate(self, n: int) -> dict:
        """The loss's metrics over the whole held-out set, as `eval_<name>`."""
        shards = self.group.shard(self.job.collate(self.job.eval))
        out = self._call(lambda a, r: a.evaluate.remote(shards[r], self.job.loss), "evaluate")
        return {"step": n, **{f"eval_{k}": v for k, v in out.items()}}

    def checkpoint(self, n: int) -> Path:
        """The learner's weights, optimizer and schedule, and the stage's metrics rows."""
        tmp = checkpoint.begin(self.run_dir.path, self.job.stage, n)
        self._call(lambda a, r: a.save.remote(str(tmp / "learner"), True), "checkpoint")
        state = {"step": n, "rows": self.run_dir.metrics(self.run_dir.stage), "config": to_dict(self.cfg)}
        return checkpoint.commit(tmp, state, self.cfg.train.keep_checkpoints)

    def resume(self) -> int:
        """Steps already done, from the newest complete checkpoint (resume: auto), into the learners; 0 for a
        fresh start."""
        ckpt = checkpoint.resume_point(self.run_dir.path, self.job.stage, to_dict(self.cfg), self.cfg.resume)
        if ckpt is None:
            return 0
        path, state = ckpt
        self._call(lambda a, r: a.load_checkpoint.remote(str(path / "learner")), "resume")
        self.run_dir.replace_metrics(self.run_dir.stage, state["rows"])
        print(f"{self.job.stage}: resuming after step {state['step']} from the checkpoint", flush=True)
        return state["step"]
