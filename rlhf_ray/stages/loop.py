"""The training loop every training stage shares (SFT, reward model and DPO through `supervised`, and PPO): the
order of a step's chores, written once.

    a fresh start: evaluate the starting model
    each step n:   train -> log its row (evaluation metrics in it, when due, for the supervised stages)
                   -> stop if too many updates in a row had a non-finite loss
                   -> evaluate, when due, as a row of its own (PPO) -> checkpoint, when due or after a SIGTERM /
                   Ctrl-C (then raise Stopped) -> end early if `stop_early` says so (PPO's KL budget) -> fault
                   point

A stage supplies the work as a `Steps` object; `Loop` decides when each piece runs. Steps are counted 1..total
(`n` = steps done once step n ends), the count checkpoints store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Protocol

from rlhf_ray.runtime import faults
from rlhf_ray.runtime.stopping import GracefulStop, SkippedUpdates, Stopped


class Steps(Protocol):
    """A stage's work, as the loop calls it."""

    def step(self, n: int) -> dict:
        """Train step n; its metrics row (the loop logs it). Each optimizer update's `skipped` goes to the loop's
        counter (`Loop.skipped.see`)."""

    def evaluate(self, n: int) -> dict:
        """The held-out metrics after n steps (n = 0: the starting model), as a row."""

    def checkpoint(self, n: int) -> Path:
        """Write a complete checkpoint of n steps; its folder."""


class RunLog(Protocol):
    """Where rows go (`RunDir`)."""

    def expect_steps(self, steps: Optional[int]) -> None: ...

    def log_metrics(self, row: dict) -> None: ...


@dataclass
class Loop:
    """When evaluation, checkpoints, the non-finite-loss check and the fault point run around a stage's steps."""

    stage: str
    """Names the stage in the stop message."""
    total: int
    """Steps in the whole run (a resumed run ends at the same step)."""
    eval_every: int
    """Evaluate every this many steps and after the last (0: only after the last); only with `evaluates`."""
    checkpoint_every: int
    """Checkpoint every this many steps and after the last (0: only on a stop signal)."""
    max_skipped_updates: int
    """Updates skipped in a row for a non-finite loss that stop the run (stopping.NonFiniteLoss)."""
    log: RunLog
    fault_point: str
    """The `faults.maybe` point reached after each step (e.g. `ppo.after_step`)."""
    evaluates: bool = True
    """False: the stage has no held-out data."""
    eval_in_step_row: bool = False
    """True: evaluation metrics join the step's row (supervised stages); False: they are a row of their own,
    logged after the step's (PPO: evaluation samples at the new weights, a batch of its own)."""
    stop_early: Callable[[], Optional[str]] = lambda: None
    """Asked after each evaluation: a reason to end the run now (it ends as after its last step), or None."""
    stopped_early: Optional[str] = field(default=None, init=False)
    skipped: SkippedUpdates = field(init=False)

    def __post_init__(self) -> None:
        self.skipped = SkippedUpdates(self.max_skipped_updates)

    def evaluates_after(self, n: int) -> bool:
        return self.evaluates and (n == self.total or bool(self.eval_every and n % self.eval_every == 0))

    def checkpoints_after(self, n: int) -> bool:
        every = self.checkpoint_every
        return bool(every) and (n == self.total or n % every == 0)

    def run(self, steps: Steps, start: int = 0) -> list[dict]:
        """Steps start+1 .. total (start: steps a checkpoint holds; checkpoints are written after a step, so 0
        means a fresh start). Returns the rows logged, in order. A first SIGTERM / Ctrl-C finishes the step in
        progress, checkpoints and raises `Stopped`; `skipped` raises NonFiniteLoss once its row is logged."""
        rows: list[dict] = []

        def log(row: dict) -> None:
            rows.append(row)
            self.log.log_metrics(row)

        self.log.expect_steps(self.total)
        with GracefulStop() as stop:
            if start == 0 and self.evaluates:  # the starting point: what training must improve on
                log(steps.evaluate(0))
            for n in range(start + 1, self.total + 1):
                row = steps.step(n)
                evaluate = self.evaluates_after(n)
                if evaluate and self.eval_in_step_row:
                    row.update(steps.evaluate(n))
                log(row)
                self.skipped.check()  # before a separate evaluation: nothing to learn from a diverged model
                if evaluate and not self.eval_in_step_row:
                    log(steps.evaluate(n))
                if stop.requested or self.checkpoints_after(n):
                    where = steps.checkpoint(n)
                    if stop.requested:
                        raise Stopped(f"{self.stage}: stopped by {stop.requested} after step {n} of {self.total}; "
                                      f"checkpoint {where}; the same command resumes")
                self.stopped_early = self.stop_early() if evaluate else None
                if self.stopped_early:
                    print(f"{self.stage}: ending after step {n} of {self.total}: {self.stopped_early}", flush=True)
                    break
                faults.maybe(self.fault_point, n)
        return rows
