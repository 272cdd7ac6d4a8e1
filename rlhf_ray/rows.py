"""The rows of each dataset kind (see `data`): what a row must hold, checked one row at a time, and the renaming
of a dataset's fields onto ours (`data.<kind>.columns`). Each problem is one DataError saying what is wrong; the
loader adds the file and row."""

from __future__ import annotations

import json
from typing import Any, Optional, Union

from rlhf_ray import rollout
from rlhf_ray.errors import UserError

KINDS = {"prompts", "demonstrations", "preferences"}
# The fields each kind reads (a `columns` mapping may rename a dataset's fields onto them).
FIELDS = {"prompts": ("prompt", "messages"), "demonstrations": ("prompt", "response", "messages"),
          "preferences": ("prompt", "chosen", "rejected", "margin")}

Prompt = Union[str, list[dict]]
"""A prompt: a text (wrapped as one user turn by the chat template) or a message list."""


class DataError(UserError):
    """A dataset problem, naming the source and row."""


def _text(row: dict, key: str) -> str:
    v = row.get(key)
    if v is None:
        raise DataError(f"missing field {key!r}")
    if not isinstance(v, str):
        raise DataError(f"field {key!r} must be a string, got {type(v).__name__}")
    if not v.strip():
        raise DataError(f"field {key!r} is empty")
    return v


def _message_list(msgs: Any, key: str, least: int = 1) -> list[dict]:
    """A list of {role: str, content: str} messages (other keys dropped: the chat template reads these two)."""
    if not isinstance(msgs, list) or len(msgs) < least:
        raise DataError(f"field {key!r} must be a list of at least {least} {{role, content}} message(s)")
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{key}[{j}] must be {{role: str, content: str}}, got {m!r:.80}")
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


def _messages(row: dict) -> list[dict]:
    msgs = _message_list(row["messages"], "messages", least=2)
    if msgs[-1]["role"] != "assistant":
        raise DataError(f"the last message must be the assistant's response, got role {msgs[-1]['role']!r}")
    if not msgs[-1]["content"].strip():
        raise DataError("the assistant's response is empty")
    return msgs


def _chat_prompt(msgs: Any, key: str) -> list[dict]:
    """A prompt as messages: at least one user turn, and the last turn the user's (the chat template then adds
    the generation prompt, and the model answers that turn)."""
    msgs = _message_list(msgs, key)
    if not any(m["role"] == "user" for m in msgs):
        raise DataError(f"field {key!r} has no user turn (roles: {', '.join(m['role'] for m in msgs)})")
    if msgs[-1]["role"] != "user":
        raise DataError(f"field {key!r} must end with a user turn for the model to answer, got role "
                        f"{msgs[-1]['role']!r}")
    if not msgs[-1]["content"].strip():
        raise DataError(f"field {key!r}: the last user turn is empty")
    return msgs


def _prompt(row: dict, key: str = "prompt") -> Prompt:
    """A text prompt, or a message list when the field holds one (TRL's conversational form)."""
    return _chat_prompt(row[key], key) if isinstance(row.get(key), list) else _text(row, key)


def _reply(row: dict, key: str) -> str:
    """chosen / rejected: a text, or TRL's conversational form, a list of one assistant message."""
    v = row.get(key)
    if not isinstance(v, list):
        return _text(row, key)
    msgs = _message_list(v, key)
    if len(msgs) != 1 or msgs[0]["role"] != "assistant":
        raise DataError(f"field {key!r} must be one assistant message when the prompt is given apart, got roles "
                        f"{', '.join(m['role'] for m in msgs)}")
    if not msgs[0]["content"].strip():
        raise DataError(f"field {key!r}: the assistant message is empty")
    return msgs[0]["content"]


