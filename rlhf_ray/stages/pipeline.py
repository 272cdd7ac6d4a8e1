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
from pathlib import Path
from typing import Callable, Optional

from rlhf_ray.config import Config, ConfigError, for_stage, to_dict
from rlhf_ray.runtime import checkpoint
from rlhf_ray.runtime.run_dir import RunDir
from rlhf_ray.stages.result import StageResult

MARKER = "stage_done.json"


# Where each output goes in the config of the stages after it.
OUTPUT_KEYS = {"policy": "model.policy", "reward": "model.reward", "preferences": "data.preferences.path"}
# Datasets each stage reads, and outputs each stage makes (what an earlier stage can give a later one).
NEEDS = {"sft": ["data.demonstrations.path"], "label": ["data.prompts.path"], "rm": ["data.preferences.path"],
         "dpo": ["data.preferences.path"], "ppo": ["data.prompts.path"]}
MAKES = {"sft": ["policy"], "label": ["preferences"], "rm": ["reward"], "dpo": ["policy"], "ppo": ["policy"]}


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


def _get(cfg: Config, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


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


def _looks_local(path: str) -> bool:
    """A dataset path that must exist here (data.iter_raw_rows would take other strings with a `/` for hub names)."""
    return path.startswith((".", "/", "~")) or Path(path).suffix in (".jsonl", ".json", ".parquet")


def check_inputs(cfg: Config, source: str = "") -> None:
    """Before anything runs: every stage is built, and every dataset it reads is set (or made by an earlier
    stage) and, when it is a local path or a glob, exists; every reward function, labeler and gold judge finds the
    keyword arguments it requires among the metadata and the prompts' columns. Raises one ConfigError listing
    every problem."""
    problems, made, where = [], set(), f"{source}: " if source else ""
    base = cfg
    for i, stage in enumerate(base.stages):
        cfg = for_stage(base, stage)
        if stage not in RUNNERS:
            problems.append(f"{where}stages[{i}]: the `{stage}` stage is not built yet; built: {', '.join(RUNNERS)}")
            continue
        before = len(problems)
        for key in NEEDS[stage]:
            made_by = [n for n, k in OUTPUT_KEYS.items() if k == key and n in made]
            value = _get(cfg, key)
            if made_by:
                continue
            if value is None:
                problems.append(f"{where}{key}: the `{stage}` stage needs this dataset; set it (or run a stage "
                                f"that makes it first)")
            else:
                problems += _path_problems(key, value, where)
        if stage == "ppo" and not (cfg.model.reward or cfg.reward.functions or "reward" in made):
            problems.append(f"{where}reward.functions: the `ppo` stage needs a reward: a reward model (model.reward, "
                            f"or an `rm` stage before it) or reward functions")
        if stage == "label":
            problems += _labeler_problems(cfg.label.labeler, where)
        if stage == "ppo" and cfg.data.prompts.eval_path:
            problems += _path_problems("data.prompts.eval_path", cfg.data.prompts.eval_path, where)
        if stage in ("ppo", "label") and len(problems) == before:  # its datasets and labeler are there
            problems += _keyword_problems(cfg, stage, where)
        made.update(MAKES[stage])
    problems += _model_problems(base, where)
    if problems:
        raise ConfigError(problems)


def _path_problems(key: str, value: str | list[str], where: str) -> list[str]:
    """Local dataset files that do not exist, globs that match none."""
    from rlhf_ray import data

    problems = []
    for path in [value] if isinstance(value, str) else value:
        if any(c in path for c in "*?["):
            try:
                data.sources(path)
            except data.DataError as e:
                problems.append(f"{where}{key}: {e}")
        elif _looks_local(path) and not Path(path).expanduser().exists():
            problems.append(f"{where}{key}: no such file or folder: {path}")
    return problems


def _reward_specs(cfg: Config, stage: str) -> list[tuple[str, str, list[str]]]:
    """(config key, spec, the prompts datasets it scores) of each function a stage calls with the prompts'
    columns: the label stage's labeler reads data.prompts.path; PPO's reward functions that and the held-out
    eval_path, the gold judge the held-out prompts only."""
    if stage == "label":
        return [("label.labeler", cfg.label.labeler, ["data.prompts.path"])] if cfg.label.labeler else []
    held_out = ["data.prompts.eval_path"] if cfg.data.prompts.eval_path else ["data.prompts.path"]
    both = list(dict.fromkeys(["data.prompts.path", *held_out]))
    specs = [(f"reward.functions[{i}].function", f.function, both) for i, f in enumerate(cfg.reward.functions)]
    return specs + ([("ppo.gold", cfg.ppo.gold, held_out)] if cfg.ppo.gold else [])


def _keyword_problems(cfg: Config, stage: str, where: str) -> list[str]:
    """A reward function (labeler, gold judge) that requires a keyword argument which is neither metadata nor a
    column of the prompts dataset (and of its eval_path): it would fail on the first batch, after every actor
    started. The functions are imported here, in the driver, as the stage would."""
    from actors.reward_function import METADATA
    from rlhf_ray import data
    from rlhf_ray.engines import scoring

    problems, ds = [], cfg.data.prompts
    columns: dict[str, list[str]] = {}  # each dataset read only when a function needs a column
    for key, spec, datasets in _reward_specs(cfg, stage):
        try:
            needed = [k for k in scoring.required_keywords(scoring.load_reward_function(spec)) if k not in METADATA]
        except scoring.RewardFunctionError as e:
            problems.append(f"{where}{key}: {e}")
            continue
        except Exception as e:  # the user's module failed as it was imported: say so, not a traceback
            problems.append(f"{where}{key}: importing {spec} raised {type(e).__name__}: {e}")
            continue
        for ds_key in datasets if needed else []:
            if ds_key not in columns:
                try:
                    rows, _ = data.load_dataset(ds, "prompts", cfg.data.skip_malformed, ds_key.endswith("eval_path"))
                except data.DataError as e:
                    return problems + [f"{where}{ds_key}: {e}"]
                columns[ds_key] = data.column_names(rows)
            for name in needed:
                if name not in columns[ds_key]:
                    have = ", ".join(columns[ds_key]) or "none besides the prompt"
                    problems.append(f"{where}{key}: {spec} requires the keyword argument `{name}`, but the prompts "
                                    f"dataset {_get(cfg, ds_key)} has no column `{name}` (its columns: {have}; "
                                    f"data.prompts.columns renames them); metadata: {', '.join(METADATA)}")
    return problems


MODEL_KEYS = ("model.policy", "model.reference", "model.reward", "model.critic", "model.tokenizer")


def _model_problems(cfg: Config, where: str) -> list[str]:
    """Model folders that do not exist or are not model folders, and a tokenizer with more tokens than the
    policy's embedding has rows (its ids would index past it), told before anything loads. Hub names pass."""
    from rlhf_ray import models

    problems, folders = [], {}
    for key in MODEL_KEYS:
        value = _get(cfg, key)
        if value is None:
            continue
        try:
            folders[key] = models.resolve_model(value)
        except (ValueError, OSError) as e:
            problems.append(f"{where}{key}: {e}")
    tok, policy = folders.get("model.tokenizer"), folders.get("model.policy")
    if tok and policy and Path(tok).is_dir() and Path(policy).is_dir():
        n_tokens = len(models.load_tokenizer(tok))
        rows = json.loads((Path(policy) / "config.json").read_text()).get("vocab_size")
        if rows is not None and n_tokens > rows:
            problems.append(f"{where}model.tokenizer: {tok} has {n_tokens} tokens but model.policy ({policy}) "
                            f"embeds {rows}: this tokenizer does not belong to this model")
    if cfg.model.lora is not None and policy and Path(policy).is_dir():
        from rlhf_ray import lora

        missing = lora.missing_targets(policy, cfg.model.lora)
        if missing:
            problems.append(f"{where}model.lora.target_modules: {', '.join(missing)} match no module of "
                            f"model.policy ({policy})")
    return problems


def _labeler_problems(spec: str, where: str) -> list[str]:
    """What can be told of label.labeler without importing it (that happens when the stage starts)."""
    target, sep, name = spec.rpartition(":")
    if not (sep and target and name):
        return [f"{where}label.labeler: expected `module:function` or `path/to/file.py:function`, got {spec!r}"]
    if target.endswith(".py") and not Path(target).expanduser().is_file():
        return [f"{where}label.labeler: no such file: {target}"]
    return []


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
    inputs = {key: _get(cfg, key) for key in (*OUTPUT_KEYS.values(), "model.reference")}
    tmp.write_text(json.dumps({"stage": stage, "inputs": inputs, "outputs": result.outputs,
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
    check_inputs(cfg)
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
