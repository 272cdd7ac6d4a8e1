"""Rollouts: one row per generated response, held as a pyarrow Table between actors and on disk.

Arrow keeps variable-length token lists without padding, crosses Ray's object store without pickling tensors,
and is what `runs/<name>/rollouts/*.parquet` hold. Learners turn a Table into a padded `RolloutBatch`.

Besides the schema's fields, a rollout carries its prompt's dataset columns (an answer, test cases, a task name:
any JSON value), one string column each, named after the column and holding the value as JSON, and the prompt's
message list when it is a chat prompt (`prompt_messages`, JSON; null for a text prompt). JSON text, not an Arrow
struct or a typed column: a dataset column may hold different JSON types from row to row (a number here, a string
or a dict with other keys there), which Arrow's inferred types cannot hold or would change (ints to floats,
missing keys added as nulls); JSON text round-trips every JSON value exactly, in every share of a batch alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import pyarrow as pa
import torch

ROLLOUT_SCHEMA = pa.schema(
    [
        ("prompt", pa.string()),  # prompt text as the user wrote it
        ("response", pa.string()),  # generated text
        ("prompt_ids", pa.list_(pa.int32())),  # prompt tokens, chat template included
        ("response_ids", pa.list_(pa.int32())),  # generated tokens, EOS included when generated
        ("logprobs", pa.list_(pa.float32())),  # generator's log p of each response token (behaviour policy)
        ("finish_reason", pa.string()),  # "stop" (EOS) or "length" (cut off)
        ("policy_version", pa.int64()),  # weights version of the generator that produced the sample
        ("group", pa.int64()),  # index of the prompt in its batch: samples of one prompt share it
    ]
)


PROMPT_INDEX = "prompt_index"
"""The prompt's position among the run's training prompts (as loaded, 0-based): PPO's rollouts carry it, so a batch
can be counted per prompt (each drawn prompt sampled n times: none lost or sampled twice when an actor or a node
is lost, or the fleet changes size). Null where a stage samples prompts of no dataset (the probe, the bench)."""
MESSAGES = "prompt_messages"
"""A chat prompt's message list as JSON (null for a text prompt, whose `prompt` column is the whole prompt)."""
ADDED = ("reward", "kl", "staleness", "score", "gold_reward")
"""Columns the drivers add before writing rollouts (PPO: reward, kl, staleness, and gold_reward on held-out ones;
the label stage: score)."""
RESERVED = frozenset([*ROLLOUT_SCHEMA.names, PROMPT_INDEX, MESSAGES, *ADDED, "prompts", "responses", "messages",
                      "completions", "completion_ids"])
"""Names no dataset column may take: the rollout's own fields (a reward function's metadata among them) and the
reward functions' arguments for prompts and responses (ours, and TRL's names); a clash would override one
silently."""


def to_table(rows: list[dict], extra_columns: Sequence[str] = ()) -> pa.Table:
    """Rows (dicts with at least the schema's fields) -> Table; extra fields (reward, kl, ...) are kept.
    extra_columns: the fields `encode_columns` adds (JSON text, and the prompt index), typed so even where every
    value is null, so the shares of a batch concatenate."""
    table = pa.Table.from_pylist(rows)
    extra = [pa.field(name, pa.int64() if name == PROMPT_INDEX else pa.string()) for name in extra_columns]
    for f in [*ROLLOUT_SCHEMA, *extra]:
        if f.name not in table.column_names:
            raise KeyError(f"rollout rows lack field {f.name!r}")
        i = table.schema.get_field_index(f.name)
        table = table.set_column(i, f, table.column(f.name).cast(f.type))
    return table


def encode_columns(prompt: Any, columns: dict[str, Any], index: Optional[int] = None) -> dict[str, Any]:
    """The extra fields a prompt's rollouts carry (see the module docstring): its message list and its dataset
    columns, as JSON text, and its PROMPT_INDEX when it has one."""
    return {MESSAGES: None if isinstance(prompt, str) else json.dumps(prompt),
            **{name: json.dumps(value) for name, value in columns.items()},
            **({PROMPT_INDEX: index} if index is not None else {})}


