"""Run a config's stages in order, each stage's outputs feeding the next, skipping stages already finished.

A stage is `fn(cfg, run_dir) -> StageResult`. Its `outputs` name what it made, by what later stages use:
  policy       a causal-LM folder (sft, dpo, ppo)    -> model.policy of later stages (and so their reference)
  reward       a sequence-classifier folder (rm)     -> model.reward (PPO scores with it; the critic starts
                                                        from it when it reads the policy's tokens)
  preferences  a preferences dataset (label)         -> data.preferences.path
`apply_outputs` writes them into the config the next stages see; a new stage only has to return its outputs.

Resuming: the last thing a stage writes is `final/<stage>/stage_done.json` (its outputs and summary). A rerun
skips every stage that has one and reuses its outputs, unless `force`. Before a stage (re)runs, its old
final/<stage>/ folder and its rows in metrics.jsonl are removed, so the run directory describes its last run.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from typing import Callable, Optional

from rlhf_ray.config import Config, for_stage, get, to_dict
from rlhf_ray.runtime import checkpoint
from rlhf_ray.runtime.run_dir import RunDir
from rlhf_ray.stages import inputs
from rlhf_ray.stages.inputs import OUTPUT_KEYS
from rlhf_ray.stages.result import StageResult

MARKER = "stage_done.json"


def _sft(cfg: Config, run_dir: RunDir) -> StageResult:
    from rlhf_ray.stages import sft

    return sft.run(cfg, run_dir)


def _label(cfg: Config, run_dir: RunDir) -> StageResult:
    from rlhf_ray.stages import label

    return label.run(cfg, run_dir)


def _rm(cfg: Config, run_dir: RunDir) -> StageResult:
    from rlhf_ray.stages import rm

    return rm.run(cfg, run_dir)


def _dpo(cfg: Config, run_dir: RunDir) -> StageResult:
    from rlhf_ray.stages import dpo

    return dpo.run(cfg, run_dir)


def _ppo(cfg: Config, run_dir: RunDir) -> StageResult:
    from rlhf_ray.stages import ppo

    return ppo.run(cfg, run_dir)


# Imports stay inside the wrappers: `validate` and the checks below must not pay for Ray, DeepSpeed or vLLM.
RUNNERS: dict[str, Callable[[Config, RunDir], StageResult]] = {"sft": _sft, "label": _label, "rm": _rm, "dpo": _dpo,
                                                                "ppo": _ppo}


def _set(cfg: Config, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    obj = cfg
    for part in parents:
        obj = getattr(obj, part)
    setattr(obj, last, value)


def apply_outputs(cfg: Config, outputs: dict[str, str]) -> Config:
    """A copy of `cfg` with a stage's outputs in place (see the module docstring); `cfg` is left as it was."""
    unknown = set(outputs) - set(OUTPUT_KEYS)
    if unknown:
        raise ValueError(f"unknown stage outputs {sorted(unknown)}; known: {sorted(OUTPUT_KEYS)}")
    cfg = copy.deepcopy(cfg)
    for name, path in outputs.items():
        _set(cfg, OUTPUT_KEYS[name], path)
    return cfg


def finished(run_dir: RunDir, stage: str) -> Optional[dict]:
    """The marker of a finished stage in this run directory, or None."""
    marker = run_dir.final(stage) / MARKER
    return json.loads(marker.read_text()) if marker.is_file() else None


def _mark_done(run_dir: RunDir, stage: str, cfg: Config, result: StageResult) -> None:
    """Write the marker last, atomically: a stage killed before this point is rerun in full. It records what
    the stage started from (`inputs`: the config keys earlier stages can set) beside what it made."""
    folder = run_dir.final(stage)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{MARKER}.tmp"
    started_from = {key: get(cfg, key) for key in (*OUTPUT_KEYS.values(), "model.reference")}
    tmp.write_text(json.dumps({"stage": stage, "inputs": started_from, "outputs": result.outputs,
                               "summary": result.summary, "metrics": result.metrics,
                               "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1))
    os.replace(tmp, folder / MARKER)


def _reset(run_dir: RunDir, stage: str) -> None:
    shutil.rmtree(run_dir.final(stage), ignore_errors=True)
    run_dir.drop_metrics(stage)


def run(cfg: Config, run_dir: RunDir, force: bool = False, connect: Callable[[], None] = lambda: None
        ) -> list[StageResult]:
    """Run (or skip) each stage in order; `connect()` (e.g. Ray init) is called once, before the first stage
    that actually runs, so a rerun of a finished pipeline starts nothing."""
    inputs.check(cfg)
    results, connected = [], False
    for stage in cfg.stages:
        done = None if force else finished(run_dir, stage)
        if done is not None:
            result = StageResult(done["outputs"], done["summary"], skipped=True, metrics=done.get("metrics", {}))
            print(f"{stage}: finished in an earlier run ({run_dir.final(stage)}), skipped (--force reruns it)",
                  flush=True)
        else:
            stage_cfg = for_stage(cfg, stage)  # its own settings (stage_overrides) on top
            if force:
                checkpoint.clear(run_dir.path, stage)  # --force starts the stage over, not from its checkpoint
            else:  # a checkpoint it cannot resume from is refused before Ray starts (the stage checks it again)
                checkpoint.check_resumable(run_dir.path, stage, to_dict(stage_cfg), stage_cfg.resume)
            if not connected:
                connect()
                connected = True
            _reset(run_dir, stage)
            run_dir.start_stage(stage)
            try:
                result = RUNNERS[stage](stage_cfg, run_dir)
            finally:
                run_dir.end_stage()  # the plots show a failed stage too
            _mark_done(run_dir, stage, stage_cfg, result)
        print(result.summary, flush=True)
        cfg = apply_outputs(cfg, result.outputs)
        results.append(result)
    return results
