"""Checkpoints of a running stage: RUN_DIR/checkpoints/<stage>/step_NNNNNN/, complete or not there at all.

A checkpoint is written into `step_NNNNNN.tmp/` (learners' HF folders and DeepSpeed states, the rollout buffer)
and only renamed to `step_NNNNNN/` after the driver's `state.json` is in, so a run killed mid-write leaves a
`.tmp` folder that `latest` never picks (and removes). Everything in it was written by the run itself: JSON,
Parquet, safetensors and DeepSpeed's own files.

`state.json` holds the driver's side: steps done, policy version, KL coefficient, the prompt sampler's RNG state,
the number of generation batches launched (each batch's sampling seed derives from it), the stage's metrics rows,
and the config the stage ran with: resuming under a config that changes the run's results is refused, naming the
keys (`--force` starts the stage over).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional

from rlhf_ray.config import ConfigError
from rlhf_ray.runtime import faults
from rlhf_ray.runtime.stopping import LearnerLost

STEP_DIR = re.compile(r"^step_(\d{6})$")
# Keys that may change between a run and its resume: where it runs, how it reports, how long it goes on.
MAY_CHANGE = ("cluster", "logging", "resume", "name", "ppo.steps", "train.checkpoint_every", "train.keep_checkpoints",
              "train.eval_every")


def stage_dir(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / "checkpoints" / stage


def begin(run_dir: Path, stage: str, step: int) -> Path:
    """An empty `step_NNNNNN.tmp/` to write the parts into."""
    tmp = stage_dir(run_dir, stage) / f"step_{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit(tmp: Path, state: dict, keep: int) -> Path:
    """Write state.json last, rename the folder into place, and keep only the newest `keep` checkpoints."""
    faults.maybe("checkpoint.before_commit", state.get("step", -1))
    (tmp / "state.json.part").write_text(json.dumps(state))
    os.replace(tmp / "state.json.part", tmp / "state.json")
    final = tmp.with_name(tmp.name.removesuffix(".tmp"))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in complete(final.parent)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def complete(folder: Path) -> list[Path]:
    """Complete checkpoints in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if STEP_DIR.match(p.name) and (p / "state.json").is_file())


def latest(run_dir: Path, stage: str) -> Optional[tuple[Path, dict]]:
    """The newest complete checkpoint of `stage` and its state, or None; half-written ones are removed."""
    folder = stage_dir(run_dir, stage)
    for tmp in folder.glob("*.tmp") if folder.is_dir() else []:
        shutil.rmtree(tmp, ignore_errors=True)
    done = complete(folder)
    return (done[-1], json.loads((done[-1] / "state.json").read_text())) if done else None


def resume_point(run_dir: Path, stage: str, config: dict, resume: str) -> Optional[tuple[Path, dict]]:
    """The checkpoint a stage continues from (`resume: auto`, the newest complete one, written under a config
    with the same results), or None for a fresh start, which first removes an older run's checkpoints (a later
    `latest` must not pick them)."""
    ckpt = latest(run_dir, stage) if resume == "auto" else None
    if ckpt is None:
        clear(run_dir, stage)
        return None
    ensure_same_config(ckpt[1]["config"], config)
    return ckpt


def check_resumable(run_dir: Path, stage: str, config: dict, resume: str) -> None:
    """What `resume_point` would refuse, told before any compute is spent (the CLI calls it before Ray starts):
    a newest complete checkpoint written under a config that changes the results. Removes nothing."""
    ckpt = latest(run_dir, stage) if resume == "auto" else None
    if ckpt is not None:
        ensure_same_config(ckpt[1]["config"], config)


def clear(run_dir: Path, stage: str) -> None:
    shutil.rmtree(stage_dir(run_dir, stage), ignore_errors=True)


def changed_keys(saved: dict, now: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved configs, leaving out those in MAY_CHANGE."""
    out = []
    for key in sorted(set(saved) | set(now)):
        dotted = f"{prefix}{key}"
        if any(dotted == m or dotted.startswith(m + ".") for m in MAY_CHANGE):
            continue
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_keys(a, b, dotted + ".")
        elif a != b:
            out.append(f"{dotted}: {a!r} then, {b!r} now")
    return out


def ensure_same_config(saved: dict, now: dict) -> None:
    """Refuse to resume under a config that would change the results, naming every such key."""
    changed = changed_keys(saved, now)
    if changed:
        raise ConfigError([f"resume: the checkpoint of this run was written under another config ({k}); "
                           "restore the setting, or rerun with --force to start the stage over" for k in changed])


def learner_lost(err, run_dir: Path, stage: str) -> Optional[Exception]:
    """For a GroupError from a learner that died, or from an actor whose node was lost with no node to take its
    place (actor_group.NodeLost): the LearnerLost to raise, saying where the run can resume."""
    learner = getattr(err, "died", False) and err.role.endswith("learner")
    if not (learner or getattr(err, "node_lost", False)):
        return None
    newest = latest(run_dir, stage)
    where = (f"the same command resumes from {newest[0]}" if newest else
             "no checkpoint yet (train.checkpoint_every = 0), so the same command starts the stage over")
    why = ("a learner rank cannot be replaced inside its process group" if learner else
           "the cluster has no room for it")
    return LearnerLost(f"{err}: {why}, so the run stopped; {where}")


def rng_state(rng) -> list[Any]:
    """A `random.Random` state as JSON (tuples become lists)."""
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def set_rng_state(rng, state: list[Any]) -> None:
    rng.setstate((state[0], tuple(state[1]), state[2]))
