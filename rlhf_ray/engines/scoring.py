"""Scoring rollouts: reference log-probs, reward-model scores, user reward functions. Plain functions the scorer
actors call; no Ray here.

Batches use the `rollout.RolloutBatch` layout: prompts left-padded to P, responses right-padded to T, so the
logits that predict response token t sit at column P - 1 + t.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import math
import numbers
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from rlhf_ray.algos import forward
from rlhf_ray.errors import UserError
from rlhf_ray.rollout import RESERVED, RolloutBatch


def _micro_batches(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, i + size)


@torch.no_grad()
def response_logprobs(model, batch: RolloutBatch, micro_batch_size: int = 8, temperature: float = 1.0
                      ) -> torch.Tensor:
    """log π(response token t | prefix) at sampling temperature `temperature` for every row: (B, T), 0 on
    padding."""
    T = batch.response_mask.shape[1]
    out = [forward.logprobs(model, batch.input_ids[sl], batch.attention_mask[sl], T, temperature)
           for sl in _micro_batches(batch.input_ids.shape[0], micro_batch_size)]
    return torch.cat(out) * batch.response_mask


@torch.no_grad()
def reward_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, micro_batch_size: int = 8
                  ) -> torch.Tensor:
    """The reward model's scalar for each sequence (B, L), read at the last real token: (B,)."""
    return torch.cat([
        forward.sequence_rewards(model, input_ids[sl], attention_mask[sl])
        for sl in _micro_batches(input_ids.shape[0], micro_batch_size)
    ])


# ---------------------------------------------------------------- user reward functions


class RewardFunctionError(UserError):
    """A reward function that cannot be loaded, raises, or returns the wrong thing."""


@dataclass(frozen=True)
class FunctionCode:
    """A reward function (labeler, gold judge) as the driver resolved it, shipped to every actor that calls it.

    `path/file.py:function`: the file's bytes, read once on the driver; every actor runs those bytes, never the
    file on its own node. `module:function`: imported on each node by name (its package, its imports), and refused
    where the module's source differs from what the driver imported (`source` is then empty, `sha256` that of the
    module's file; None for a module without one, e.g. a builtin). Why not the function by value (cloudpickle):
    that would carry the driver's module state (a loaded model, a cache, a lock) into every actor, or fail to
    pickle it, and still import the module's own imports by name; bytes and a hash give every node the code that
    was checked, started fresh."""

    spec: str
    origin: Optional[str]  # the file the driver read (absolute); None for a module without one
    source: bytes  # a file spec's bytes; b"" for a module spec
    sha256: Optional[str]


_RESOLVED: dict[tuple[str, str], FunctionCode] = {}


def resolve(spec: str) -> FunctionCode:
    """`spec` read on this (the driver's) process, once: a later call returns the first reading, like an import,
    so the function the checks before Ray loaded is the one the stages ship. A relative file path is read from the
    current directory (the rule for every relative path in a config)."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise RewardFunctionError(f"reward function {spec!r}: expected `module:function` or `file.py:function`")
    path = Path(target).expanduser().resolve() if target.endswith(".py") else None
    key = (spec, str(path))
    if key not in _RESOLVED:
        _RESOLVED[key] = _read_file(spec, path) if path else _hash_module(spec, target)
    return _RESOLVED[key]


def _read_file(spec: str, path: Path) -> FunctionCode:
    try:
        source = path.read_bytes() if path.is_file() else None
    except OSError as e:
        raise RewardFunctionError(f"reward function {spec!r}: cannot read {path}: {e.strerror}") from None
    if source is None:
        raise RewardFunctionError(f"reward function {spec!r}: no such file {path}")
    return FunctionCode(spec, str(path), source, hashlib.sha256(source).hexdigest())


def _hash_module(spec: str, target: str) -> FunctionCode:
    origin = getattr(_import(spec, target), "__file__", None)
    return FunctionCode(spec, origin, b"", _file_sha256(origin) if origin else None)


def load(code: FunctionCode) -> Callable:
    """The function `code` names, as the driver resolved it: a file spec's bytes run in a fresh module here; a
    module spec imported here, refused (one RewardFunctionError) when its source is not the driver's."""
    target, _, name = code.spec.rpartition(":")
    if target.endswith(".py"):
        module = types.ModuleType(f"rlhf_ray_user_{Path(code.origin).stem}")
        module.__file__ = code.origin
        exec(compile(code.source, code.origin, "exec"), module.__dict__)
    else:
        module = _import(code.spec, target)
        origin = getattr(module, "__file__", None)
        here = _file_sha256(origin) if origin else None
        if here != code.sha256:
            raise RewardFunctionError(
                f"reward function {code.spec!r}: module {target} on this node ({origin or 'no file'}) is not the "
                f"code the driver checked ({code.origin or 'no file'}, sha256 {str(code.sha256)[:12]} here "
                f"{str(here)[:12]}): install the same version on every node")
    fn = getattr(module, name, None)
    if not callable(fn):
        raise RewardFunctionError(f"reward function {code.spec!r}: {target} has no function {name!r}")
    return fn


