"""Datasets: read rows, check them, and turn them into token ids.

Three kinds, each a list of plain dicts after loading:
  prompts        {prompt, columns}: prompt a text or a message list (system / user / earlier assistant turns,
                 ending with a user turn), columns every other field of the row (any JSON value), by name
  demonstrations {prompt, response} or {messages: [{role, content}, ...]} (the last message is the response)
  preferences    {prompt, chosen, rejected}   (optional float `margin`); prompt a text or a message list,
                 chosen / rejected texts. Read from text rows, TRL's conversational rows (prompt as messages,
                 chosen / rejected as one assistant message each) or implicit-prompt rows (chosen / rejected
                 two whole conversations that differ only in their last assistant reply)

Sources: JSONL, Parquet, a `datasets.save_to_disk` folder, or a hub name (only when online; a subset and a
split), one or several (a list, a glob). `columns` maps a dataset's field names onto ours before the checks (a
dotted path, `reward_model.ground_truth`, reads a field of a nested column). A malformed row stops the load with
its file and row number, or is skipped and counted when `skip_malformed` is set. Rows over the token limits follow
the truncation policy (`error`, `drop` and count, or `truncate`). The row checks live in `rows`.
"""

from __future__ import annotations

import glob
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import pyarrow as pa
import pyarrow.parquet as pq

from rlhf_ray.rows import FIELDS, KINDS, DataError, Prompt, check_row, rename


@dataclass
class LoadReport:
    """What a load kept and what it skipped, and why."""

    source: str
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    unused: set[str] = field(default_factory=set)
    """Fields of demonstration / preference rows that no stage reads (said, never silently dropped)."""

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def __str__(self) -> str:
        extra = "".join(f", skipped {n} ({why})" for why, n in self.skipped.items())
        if self.unused:
            extra += f"; fields not used: {', '.join(sorted(self.unused))}"
        return f"{self.source}: kept {self.kept} rows{extra}"


# ---------------------------------------------------------------- reading