def _implicit_prompt(row: dict) -> tuple[list[dict], str, str]:
    """TRL's implicit-prompt rows: chosen and rejected are whole conversations that share every message but the
    last assistant reply; the shared messages are the prompt."""
    chosen, rejected = _message_list(row["chosen"], "chosen"), _message_list(row["rejected"], "rejected")
    if min(len(chosen), len(rejected)) < 2:
        raise DataError("missing field 'prompt'; without it, 'chosen' and 'rejected' must be whole conversations "
                        "(the prompt's messages, then the reply)")
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if chosen[n:] == rejected[n:]:
        raise DataError("'chosen' and 'rejected' are the same conversation")
    for key, tail in (("chosen", chosen[n:]), ("rejected", rejected[n:])):
        if len(tail) != 1 or tail[0]["role"] != "assistant":
            raise DataError(f"'chosen' and 'rejected' must share every message but the last assistant reply; they "
                            f"differ from message {n} on, where {key} has {len(tail)} message(s) (roles: "
                            f"{', '.join(m['role'] for m in tail) or 'none'})")
    prompt = _chat_prompt(chosen[:n], "prompt (the messages chosen and rejected share)")
    return prompt, _reply({"chosen": chosen[n:]}, "chosen"), _reply({"rejected": rejected[n:]}, "rejected")


def _prompts_row(row: dict) -> dict:
    """{prompt, columns}: every field besides the prompt travels with it as a column (any JSON value)."""
    if row.get("messages") is not None and row.get("prompt") is not None:
        raise DataError("the row has both 'prompt' and 'messages'; keep one (data.prompts.columns can rename the "
                        "other)")
    prompt = _chat_prompt(row["messages"], "messages") if row.get("messages") is not None else _prompt(row)
    columns = {k: v for k, v in row.items() if k not in ("prompt", "messages")}
    for k, v in columns.items():
        if k in rollout.RESERVED:
            raise DataError(f"column {k!r} has the name of a field of every rollout or an argument of every "
                            f"reward function ({', '.join(sorted(rollout.RESERVED))}); rename it with "
                            f"data.prompts.columns, e.g. {{dataset_{k}: {k}}}")
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            raise DataError(f"column {k!r} holds a {type(v).__name__}, not a JSON value") from None
    return {"prompt": prompt, "columns": columns}


def _preferences_row(row: dict) -> dict:
    if row.get("prompt") is None and isinstance(row.get("chosen"), list) and isinstance(row.get("rejected"), list):
        prompt, chosen, rejected = _implicit_prompt(row)
    else:
        prompt, chosen, rejected = _prompt(row), _reply(row, "chosen"), _reply(row, "rejected")
    out = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if row.get("margin") is not None:
        if not isinstance(row["margin"], (int, float)) or isinstance(row["margin"], bool):
            raise DataError(f"field 'margin' must be a number, got {row['margin']!r}")
        out["margin"] = float(row["margin"])
    return out


def check_row(row: Any, kind: str) -> dict:
    """The row reduced to the fields of its kind (a prompts row keeps every other field as `columns`), or
    DataError saying what is wrong."""
    if isinstance(row, DataError):
        raise row
    if not isinstance(row, dict):
        raise DataError(f"a row must be an object, got {type(row).__name__}")
    if kind == "prompts":
        return _prompts_row(row)
    if kind == "demonstrations":
        if row.get("messages") is not None:
            return {"messages": _messages(row)}
        return {"prompt": _text(row, "prompt"), "response": _text(row, "response")}
    if kind == "preferences":
        return _preferences_row(row)
    raise ValueError(f"unknown dataset kind {kind!r}; choose from {sorted(KINDS)}")


def rename(row: Any, columns: Optional[dict[str, str]], kind: str) -> Any:
    """The row with the dataset's field names mapped onto ours (`data.<kind>.columns`: {ours: the dataset's})."""
    if not columns or not isinstance(row, dict):
        return row
    out = {k: v for k, v in row.items() if k not in columns.values()}
    for ours, theirs in columns.items():
        if ours in out:
            raise DataError(f"the row has a field {ours!r} and data.{kind}.columns maps {theirs!r} onto it; map the "
                            f"row's own {ours!r} to another name too")
        if theirs in row:
            out[ours] = row[theirs]
        elif ours in FIELDS[kind] and ours != "margin" and not (ours == "prompt" and "messages" in out):
            # a field we read (unless the row gives the prompt as `messages`): its absence is the row's fault
            raise DataError(f"missing field {theirs!r} (data.{kind}.columns maps it to {ours!r})")
    return out
