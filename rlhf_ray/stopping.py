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