def _is_saved_dataset(p: Path) -> bool:
    return p.is_dir() and any((p / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json"))


def sources(path: Union[str, list[str]]) -> list[str]:
    """The files, folders or hub names a dataset path names: a list names several, a glob (`data/*.jsonl`) its
    matches in sorted order (a glob matching nothing is an error, never an empty dataset)."""
    out = []
    for p in [path] if isinstance(path, str) else path:
        if any(c in p for c in "*?[") and not Path(p).exists():
            matches = sorted(glob.glob(str(Path(p).expanduser()), recursive=True))
            if not matches:
                raise DataError(f"{p}: no file matches this pattern")
            out += matches
        else:
            out.append(p)
    if not out:
        raise DataError("an empty list of dataset files")
    return out


def iter_raw_rows(path: str, split: str = "train", subset: Optional[str] = None) -> Iterator[tuple[int, Any]]:
    """Yield (row number, raw row) from a file, a saved dataset folder or a hub dataset. Rows count from 1."""
    p = Path(path)
    if p.suffix in (".jsonl", ".json") and p.is_file():
        with p.open("rb") as f:
            yield from _jsonl_rows(f)
    elif p.suffix == ".parquet" and p.is_file():
        yield from _parquet_rows(p)
    elif _is_saved_dataset(p):
        import datasets

        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{path}: no split {split!r}; splits: {', '.join(ds)}")
            ds = ds[split]
        yield from enumerate(ds, 1)
    elif p.exists():
        raise DataError(f"{path}: not a .jsonl, .json or .parquet file, nor a folder written by datasets.save_to_disk")
    elif "/" in path and not path.startswith((".", "/")):
        yield from _iter_hub(path, split, subset)
    else:
        raise DataError(f"{path}: no such file or folder")


MAX_ROW_BYTES = 16 << 20  # one line of a JSONL file: far past any real row, and what one row may cost in memory


def _jsonl_rows(f) -> Iterator[tuple[int, Any]]:
    """(row number, row or the DataError that says why it is not one) of a JSONL file, each line read capped: a
    file of one endless line (a sparse file, a log) is refused at its first 16 MiB, not read whole into memory."""
    i = 0
    while line := f.readline(MAX_ROW_BYTES + 1):
        i += 1
        if len(line) > MAX_ROW_BYTES:
            yield i, DataError(f"longer than {MAX_ROW_BYTES:,} bytes")
            while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass  # skip_malformed went on: the rest of the line, read and dropped a MiB at a time
        elif line.strip():
            yield i, _json_row(line)


def _json_row(line: bytes) -> Any:
    """One JSONL line, or the DataError that says why it is not a row (skip_malformed skips it like any other)."""
    try:
        return json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as e:
        return DataError(f"not UTF-8 text (byte {line[e.start]:#04x} at column {e.start + 1})")
    except json.JSONDecodeError as e:
        return DataError(f"not valid JSON ({e.msg} at column {e.colno})")
    except RecursionError:
        return DataError("JSON nested too deeply")


def _parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """Rows of a Parquet file, a batch at a time (the first rows of a large file are read without the rest)."""
    i = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
            for row in batch.to_pylist():
                i += 1
                yield i, row
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file: {e}") from None


def _iter_hub(name: str, split: str, subset: Optional[str] = None) -> Iterator[tuple[int, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(name, subset, split=split)
    except Exception as e:  # offline, missing, gated: all end here with the name in the message
        raise DataError(f"{name}: not a local path, and loading it from the hub failed: {e}") from e
    yield from enumerate(ds, 1)


def load_rows(
    path: Union[str, list[str]], kind: str, split: str = "train", skip_malformed: bool = False,
    max_rows: Optional[int] = None, columns: Optional[dict[str, str]] = None, subset: Optional[str] = None,
) -> tuple[list[dict], LoadReport]:
    """Read and check every row of a dataset (each of its `sources` in turn), fields renamed by `columns`.
    Raises DataError naming the file and row, unless skip_malformed. A prompts column some rows lack is None in
    them (as `datasets` fills a missing value)."""
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; choose from {sorted(KINDS)}")
    label = path if isinstance(path, str) else ", ".join(path)
    report, rows = LoadReport(label), []
    for src in sources(path):
        for i, raw in iter_raw_rows(src, split, subset):
            if max_rows is not None and len(rows) >= max_rows:
                break  # this source; the next ones are not read either (below)
            try:
                row = rename(read_paths(raw, columns, kind), columns, kind)
                rows.append(check_row(row, kind))
                if kind != "prompts":  # a prompts row keeps every other field as a column
                    report.unused.update(k for k in row if k not in FIELDS[kind])
            except DataError as e:
                if not skip_malformed:
                    raise DataError(f"{src}: row {i}: {e}") from None
                report.skip(f"malformed: {e}")
        if max_rows is not None and len(rows) >= max_rows:
            break
    if not rows:
        raise DataError(f"{label}: no usable {kind} rows ({report})")
    if kind == "prompts":
        names = column_names(rows)
        for r in rows:
            r["columns"] = {k: r["columns"].get(k) for k in names}
    report.kept = len(rows)
    return rows, report


def read_paths(row: Any, columns: Optional[dict[str, str]], kind: str) -> Any:
    """The row with each dotted path `columns` names (`reward_model.ground_truth`: a field of a nested column, an
    object in JSON, a struct in Parquet) read out under that name, for `rename` to map like any field; the nested
    column itself stays. A field whose own name has the dot is read as it is. A path the row lacks is a DataError
    naming the config key and the path (the loader adds the file and row)."""
    if not columns or not isinstance(row, dict):
        return row
    out = row
    for ours, theirs in columns.items():
        if "." not in theirs or theirs in row or (ours == "prompt" and "messages" in row):
            continue  # a plain field (rename's), or a row giving its prompt as messages (it needs no prompt field)
        out = {**out, theirs: _follow(row, theirs, f"data.{kind}.columns.{ours}")}
    return out


def _follow(row: dict, path: str, key: str) -> Any:
    value, parts = row, path.split(".")
    for n, part in enumerate(parts):
        if not isinstance(value, dict) or part not in value:
            raise DataError(f"{key}: no {path!r} in this row: {_why_not(value, '.'.join(parts[:n]), part)}")
        value = value[part]
    return value


def _why_not(value: Any, above: str, part: str) -> str:
    if not above:
        return f"the row has no field {part!r}"
    if isinstance(value, dict):
        return f"{above!r} has no field {part!r} (its fields: {', '.join(map(str, value)) or 'none'})"
    return f"{above!r} is null" if value is None else f"{above!r} is a {type(value).__name__}, not an object"


def column_names(rows: list[dict]) -> list[str]:
    """The columns of prompts rows, in the order they first appear."""
    return list(dict.fromkeys(k for r in rows for k in r["columns"]))


def load_dataset(ds, kind: str, skip_malformed: bool, eval: bool = False) -> tuple[list[dict], LoadReport]:
    """`load_rows` of a dataset config (`DatasetConfig`): its `path`, or its `eval_path` when `eval`."""
    path, max_rows = (ds.eval_path, ds.eval_max_rows) if eval else (ds.path, ds.max_rows)
    return load_rows(path, kind, ds.split, skip_malformed, max_rows, ds.columns or None, ds.subset)


def split_eval(rows: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """Seeded shuffle, then (train, eval). eval gets round(n · fraction) rows, at least 1 when fraction > 0."""
    if eval_fraction <= 0:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(rows) * eval_fraction))
    if n_eval >= len(rows):
        raise DataError(f"eval_fraction {eval_fraction} leaves no training rows out of {len(rows)}")
    return [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]]


# ---------------------------------------------------------------- tokenization


@dataclass
class Limits:
    """Token limits and what to do with rows past them."""

    max_prompt_len: int
    max_response_len: int
    truncation: str = "error"  # error | drop | truncate


class TooLong(DataError):
    """A row over the token limits under truncation=drop: the caller counts and skips it."""


def _fit(ids: list[int], limit: int, keep_end: bool, what: str, policy: str) -> list[int]:
    if len(ids) <= limit:
        return ids
    if policy == "truncate":
        return ids[-limit:] if keep_end else ids[:limit]
    msg = f"{what} is {len(ids)} tokens, over the limit of {limit}"
    raise TooLong(msg) if policy == "drop" else DataError(msg)


def prompt_text(prompt: Prompt) -> str:
    """A prompt as plain text: a message list's contents, one per line (how it reads without a chat template,
    and what an encoder reward model reads)."""
    return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)


def prompt_ids(tokenizer, prompt: Prompt, chat: bool = True) -> list[int]:
    """Token ids of a prompt, wrapped in the chat template (with the generation prompt) when there is one."""
    msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if chat and getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)
    ids = tokenizer(prompt_text(prompt), add_special_tokens=True)["input_ids"]
    return list(ids)


