"""Every input a run reads, checked before Ray starts (`rlhf-ray run`, `validate` and `submit` call `before_ray`
first, `pipeline.run` calls `check` again): each stage's datasets are set (or made by an earlier stage), exist,
open, and their first rows pass the row checks (held-out `eval_path` datasets too); each reward function, labeler
and gold judge imports, takes `(prompts, responses, ...)` (or TRL's or veRL's call) and finds the keyword arguments
it requires; each model folder is one, and runs no code of its own unless model.trust_remote_code. Every problem
comes back at once, each naming its config key.

Nothing is built or converted here (a built-in model not yet in the cache is not made), so `validate` stays fast:
the checks that need a model's tokenizer or modules run when its folder exists, and a note says which were
skipped.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rlhf_ray.config import Config, ConfigError, for_stage, get

# Where each output goes in the config of the stages after it.
OUTPUT_KEYS = {"policy": "model.policy", "reward": "model.reward", "preferences": "data.preferences.path"}
# Datasets each stage reads, and outputs each stage makes (what an earlier stage can give a later one).
NEEDS = {"sft": ["data.demonstrations.path"], "label": ["data.prompts.path"], "rm": ["data.preferences.path"],
         "dpo": ["data.preferences.path"], "ppo": ["data.prompts.path"]}
MAKES = {"sft": ["policy"], "label": ["preferences"], "rm": ["reward"], "dpo": ["policy"], "ppo": ["policy"]}
FIRST_ROWS = 16  # rows of each dataset read and checked up front: a wrong format shows in the first
MODEL_KEYS = ("model.policy", "model.reference", "model.reward", "model.critic", "model.tokenizer")


def before_ray(cfg: Config, source: str = "") -> None:
    """What `rlhf-ray run`, `validate` and `submit` do first, with the same messages: `check`, its notes on
    stderr."""
    for note in check(cfg, source):
        print(f"note: {note}", file=sys.stderr, flush=True)


def check(cfg: Config, source: str = "") -> list[str]:
    """Raise one ConfigError listing every problem with the inputs of `cfg`'s stages (see the module docstring);
    return notes on the checks skipped."""
    problems, made, where = [], set(), f"{source}: " if source else ""
    base = cfg
    for stage in base.stages:
        cfg = for_stage(base, stage)
        before = len(problems)
        for key in NEEDS[stage]:
            if any(k == key and n in made for n, k in OUTPUT_KEYS.items()):
                continue
            if not get(cfg, key):  # None, "" or []
                problems.append(f"{where}{key}: the `{stage}` stage needs this dataset; set it (or run a stage "
                                f"that makes it first)")
                continue
            section = key.rpartition(".")[0]
            for k in (key, f"{section}.eval_path"):
                if get(cfg, k):
                    problems += _path_problems(k, get(cfg, k), where) or _row_problems(cfg, k, where)
        if stage == "ppo" and not (cfg.model.reward or cfg.reward.functions or "reward" in made):
            problems.append(f"{where}reward.functions: the `ppo` stage needs a reward: a reward model (model.reward, "
                            f"or an `rm` stage before it) or reward functions")
        if stage in ("ppo", "label"):
            problems += _function_problems(cfg, stage, where, datasets_ok=len(problems) == before)
        made.update(MAKES[stage])
    model_problems, notes = _model_problems(base, where)
    if problems + model_problems:
        raise ConfigError(problems + model_problems)
    return notes


def _looks_local(path: str) -> bool:
    """A dataset path that must exist here (data.iter_raw_rows would take other strings with a `/` for hub names)."""
    return path.startswith((".", "/", "~")) or Path(path).suffix in (".jsonl", ".json", ".parquet")


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


def _row_problems(cfg: Config, key: str, where: str) -> list[str]:
    """The first rows of a local dataset, read and checked as its stage will read them (a file that is not what
    its name says, bytes that are not UTF-8, a missing field, a chat that does not end with a user turn). Hub
    datasets are left to the stage: reading them needs the network."""
    from rlhf_ray import data

    section = key.rpartition(".")[0]
    ds, kind = get(cfg, section), section.split(".")[1]
    paths = data.sources(get(cfg, key))
    if not _local(paths):
        return []
    try:
        data.load_rows(paths, kind, ds.split, cfg.data.skip_malformed, FIRST_ROWS, ds.columns or None, ds.subset)
    except data.DataError as e:
        return [f"{where}{key}: {e}"]
    return []


def _local(paths: list[str]) -> bool:
    return all(Path(p).expanduser().exists() for p in paths)


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


def _function_problems(cfg: Config, stage: str, where: str, datasets_ok: bool) -> list[str]:
    """Each reward function (labeler, gold judge), imported here in the driver as the stage would: one that does
    not import, cannot be called as `fn(prompts, responses, **columns)` (or TRL's or veRL's way), requires a keyword
    argument that is neither metadata nor a column of the prompts dataset it scores, or is veRL's compute_score
    and finds no data_source or ground_truth there, would fail on the first batch, after every actor started. For
    these column checks a local prompts dataset is read in full (a column may first appear in any row; the stage
    reads them all in the driver anyway), a hub one not at all."""
    from actors.reward_function import METADATA
    from rlhf_ray import data
    from rlhf_ray.engines import scoring

    problems, ds = [], cfg.data.prompts
    loaded: dict[str, list[dict]] = {}  # each dataset's rows, read only when a function needs a column
    for key, spec, datasets in _reward_specs(cfg, stage):
        try:
            fn = scoring.load_reward_function(spec)
            scoring.check_signature(fn, spec)
            needed = [k for k in scoring.required_keywords(fn) if k not in METADATA]
        except scoring.RewardFunctionError as e:
            problems.append(f"{where}{key}: {e}")
            continue
        except Exception as e:  # the user's module failed as it was imported: say so, not a traceback
            problems.append(f"{where}{key}: importing {spec} raised {type(e).__name__}: {e}")
            continue
        verl = scoring.convention(fn) == "verl"  # reads data_source, ground_truth from the columns
        for ds_key in datasets if (needed or verl) and datasets_ok else []:
            if not _local(data.sources(get(cfg, ds_key))):
                continue  # a hub dataset: its columns are known once the stage reads it
            if ds_key not in loaded:
                try:
                    loaded[ds_key], _ = data.load_dataset(ds, "prompts", cfg.data.skip_malformed,
                                                          ds_key.endswith("eval_path"))
                except data.DataError as e:
                    return problems + [f"{where}{ds_key}: {e}"]
            rows, names = loaded[ds_key], data.column_names(loaded[ds_key])
            if verl:
                try:
                    scoring.verl_arguments(fn, spec, [r["prompt"] for r in rows],
                                           {n: [r["columns"].get(n) for r in rows] for n in names})
                except scoring.RewardFunctionError as e:
                    problems.append(f"{where}{key}: {e}; prompts dataset {get(cfg, ds_key)}")
            for name in needed:
                if name not in names:
                    have = ", ".join(names) or "none besides the prompt"
                    problems.append(f"{where}{key}: {spec} requires the keyword argument `{name}`, but the prompts "
                                    f"dataset {get(cfg, ds_key)} has no column `{name}` (its columns: {have}; "
                                    f"data.prompts.columns renames them); metadata: {', '.join(METADATA)}")
    return problems


def _model_problems(cfg: Config, where: str) -> tuple[list[str], list[str]]:
    """(problems, notes): model folders that do not exist, are not model folders, or would run their own code
    without model.trust_remote_code; a tokenizer with more tokens than the policy's embedding has rows (its ids
    would index past it); LoRA targets the policy does not have. Told before anything loads; hub names pass."""
    from rlhf_ray import models

    problems, folders, trust = [], {}, cfg.model.trust_remote_code
    for key in MODEL_KEYS:
        value = get(cfg, key)
        if value is None:
            continue
        try:
            folders[key] = models.resolve_model(value, build=False)
        except (ValueError, OSError) as e:
            problems.append(f"{where}{key}: {e}")
            continue
        why = None if trust else models.custom_code(folders[key])
        if why:
            problems.append(f"{where}{key}: {why}; {models.TRUST_HINT}")
            folders.pop(key)
    ready = {k for k, v in folders.items() if Path(v).is_dir()}  # a local folder, or a built-in already built
    cache = str(models.cache_dir())

    def unbuilt(*keys: str) -> str:  # the built-in names among `keys` not built yet (hub names: never checked)
        names = list(dict.fromkeys(get(cfg, k) for k in keys
                                   if k in folders and k not in ready and folders[k].startswith(cache)))
        if not names:
            return ""
        return f"until {' and '.join(names)} {'is' if len(names) == 1 else 'are'} built (the run builds them)"

    tok, policy, notes = folders.get("model.tokenizer"), folders.get("model.policy"), []
    if tok and policy and {"model.tokenizer", "model.policy"} <= ready:
        n_tokens = len(models.load_tokenizer(tok, trust))
        rows = json.loads((Path(policy) / "config.json").read_text()).get("vocab_size")
        if rows is not None and n_tokens > rows:
            problems.append(f"{where}model.tokenizer: {tok} has {n_tokens} tokens but model.policy ({policy}) "
                            f"embeds {rows}: this tokenizer does not belong to this model")
    elif tok and policy and (when := unbuilt("model.policy", "model.tokenizer")):
        notes.append(f"model.tokenizer: not checked against model.policy's embedding {when}")
    if cfg.model.lora is not None and "model.policy" in ready:
        from rlhf_ray import lora

        missing = lora.missing_targets(policy, cfg.model.lora, trust)
        if missing:
            problems.append(f"{where}model.lora.target_modules: {', '.join(missing)} match no module of "
                            f"model.policy ({policy})")
    elif cfg.model.lora is not None and (when := unbuilt("model.policy")):
        notes.append(f"model.lora.target_modules: not checked against model.policy's modules {when}")
    return problems, notes
