"""The training loop's order of chores (stages/loop.py), with fake steps: evaluation and checkpoint cadence, the
non-finite-loss stop, the graceful stop and the fault point. No Ray, no model."""

import pytest

from rlhf_ray.runtime.stopping import NonFiniteLoss, Stopped
from rlhf_ray.stages import loop as loop_mod
from rlhf_ray.stages.loop import Loop


class FakeLog:
    def __init__(self, events: list):
        self.events, self.rows = events, []

    def expect_steps(self, steps):
        self.events.append(("expect", steps))

    def log_metrics(self, row: dict) -> None:
        self.events.append(("log", dict(row)))
        self.rows.append(row)


class FakeSteps:
    """Records every call in `events`; step n's update is skipped (non-finite) when n is in `skip`."""

    def __init__(self, events: list, guard_of=lambda: None, skip=(), on_step=None):
        self.events, self.guard_of, self.skip, self.on_step = events, guard_of, set(skip), on_step

    def step(self, n: int) -> dict:
        self.events.append(("step", n))
        self.guard_of().see(float(n in self.skip), f"step {n}")
        if self.on_step:
            self.on_step(n)
        return {"step": n, "loss": 1.0 / n}

    def evaluate(self, n: int) -> dict:
        self.events.append(("evaluate", n))
        return {"step": n, "eval_loss": 2.0 / (n + 1)}

    def checkpoint(self, n: int):
        self.events.append(("checkpoint", n))
        return f"ckpt-{n}"


@pytest.fixture
def faults(monkeypatch):
    hits = []
    monkeypatch.setattr(loop_mod.faults, "maybe", lambda point, value: hits.append((point, value)))
    return hits


def make(events, total=6, eval_every=2, checkpoint_every=3, max_skipped=2, **kw) -> tuple[Loop, FakeLog]:
    log = FakeLog(events)
    return Loop("sft", total, eval_every, checkpoint_every, max_skipped, log, "supervised.after_step", **kw), log


def kinds(events, kind):
    return [e[1] for e in events if e[0] == kind]


def test_cadence_fresh_start_with_eval_rows_of_their_own(faults):
    events = []
    loop, log = make(events, total=5, eval_every=2, checkpoint_every=2)
    rows = loop.run(FakeSteps(events, lambda: loop.skipped))
    assert events[0] == ("expect", 5) and events[1] == ("evaluate", 0)  # the starting model first
    assert kinds(events, "step") == [1, 2, 3, 4, 5]
    assert kinds(events, "evaluate") == [0, 2, 4, 5]  # every 2 and after the last
    assert kinds(events, "checkpoint") == [2, 4, 5]
    assert faults == [("supervised.after_step", n) for n in range(1, 6)]
    # a separate eval row follows its step's row; the checkpoint comes after both
    i = events.index(("step", 2))
    assert [e[0] for e in events[i:i + 5]] == ["step", "log", "evaluate", "log", "checkpoint"]
    assert rows == log.rows and [r["step"] for r in rows] == [0, 1, 2, 2, 3, 4, 4, 5, 5]


def test_eval_metrics_join_the_step_row(faults):
    events = []
    loop, log = make(events, total=4, eval_every=3, eval_in_step_row=True)
    rows = loop.run(FakeSteps(events, lambda: loop.skipped))
    assert rows == [{"step": 0, "eval_loss": 2.0}, {"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5},
                    {"step": 3, "loss": 1 / 3, "eval_loss": 0.5}, {"step": 4, "loss": 0.25, "eval_loss": 0.4}]
    i = events.index(("step", 3))
    assert [e[0] for e in events[i:i + 4]] == ["step", "evaluate", "log", "checkpoint"]


def test_no_checkpoints_at_0_and_no_eval_without_held_out_data(faults):
    events = []
    loop, _ = make(events, total=3, eval_every=1, checkpoint_every=0, evaluates=False)
    loop.run(FakeSteps(events, lambda: loop.skipped))
    assert kinds(events, "evaluate") == [] and kinds(events, "checkpoint") == []


def test_a_resumed_run_goes_on_after_its_checkpoint_without_the_starting_eval(faults):
    events = []
    loop, _ = make(events, total=6)
    loop.run(FakeSteps(events, lambda: loop.skipped), start=3)
    assert kinds(events, "step") == [4, 5, 6] and kinds(events, "evaluate") == [4, 6]
    assert kinds(events, "checkpoint") == [6]


def test_stop_early_is_asked_after_each_evaluation_and_ends_the_run(faults):
    events, asked = [], []

    def budget():  # the KL budget passes at the evaluation after step 4
        asked.append(kinds(events, "evaluate")[-1])
        return "held-out KL 12 passed ppo.kl_budget 10" if asked[-1] >= 4 else None

    loop, log = make(events, total=8, eval_every=2, checkpoint_every=3, stop_early=budget)
    rows = loop.run(FakeSteps(events, lambda: loop.skipped))
    assert asked == [2, 4] and kinds(events, "step") == [1, 2, 3, 4]  # not asked at the start or between evals
    assert kinds(events, "checkpoint") == [3] and rows[-1] == {"step": 4, "eval_loss": 0.4}
    assert loop.stopped_early == "held-out KL 12 passed ppo.kl_budget 10"
    assert faults == [("supervised.after_step", n) for n in (1, 2, 3)]  # no fault point after the run ended


def test_non_finite_losses_stop_once_the_row_is_logged_before_a_separate_eval(faults):
    events = []
    loop, log = make(events, total=6, eval_every=2, max_skipped=2)
    with pytest.raises(NonFiniteLoss, match="2 updates in a row"):
        loop.run(FakeSteps(events, lambda: loop.skipped, skip={3, 4}))
    assert kinds(events, "step") == [1, 2, 3, 4] and log.rows[-1] == {"step": 4, "loss": 0.25}
    assert kinds(events, "evaluate") == [0, 2]  # not after step 4: the run stops first
    # a good update in between resets the count
    events = []
    loop, _ = make(events, total=6, max_skipped=2)
    loop.run(FakeSteps(events, lambda: loop.skipped, skip={1, 3, 5}))
    assert kinds(events, "step") == [1, 2, 3, 4, 5, 6]


class FakeStop:
    """GracefulStop without signals: `requested` is set by the test."""

    current = None

    def __enter__(self):
        self.requested = None
        FakeStop.current = self
        return self

    def __exit__(self, *exc):
        return None


def test_a_stop_signal_checkpoints_after_the_step_then_raises(monkeypatch, faults):
    monkeypatch.setattr(loop_mod, "GracefulStop", FakeStop)
    events = []
    loop, _ = make(events, total=6, checkpoint_every=0)

    def signal_at_2(n):
        if n == 2:
            FakeStop.current.requested = "SIGTERM"

    with pytest.raises(Stopped, match=r"sft: stopped by SIGTERM after step 2 of 6; checkpoint ckpt-2"):
        loop.run(FakeSteps(events, lambda: loop.skipped, on_step=signal_at_2))
    assert kinds(events, "step") == [1, 2] and kinds(events, "checkpoint") == [2]
    assert events[-1] == ("checkpoint", 2) and faults == [("supervised.after_step", 1)]