def response_ids(tokenizer, response: str) -> list[int]:
    """Token ids of a response, ending in EOS (the policy must learn to stop)."""
    ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    return list(ids) + [tokenizer.eos_token_id]


def encode_prompt(tokenizer, row: dict, limits: Limits, chat: bool = True) -> list[int]:
    return _fit(prompt_ids(tokenizer, row["prompt"], chat), limits.max_prompt_len, True, "prompt", limits.truncation)


def encode_demonstration(tokenizer, row: dict, limits: Limits, chat: bool = True) -> dict:
    """{input_ids, loss_mask}: loss on response tokens only."""
    if "messages" in row:
        prompt, response = row["messages"][:-1], row["messages"][-1]["content"]
    else:
        prompt, response = row["prompt"], row["response"]
    p = _fit(prompt_ids(tokenizer, prompt, chat), limits.max_prompt_len, True, "prompt", limits.truncation)
    r = _fit(response_ids(tokenizer, response), limits.max_response_len, False, "response", limits.truncation)
    return {"input_ids": p + r, "loss_mask": [0] * len(p) + [1] * len(r)}


def encode_preference(tokenizer, row: dict, limits: Limits, chat: bool = True) -> dict:
    """{prompt_ids, chosen_ids, rejected_ids[, margin]}: responses end in EOS."""
    p = _fit(prompt_ids(tokenizer, row["prompt"], chat), limits.max_prompt_len, True, "prompt", limits.truncation)
    out = {"prompt_ids": p}
    for k in ("chosen", "rejected"):
        out[f"{k}_ids"] = _fit(response_ids(tokenizer, row[k]), limits.max_response_len, False, k, limits.truncation)
    if "margin" in row:
        out["margin"] = row["margin"]
    return out