def load_reward_function(spec: str) -> Callable:
    """`package.module:function` (importable) or `path/to/file.py:function` (a file the config names), resolved
    here (`resolve`) and loaded."""
    return load(resolve(spec))


def _import(spec: str, target: str):
    try:
        return importlib.import_module(target)
    except ImportError as e:
        raise RewardFunctionError(f"reward function {spec!r}: cannot import {target!r}: {e}") from e


def _file_sha256(path: str) -> Optional[str]:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


TRL_ARGUMENTS = ("prompts", "completions", "completion_ids")
"""What TRL passes a reward function by keyword besides the dataset's columns; a function that names `completions`
is called TRL's way (`call_reward_function`)."""

VERL_ARGUMENTS = ("data_source", "solution_str", "ground_truth", "extra_info")
"""What veRL's reward manager passes `compute_score(data_source, solution_str, ground_truth, extra_info=None)` by
keyword, one sample at a time; a function that names `solution_str` is called veRL's way (`call_reward_function`)."""

VERL_COLUMNS = {"data_source": ("data_source",), "ground_truth": ("ground_truth", "reward_model.ground_truth"),
                "extra_info": ("extra_info",)}
"""Where each veRL argument is read from a prompts row: the first of its paths whose column the dataset has. veRL's
datasets hold the answer as `reward_model: {style, ground_truth}`; a `ground_truth` column (one the dataset has, or
one data.prompts.columns maps, e.g. `{ground_truth: answer}`) is the explicit choice and comes first."""


def convention(fn: Callable) -> str:
    """How `fn` is called: "trl" (it names `completions`), "verl" (it names `solution_str`), else "ours"
    (`fn(prompts, responses, **columns)`)."""
    try:
        names = {p.name for p in inspect.signature(fn).parameters.values()}
    except (TypeError, ValueError):  # a builtin without a signature: called our way
        return "ours"
    return "trl" if "completions" in names else "verl" if "solution_str" in names else "ours"