def prompts(table: pa.Table) -> list:
    """Each row's prompt as the dataset gave it: a text, or the message list of a chat prompt."""
    texts = table.column("prompt").to_pylist()
    if MESSAGES not in table.column_names:
        return texts
    return [t if m is None else json.loads(m) for t, m in zip(texts, table.column(MESSAGES).to_pylist())]


def dataset_columns(table: pa.Table) -> dict[str, list]:
    """The prompts' dataset columns, decoded: name -> one value per row (every column not in RESERVED)."""
    return {name: [None if v is None else json.loads(v) for v in table.column(name).to_pylist()]
            for name in table.column_names if name not in RESERVED}


def with_seconds(table: pa.Table, seconds: float) -> pa.Table:
    """Tag a generator's rollouts with the seconds its engine spent sampling them (schema metadata)."""
    return table.replace_schema_metadata({**(table.schema.metadata or {}), b"generate_s": repr(seconds).encode()})


def seconds(table: pa.Table) -> float:
    """The sampling seconds `with_seconds` tagged (0.0 when untagged)."""
    return float((table.schema.metadata or {}).get(b"generate_s", 0.0))


@dataclass
class RolloutBatch:
    """Padded tensors of B rollouts: prompts left-padded to P, responses right-padded to T, so column P + t is
    response token t in every row (the layout `rl_math` assumes)."""

    input_ids: torch.Tensor  # (B, P + T) long: prompt then response
    attention_mask: torch.Tensor  # (B, P + T) long: 1 on real tokens
    response_mask: torch.Tensor  # (B, T) float: 1 on real response tokens
    logprobs: torch.Tensor  # (B, T) float: behaviour logprobs, 0 on padding
    policy_version: torch.Tensor  # (B,) long

    @property
    def prompt_len(self) -> int:
        return self.input_ids.shape[1] - self.response_mask.shape[1]


def collate(table: pa.Table, pad_id: int) -> RolloutBatch:
    """Table -> RolloutBatch (see its layout). Only prompt_ids and response_ids are required: scoring given
    responses (DPO's reference log-probs) has no behaviour log-probs or version, which then read as 0."""
    prompts = table.column("prompt_ids").to_pylist()
    responses = table.column("response_ids").to_pylist()
    names = table.column_names
    logps = table.column("logprobs").to_pylist() if "logprobs" in names else [[] for _ in prompts]
    versions = table.column("policy_version").to_pylist() if "policy_version" in names else [0] * len(prompts)
    B, P, T = len(prompts), max(map(len, prompts)), max(map(len, responses))
    input_ids = torch.full((B, P + T), pad_id, dtype=torch.long)
    attention = torch.zeros((B, P + T), dtype=torch.long)
    logprobs = torch.zeros((B, T))
    for i, (p, r, lp) in enumerate(zip(prompts, responses, logps)):
        input_ids[i, P - len(p) : P] = torch.tensor(p)
        input_ids[i, P : P + len(r)] = torch.tensor(r)
        attention[i, P - len(p) : P + len(r)] = 1
        logprobs[i, : len(lp)] = torch.tensor(lp)
    return RolloutBatch(
        input_ids=input_ids,
        attention_mask=attention,
        response_mask=attention[:, P:].float(),
        logprobs=logprobs,
        policy_version=torch.tensor(versions, dtype=torch.long),
    )


def by_prompt_length(idx: torch.Tensor, response_mask: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mini-batch's rows ordered by prompt length, so each micro-batch holds prompts of similar length and
    its forward skips more left padding (forward.without_left_padding). A sum over tokens: order-free."""
    P = attention_mask.shape[1] - response_mask.shape[1]
    return idx[torch.sort(attention_mask[idx, :P].sum(1), stable=True).indices]
