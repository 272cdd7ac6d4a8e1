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
from typing import Callable, Optional

from actors.learner import Learner
from cluster import pools
from cluster.actor_group import ActorGroup, GroupError
from rlhf_ray import data
from rlhf_ray.algos import batching, forward
from rlhf_ray.config import Config, to_dict
from rlhf_ray.runtime import checkpoint, faults
from rlhf_ray.runtime.run_dir import RunDir
from rlhf_ray.runtime.stopping import GracefulStop, SkipGuard, Stopped

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
                                                             len(schedule)), slots=placement.slots(LEARNER_ROLE),
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
    timeout, every, history = cfg.cluster.call_timeout_s, cfg.train.eval_every, []
    run_dir.expect_steps(len(schedule))
    start = _resume(cfg, run_dir, job, group)
    if start is not None:
        history = [r for r in run_dir.metrics(run_dir.stage) if "loss" in r]
    elif job.eval:  # the starting point, so "eval loss falls" is measured against the untrained model
        history.append({"step": 0, **_evaluate(job, group, timeout)})
        run_dir.log_metrics(history[-1])
    guard = SkipGuard(cfg.train.max_skipped_updates)
    with GracefulStop() as stop:
        for step, idx in enumerate(schedule[start or 0:], (start or 0) + 1):
            shards = group.shard(job.collate([job.train[i] for i in idx]))
            metrics = group.call(lambda a, r: a.train_step.remote(shards[r], job.loss), timeout,
                                 f"{job.stage}: train step {step}")[0]  # equal on every rank
            guard.see(metrics["skipped"], f"{job.stage} step {step}")
            row = {"step": step, **metrics}
            if job.eval and (step == len(schedule) or (every and step % every == 0)):
                row.update(_evaluate(job, group, timeout))
            history.append(row)
            run_dir.log_metrics(row)
            guard.check()
            n = cfg.train.checkpoint_every
            if stop.requested or (n and (step == len(schedule) or step % n == 0)):
                where = _checkpoint(cfg, run_dir, job, group, step)
                if stop.requested:
                    raise Stopped(f"{job.stage}: stopped by {stop.requested} after step {step} of {len(schedule)}; "
                                  f"checkpoint {where}; the same command resumes")
            faults.maybe("supervised.after_step", step)
    return history


def _checkpoint(cfg: Config, run_dir: RunDir, job: Job, group: ActorGroup, step: int):
    """The learner's weights, optimizer and schedule, and the stage's metrics rows; the data order is the seeded
    schedule, so `step` says where to go on."""
    tmp = checkpoint.begin(run_dir.path, job.stage, step)
    group.call(lambda a, r: a.save.remote(str(tmp / "learner"), True), cfg.cluster.call_timeout_s,
               f"{job.stage}: checkpoint")
    state = {"step": step, "rows": run_dir.metrics(run_dir.stage), "config": to_dict(cfg)}
    return checkpoint.commit(tmp, state, cfg.train.keep_checkpoints)


def _resume(cfg: Config, run_dir: RunDir, job: Job, group: ActorGroup) -> Optional[int]:
    """Steps already done, from the newest complete checkpoint (resume: auto), or None for a fresh start."""
    ckpt = checkpoint.resume_point(run_dir.path, job.stage, to_dict(cfg), cfg.resume)
    if ckpt is None:
        return None
    path, state = ckpt
    group.call(lambda a, r: a.load_checkpoint.remote(str(path / "learner")), cfg.cluster.call_timeout_s,
               f"{job.stage}: resume")
    run_dir.replace_metrics(run_dir.stage, state["rows"])
    print(f"{job.stage}: resuming after step {state['step']} from the checkpoint", flush=True)
    return state["step"]


def _evaluate(job: Job, group: ActorGroup, timeout: float) -> dict[str, float]:
    """The loss's metrics over the whole held-out set, as `eval_<name>`."""
    shards = group.shard(job.collate(job.eval))
    out = group.call(lambda a, r: a.evaluate.remote(shards[r], job.loss), timeout, f"{job.stage}: evaluate")[0]
    return {f"eval_{k}": v for k, v in out.items()}