def required_keywords(fn: Callable) -> list[str]:
    """The arguments `fn` needs besides prompts and responses (its first two, TRL's `prompts` / `completions` /
    `completion_ids`, or veRL's four) and has no default for: each must be a metadata field or a dataset column
    (what `call_reward_function` passes by keyword). veRL's own arguments are read by `verl_arguments`."""
    params = list(inspect.signature(fn).parameters.values())
    given = {"trl": [p for p in params if p.name in TRL_ARGUMENTS],
             "verl": [p for p in params if p.name in VERL_ARGUMENTS],
             "ours": [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:2]}
    return [p.name for p in params if p not in given[convention(fn)] and p.default is p.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def check_signature(fn: Callable, spec: str) -> None:
    """Refuse a function that cannot be called as `fn(prompts, responses, **columns)`, TRL's way (by keyword, with
    `completions`) or veRL's (by keyword, with `solution_str`): told when it is loaded, not on the first batch."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: its first call tells
        return
    names = {p.name for p in params}
    if {"completions", "solution_str"} <= names:
        raise RewardFunctionError(f"reward function {spec}: it names both `completions` (TRL's way) and "
                                  "`solution_str` (veRL's way); which call it expects is unclear")
    style = convention(fn)
    if style in ("trl", "verl"):
        _check_keyword_call(params, spec, style)
        return
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    stuck = [p.name for p in positional[2:] if p.kind is p.POSITIONAL_ONLY and p.default is p.empty]
    if len(positional) < 2 and not any(p.kind is p.VAR_POSITIONAL for p in params) or stuck:
        raise RewardFunctionError(
            f"reward function {spec}: its signature {inspect.signature(fn)} cannot take the call "
            "fn(prompts, responses, **columns) (a TRL function names `completions`, a veRL one `solution_str`)"
            + (f"; positional-only without a default: {', '.join(stuck)}" if stuck else ""))


def _check_keyword_call(params: list[inspect.Parameter], spec: str, style: str) -> None:
    """TRL and veRL pass every argument by keyword; veRL passes nothing but its four."""
    ours = TRL_ARGUMENTS if style == "trl" else VERL_ARGUMENTS
    peer = "TRL" if style == "trl" else "veRL"
    stuck = [p.name for p in params if p.kind is p.POSITIONAL_ONLY and (p.name in ours or p.default is p.empty)]
    if stuck:
        raise RewardFunctionError(f"reward function {spec}: {', '.join(f'`{n}`' for n in stuck)} "
                                  f"{'is' if len(stuck) == 1 else 'are'} positional-only; {peer}'s way passes every "
                                  "argument by keyword")
    extra = [p.name for p in params if style == "verl" and p.name not in VERL_ARGUMENTS and p.default is p.empty
             and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if extra:
        raise RewardFunctionError(f"reward function {spec}: veRL's way passes only {', '.join(VERL_ARGUMENTS)}; "
                                  f"it also requires {', '.join(extra)}")


def _completions(prompts: list, responses: list[str]) -> list:
    """TRL's `completions`: for a conversational prompt (a message list) the response as one assistant message,
    `[{"role": "assistant", "content": text}]`, else the text."""
    return [[{"role": "assistant", "content": r}] if isinstance(p, list) else r
            for p, r in zip(prompts, responses, strict=True)]


def _call(fn: Callable, prompts: list, responses: list[str], metadata: dict, label: str):
    """`fn(prompts, responses, **metadata)`; or, for a function written for TRL (it names `completions`), all by
    keyword as TRL calls it: prompts=, completions= (`_completions`), completion_ids= (the responses' token ids);
    or, for one written for veRL (it names `solution_str`), once per response (`_call_verl`). Keys the function
    does not declare are not passed, unless it takes **kwargs."""
    params = list(inspect.signature(fn).parameters.values())
    style = convention(fn)
    if style == "verl":
        return _call_verl(fn, params, prompts, responses, metadata, label)
    args: tuple = (prompts, responses)
    if style == "trl":
        args, metadata = (), {"prompts": prompts, "completions": _completions(prompts, responses), **metadata}
        if "response_ids" in metadata:
            metadata["completion_ids"] = metadata["response_ids"]
    return fn(*args, **_declared(params, metadata))


def _declared(params: list[inspect.Parameter], kwargs: dict) -> dict:
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in {p.name for p in params}}


def _call_verl(fn: Callable, params: list[inspect.Parameter], prompts: list, responses: list[str], columns: dict,
               label: str) -> list:
    """veRL's reward manager's call: one response at a time, by keyword, solution_str= its text and the rest read
    from its prompt's columns (`verl_arguments`); a dict result gives its `score`, as veRL reads it."""
    read = verl_arguments(fn, label, prompts, columns)
    out = []
    for i, text in enumerate(responses):
        kwargs = {"solution_str": text, **{k: v[i] for k, v in read.items()}}
        score = fn(**_declared(params, kwargs))
        if isinstance(score, dict):
            if "score" not in score:
                raise RewardFunctionError(f"reward function {label} returned a dict without a `score` for row {i}"
                                          f" (its keys: {', '.join(map(str, score)) or 'none'})")
            score = score["score"]
        out.append(score)
    return out


def verl_arguments(fn: Callable, label: str, prompts: list, columns: dict[str, list]) -> dict[str, list]:
    """The veRL arguments besides solution_str that `fn` takes (each it names, or all with **kwargs), one value
    per row, read from the prompts' `columns` (name -> one value per row) by `VERL_COLUMNS`. extra_info is {}
    where the dataset has no such column (veRL's default). A required one (named, without a default) that the
    dataset lacks is one RewardFunctionError naming the function and the column: the stage's check calls this on
    the whole prompts dataset before Ray starts, so the first batch does not tell."""
    params = {p.name: p for p in inspect.signature(fn).parameters.values()}
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    out = {}
    for name, paths in VERL_COLUMNS.items():
        if name not in params and not takes_all:
            continue
        path = next((q for q in paths if q.split(".")[0] in columns), None)
        if path is not None:
            out[name] = _read_path(columns, path, name, label, prompts)
        elif name == "extra_info":
            out[name] = [{} for _ in prompts]
        elif name in params and params[name].default is params[name].empty:
            have = ", ".join(c for c in columns if c not in RESERVED) or "none besides the prompt"  # not metadata
            raise RewardFunctionError(
                f"reward function {label} (veRL's compute_score) needs `{name}`, read from the prompts dataset's "
                f"{' or '.join(f'`{q}`' for q in paths)}; it has no such column (its columns: {have}; "
                "data.prompts.columns renames them)")
    return out


def _read_path(columns: dict[str, list], path: str, name: str, label: str, prompts: list) -> list:
    """Every row's value at `path` (a column, or `column.field` of a column of objects)."""
    head, _, field = path.partition(".")
    if not field:
        return columns[head]
    out = []
    for prompt, value in zip(prompts, columns[head], strict=True):
        if not isinstance(value, dict) or field not in value:
            raise RewardFunctionError(
                f"reward function {label} (veRL's compute_score) reads `{name}` from `{path}`, but the prompt "
                f"{_one_line(prompt)!r:.80} has {head} = {value!r:.80}, no field `{field}`")
        out.append(value[field])
    return out


def _one_line(prompt) -> str:
    """A prompt as one line of text, for a message."""
    return prompt if isinstance(prompt, str) else " / ".join(str(m.get("content")) for m in prompt)


def call_reward_function(fn: Callable, prompts: list, responses: list[str], **metadata) -> list[float]:
    """Call `fn(prompts, responses, **metadata)` (see `_call`) and check it returns one finite number per response.

    Metadata keys (and dataset columns, which come the same way: one value per response) the function does not
    declare are not passed, unless it takes **kwargs."""
    label = getattr(fn, "__qualname__", repr(fn))
    try:
        out = _call(fn, prompts, responses, metadata, label)
    except RewardFunctionError:
        raise  # ours, already saying what is wrong (a column veRL's way needs, a dict without a score)
    except Exception as e:
        raise RewardFunctionError(f"reward function {label} raised {type(e).__name__}: {e}") from e
    try:
        if isinstance(out, (str, bytes, dict)):  # iterable, but not one number per response
            raise TypeError
        out = list(out)
    except TypeError:
        raise RewardFunctionError(f"reward function {label} must return a list of numbers, got {out!r:.200}") from None
    if len(out) != len(responses):
        raise RewardFunctionError(f"reward function {label} returned {len(out)} values for {len(responses)} responses")
    bad = [i for i, v in enumerate(out) if not _is_real(v)]
    if bad:
        shown = ", ".join(f"row {i}: {out[i]!r:.40}" for i in bad[:5])
        raise RewardFunctionError(f"reward function {label} must return a real number for every response (not a "
                                  f"string, bool or None); got {shown}"
                                  f"{f' and {len(bad) - 5} more' if len(bad) > 5 else ''}")
    try:
        values = [float(v) for v in out]
    except OverflowError:  # an int past float's range
        raise RewardFunctionError(f"reward function {label} returned a number too large for a float") from None
    bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        raise RewardFunctionError(f"reward function {label} returned non-finite values at rows {bad[:10]}")
    return values


def _is_real(v) -> bool:
    """A Python, numpy or 0-d torch real number. Refused, not read: a string (float("1") would take a checker's
    text for a score, and "01" once became two rewards), None (TRL's "not applicable" has no place in a weighted
    sum), a bool (a checker's verdict: say what it is worth, `float(ok)`), a complex number."""
    if isinstance(v, torch.Tensor):
        return v.ndim == 0 and not (v.dtype == torch.bool or v.is_complex())
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def encode_text_pairs(tokenizer, prompts: list[str], responses: list[str], max_len: int = 512
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of prompt/response texts as pairs, for a reward model with its own tokenizer
    (an encoder such as MiniLM reads them as `[CLS] prompt [SEP] response [SEP]`)."""
    enc = tokenizer(prompts, responses, truncation=True, max_length=max_len, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]
