"""The rollout Arrow schema and its padded tensor layout."""

import pytest
import torch

from rlhf_ray import rollout


def _row(p, r, version=0, group=0):
    return {"prompt": "p", "response": "r", "prompt_ids": p, "response_ids": r,
            "logprobs": [-0.5] * len(r), "finish_reason": "stop", "policy_version": version, "group": group}


def test_collate_left_pads_prompts_and_right_pads_responses():
    rows = [_row([1, 2, 3], [7, 8], version=2), _row([4], [9, 10, 11], version=3, group=1)]
    table = rollout.to_table(rows + [])
    b = rollout.collate(table, pad_id=0)
    assert b.prompt_len == 3
    assert b.input_ids.tolist() == [[1, 2, 3, 7, 8, 0], [0, 0, 4, 9, 10, 11]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    assert b.response_mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert torch.equal(b.logprobs, torch.tensor([[-0.5, -0.5, 0.0], [-0.5, -0.5, -0.5]]))
    assert b.policy_version.tolist() == [2, 3]


def test_schema_types_and_extra_columns():
    rows = [dict(_row([1], [2]), reward=1.5)]
    table = rollout.to_table(rows)
    for f in rollout.ROLLOUT_SCHEMA:
        assert table.schema.field(f.name).type == f.type
    assert table.column("reward").to_pylist() == [1.5]
    with pytest.raises(KeyError, match="policy_version"):
        rollout.to_table([{k: v for k, v in _row([1], [2]).items() if k != "policy_version"}])
