"""Batches of the supervised stages: the step schedule and the padded layouts, checked by hand."""

import pytest
import torch

from rlhf_ray.algos import batching as Bt


def test_step_batches_full_seeded_and_reshuffled_per_epoch():
    steps = Bt.step_batches(10, 4, epochs=2, seed=0)
    assert len(steps) == 4 and all(len(s) == 4 for s in steps)  # 2 full batches per epoch, tail of 2 left out
    for epoch in (steps[:2], steps[2:]):
        assert len(set(epoch[0] + epoch[1])) == 8  # no row twice within an epoch
    assert steps[:2] != steps[2:]  # a fresh shuffle each epoch
    assert Bt.step_batches(10, 4, 2, seed=0) == steps and Bt.step_batches(10, 4, 2, seed=1) != steps
    assert Bt.step_batches(10, 4, 2, 0, max_steps=3) == steps[:3]
    with pytest.raises(ValueError, match="fewer than one batch of 8"):
        Bt.step_batches(5, 8, 1, 0)


def test_sft_batch_right_pads_and_masks_the_response():
    b = Bt.sft_batch([{"input_ids": [5, 6, 7], "loss_mask": [0, 1, 1]}, {"input_ids": [8], "loss_mask": [1]}], 0)
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["loss_mask"].tolist() == [[0, 1, 1], [1, 0, 0]]


def test_pair_batch_one_width_for_both_halves():
    b = Bt.pair_batch([{"chosen": [1, 2], "rejected": [3, 4, 5], "margin": 0.5}], pad_id=9)
    assert b["chosen_input_ids"].tolist() == [[1, 2, 9]] and b["rejected_input_ids"].tolist() == [[3, 4, 5]]
    assert b["chosen_attention_mask"].tolist() == [[1, 1, 0]] and b["margin"].tolist() == [0.5]
    stacked = Bt.stack_pair(b, ("input_ids",))
    assert stacked["input_ids"].tolist() == [[1, 2, 9], [3, 4, 5]]  # chosen rows first
    assert "margin" not in Bt.pair_batch([{"chosen": [1], "rejected": [2]}], 0)


def test_dpo_batch_prompt_left_response_right():
    rows = [{"prompt_ids": [1, 2], "chosen_ids": [5], "rejected_ids": [6, 7], "ref_chosen_logps": -1.0,
             "ref_rejected_logps": -2.0},
            {"prompt_ids": [3], "chosen_ids": [8, 9, 10], "rejected_ids": [11], "ref_chosen_logps": -3.0,
             "ref_rejected_logps": -4.0}]
    b = Bt.dpo_batch(rows, pad_id=0)
    assert b["chosen_input_ids"].tolist() == [[1, 2, 5, 0, 0], [0, 3, 8, 9, 10]]  # P = 2, T = 3 for both halves
    assert b["rejected_input_ids"].tolist() == [[1, 2, 6, 7, 0], [0, 3, 11, 0, 0]]
    assert b["rejected_attention_mask"].tolist() == [[1, 1, 1, 1, 0], [0, 1, 1, 0, 0]]
    assert b["chosen_response_mask"].tolist() == [[1, 0, 0], [1, 1, 1]]
    assert b["ref_rejected_logps"].tolist() == [-2.0, -4.0]
    ids, mask, resp = Bt.prompt_response_layout([[4]], [[5, 6]], 0, P=2, T=3)
    assert ids.tolist() == [[0, 4, 5, 6, 0]] and resp.dtype == torch.float32 and resp.tolist() == [[1, 1, 0]]