_ENCODERS = {"prompts": encode_prompt, "demonstrations": encode_demonstration, "preferences": encode_preference}


def encode_kept(tokenizer, rows: list[dict], kind: str, limits: Limits, report: LoadReport,
                chat: bool = True) -> list[tuple[dict, Any]]:
    """(row, encoding) of every row kept: rows over the limits are dropped and counted (truncation=drop) or
    raise with the row."""
    out = []
    for i, row in enumerate(rows, 1):
        try:
            out.append((row, _ENCODERS[kind](tokenizer, row, limits, chat)))
        except TooLong as e:
            report.skip(f"too long: {str(e).split(' is ')[0]}")
        except DataError as e:
            raise DataError(f"{report.source}: row {i}: {e}") from None
    if not out:
        raise DataError(f"{report.source}: every row is over the token limits ({report})")
    report.kept = len(out)
    return out


def encode_rows(tokenizer, rows: list[dict], kind: str, limits: Limits, report: LoadReport,
                chat: bool = True) -> list:
    """The encodings of `encode_kept`."""
    return [enc for _, enc in encode_kept(tokenizer, rows, kind, limits, report, chat)]


def load_held_out(ds, kind: str, skip_malformed: bool, seed: int, encode: Callable[[list, LoadReport], list]
                  ) -> tuple[list, list, list[LoadReport]]:
    """(train, held out) encodings of one dataset config (`DatasetConfig`): held out by its own `eval_path`
    file or by a seeded `eval_fraction` of `path`; and the load reports."""
    rows, report = load_dataset(ds, kind, skip_malformed)
    train = encode(rows, report)
    if not ds.eval_path:
        return (*split_eval(train, ds.eval_fraction, seed), [report])
    rows, eval_report = load_dataset(ds, kind, skip_malformed, eval=True)
    return train, encode(rows, eval_report), [report, eval_report]


# ---------------------------------------------------------------- writing


def write_rows(rows: list[dict], path: str | Path) -> None:
    """Write rows as Parquet or JSONL, by suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        with path.open("w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


# ---------------------------------------------------------------- preference pairs from scored samples

DROP_REASONS = ("ties", "blank", "same_text")


def best_worst_pairs(prompts: list[str], responses: list[list[str]], scores: list[list[float]]
                     ) -> tuple[list[dict], dict[str, int]]:
    """One preferences row per prompt from its k scored responses: the best as `chosen`, the worst as `rejected`,
    `margin` = their score difference (what the RM's margin loss reads), and both scores.

    Returns (rows, dropped): a prompt gives no row, and is counted under its reason, when
      ties       its responses all score the same: there is no preference to learn
      blank      fewer than two responses have text (a preferences row needs text on both sides)
      same_text  best and worst read alike (two token sequences can decode to one text): a contradictory pair
    so len(rows) + sum(dropped.values()) == len(prompts). Equal scores go to the earliest response."""
    rows, dropped = [], dict.fromkeys(DROP_REASONS, 0)
    for prompt, texts, values in zip(prompts, responses, scores, strict=True):
        if len(texts) != len(values):
            raise ValueError(f"prompt {prompt!r:.60}: {len(texts)} responses but {len(values)} scores")
        candidates = [(v, t) for t, v in zip(texts, values) if t.strip()]
        if len(candidates) < 2:
            dropped["blank"] += 1
            continue
        best = max(candidates, key=lambda c: c[0])
        worst = min(candidates, key=lambda c: c[0])
        if best[0] == worst[0]:
            dropped["ties"] += 1
        elif best[1] == worst[1]:
            dropped["same_text"] += 1
        else:
            rows.append({"prompt": prompt, "chosen": best[1], "rejected": worst[1], "margin": best[0] - worst[0],
                         "chosen_score": best[0], "rejected_score": worst[0]})
    return rows, dropped
