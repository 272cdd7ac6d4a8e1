"""Stopping a run on SIGTERM (pre-emption, `rlhf-ray stop`, `kubectl delete`) or Ctrl-C, without losing work.

The first signal only sets a flag: the stage finishes the step it is in, writes a checkpoint, stops its actors and
raises `Stopped`; rerunning the same command resumes from that checkpoint. A second signal stops at once (the
actors are still killed on the way out). The grace period a scheduler gives (Ray's RAY_JOB_STOP_WAIT_TIME_S,
Kubernetes' terminationGracePeriodSeconds) must cover one step plus the checkpoint write.
"""

from __future__ import annotations

import signal
import threading
from typing import Optional


class Stopped(RuntimeError):
    """A stage stopped on a signal after writing its checkpoint."""


class LearnerLost(RuntimeError):
    """A learner rank died: its torch.distributed group cannot take a replacement, so the run stops."""


class NonFiniteLoss(RuntimeError):
    """Too many updates in a row skipped for a non-finite loss."""


class SkippedUpdates:
    """Counts optimizer updates skipped in a row for a non-finite loss (ds_engine.train_step's `skipped`) and says
    so for each (`see`); `check`, called once the step's metrics are logged, raises NonFiniteLoss at `limit` in
    a row (the weights are still the last good ones)."""

    def __init__(self, limit: int):
        self.limit, self.in_a_row, self.where = limit, 0, ""

    def see(self, skipped: float, where: str) -> None:
        if not skipped:
            self.in_a_row = 0
            return
        self.in_a_row, self.where = self.in_a_row + 1, where
        print(f"{where}: non-finite loss, update skipped ({self.in_a_row} in a row, limit {self.limit})", flush=True)

    def check(self) -> None:
        if self.in_a_row >= self.limit:
            raise NonFiniteLoss(f"{self.where}: {self.in_a_row} updates in a row had a non-finite loss "
                                f"(train.max_skipped_updates = {self.limit}); lower the LR or check the data")


class GracefulStop:
    """`with GracefulStop() as stop: ... if stop.requested: ...` (handlers only in the main thread)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: Optional[str] = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:  # the second signal: now
            raise KeyboardInterrupt(f"{signal.Signals(signum).name} again: stopping without a checkpoint")
        self.requested = signal.Signals(signum).name
        print(f"\n{self.requested}: finishing this step, then checkpoint and stop (send it again to stop now)",
              flush=True)

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
