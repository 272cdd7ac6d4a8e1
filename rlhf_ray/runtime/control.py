"""`rlhf-ray scale RUN_DIR ROLE=N ...`: the size a running PPO job's fleet should have, asked through a file in its
run directory, control.json ({"generator": 2, ...}), that the driver reads at every step boundary (a file: the run
directory is what every run has, on the driver's node; a submitted job's is reached through a job of its own on
that node, see cli.py). It states the wanted size, not a change: reading it twice changes nothing, and a resumed
run grows or shrinks to it again. Written whole (a temp file renamed over it), so the driver never reads half.

Only generators and scorers change size; learner ranks cannot join or leave a torch.distributed group.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from rlhf_ray.errors import UserError

FILE = "control.json"
SCALABLE = ("generator", "reference", "reward", "reward_fn")
FIXED = ("policy", "critic")


class ControlError(UserError):
    """A scale request that names no scalable role or no positive count; said before anything is written."""


def parse(items: list[str]) -> dict[str, int]:
    """`generator=2 reference=1` -> {"generator": 2, "reference": 1}."""
    out = {}
    for item in items:
        role, sep, count = item.partition("=")
        if role in FIXED:
            raise ControlError(f"{item}: learner counts stay fixed while a run runs (a torch.distributed group "
                               f"cannot take in or let go of a rank); stop the run, change cluster.roles.{role}.count "
                               "and resume")
        if not sep or role not in SCALABLE:
            raise ControlError(f"{item}: expected ROLE=N with ROLE one of {', '.join(SCALABLE)}")
        if not count.isdigit() or int(count) < 1:
            raise ControlError(f"{item}: the count must be a whole number >= 1")
        out[role] = int(count)
    if not out:
        raise ControlError(f"nothing asked: give ROLE=N with ROLE one of {', '.join(SCALABLE)}")
    return out


def ask(run_dir: Path, counts: dict[str, int]) -> dict[str, int]:
    """Merge `counts` into the run's control.json; returns all it now asks."""
    wanted = {**read(run_dir), **counts}
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=f".{FILE}.")
    with os.fdopen(fd, "w") as f:
        json.dump(wanted, f)
    os.replace(tmp, run_dir / FILE)
    return wanted


def read(run_dir: Path) -> dict[str, int]:
    """What control.json asks ({} without one); ControlError when it holds anything else."""
    path = run_dir / FILE
    if not path.exists():
        return {}
    try:
        wanted = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ControlError(f"{path}: not JSON ({e}); write it with `rlhf-ray scale`") from None
    if not isinstance(wanted, dict):
        raise ControlError(f"{path}: expected an object of role counts; write it with `rlhf-ray scale`")
    return parse([f"{role}={count}" for role, count in wanted.items()]) if wanted else {}
