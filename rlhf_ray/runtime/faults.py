"""Fault injection for the reliability tests: `RLHF_RAY_FAULTS="point=value,..."` makes the driver die hard
(`os._exit`, no cleanup, as on a pre-emption or an OOM kill) when it reaches `point` with that value.

Points: `ppo.after_step=N` / `supervised.after_step=N` (after step N is logged and, when due, checkpointed),
`checkpoint.before_commit=N` (a checkpoint of N steps written but not yet renamed into place), `ppo.pause=S` (each
PPO step starts S seconds late: time for a test to act between steps). And actor
deaths: `kill.<actor name>=N` kills that actor (`ray.kill`, no restart) as PPO step N starts;
`kill_after_launch.<actor name>=N` right after the Nth generation batch is queued (so it dies mid-sampling);
`kill_in_sync.<actor name>=N` right after the broadcast of weights version N begins (so it dies mid-sync).
And a wrong sender: `wrong_bucket=N` makes learner rank 0 send weights version N with its first tensor doubled,
packed and checksummed as if it were right (a sender-side fault no receiver check can see: only what the generators
then sample shows it); read in the learner itself (actors/learner.py, a layer below this module).

Test-only, and left in the product code on purpose: the reliability tests (tests/e2e/test_faults.py) must kill the
real driver at the real points, which a mock could not. The cost when the variable is unset (every normal run): one
`os.environ` lookup per call (about a microsecond), and the calls sit in the driver (rlhf_ray/stages/, and
runtime/checkpoint.py) once per step, per generation batch or per checkpoint, and in the learner once per weight
sync, never per sample or token, beside steps that take seconds. Nothing is parsed unless the variable is set.
"""

from __future__ import annotations

import os
import sys
import time

EXIT_CODE = 3


def _armed() -> dict[str, str]:
    spec = os.environ.get("RLHF_RAY_FAULTS")
    if not spec:  # every normal run: this lookup is all a check costs
        return {}
    return dict(item.split("=", 1) for item in spec.split(",") if "=" in item)


def kill_actors(when: str, value: int) -> None:
    """Kill the actors armed for `when` (`kill` at a step, `kill_after_launch` after a launch, `kill_in_sync` in a
    broadcast) = value."""
    for key, armed in _armed().items():
        if key.startswith(when + ".") and armed == str(value):
            import ray

            name = key.removeprefix(when + ".")
            print(f"fault injected: {when} {name} at {value}", file=sys.stderr, flush=True)
            ray.kill(ray.get_actor(name), no_restart=True)


def pause(point: str) -> None:
    """Sleep the seconds armed for `point` (`ppo.pause=S`, as each PPO step starts: a tiny run's steps last long
    enough for a test to act between them, e.g. `rlhf-ray scale`)."""
    seconds = _armed().get(point)
    if seconds:
        time.sleep(float(seconds))


def maybe(point: str, value: int) -> None:
    """Die here if RLHF_RAY_FAULTS names this point with this value."""
    if _armed().get(point) == str(value):
        print(f"fault injected: {point}={value}: the driver exits now", file=sys.stderr, flush=True)
        os._exit(EXIT_CODE)

