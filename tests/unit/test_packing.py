"""Padding-free forwards (algos/packing.py) against the padded ones on the tiny model, fp32: log-probs at a
temperature (the rollout layout, prompts left-padded), values, sequence rewards, and the SFT loss with its
gradients; the packed rows attend to themselves only; and the token-budget cuts the learner ranks agree on."""

import pytest
import torch

from rlhf_ray import models
from rlhf_ray.algos import batching, forward, ppo_losses
from rlhf_ray.algos.packing import Packed, budget_cuts, pack, real_tokens

PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13, 14], [15]]
RESPONSES = [[20, 21, 22, 23], [24], [25, 26, 27], [28, 29, 30, 31, 32, 33]]


@pytest.fixture(scope="module")
def policy(tiny):
    torch.manual_seed(0)
    return models.load_policy(tiny)


@pytest.fixture(scope="module")
def value_model(tiny):
    torch.manual_seed(0)
    return models.load_value_model(tiny)


def _layout():
    return batching.prompt_response_layout(PROMPTS, RESPONSES, 0)


def _grads(model, loss):
    return torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])


def test_pack_keeps_each_rows_tokens_and_positions():
    ids, mask, _ = _layout()
    p = pack(ids, mask)
    lengths = [len(a) + len(b) for a, b in zip(PROMPTS, RESPONSES)]
    assert p.input_ids[0].tolist() == [t for a, b in zip(PROMPTS, RESPONSES) for t in a + b]
    assert p.position_ids[0].tolist() == [i for n in lengths for i in range(n)]
    assert torch.equal(p.input_ids[0][p.index] * mask, ids * mask)  # each real position reads its own token


def test_packed_rows_attend_to_themselves_only(policy):
    """Packed: each row's logits are its own forward's alone; packed with positions that do not restart (one long
    sequence), they are not: the test can fail."""
    ids, mask, _ = _layout()
    p = pack(ids, mask)
    with torch.no_grad():
        packed = policy(input_ids=p.input_ids, position_ids=p.position_ids, use_cache=False).logits[0]
        crossed = policy(input_ids=p.input_ids, position_ids=torch.arange(p.input_ids.shape[1])[None],
                         use_cache=False).logits[0]
        start = 0
        for a, b in zip(PROMPTS, RESPONSES):
            alone = policy(input_ids=torch.tensor([a + b])).logits[0]
            torch.testing.assert_close(packed[start:start + len(a + b)], alone, atol=1e-5, rtol=1e-5)
            start += len(a + b)
    assert (packed - crossed).abs().max() > 0.1


def test_logprobs_values_and_rewards_equal_the_padded_forward(policy, value_model):
    ids, mask, rmask = _layout()
    T = rmask.shape[1]
    with torch.no_grad():
        for t in (1.0, 0.7):
            torch.testing.assert_close(forward.logprobs(Packed(policy), ids, mask, T, t) * rmask,
                                       forward.logprobs(policy, ids, mask, T, t) * rmask, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(forward.values(Packed(value_model), ids, mask, T) * rmask,
                                   forward.values(value_model, ids, mask, T) * rmask, atol=1e-5, rtol=1e-5)
        right, right_mask = batching._right_pad([a + b for a, b in zip(PROMPTS, RESPONSES)], 0)
        torch.testing.assert_close(forward.sequence_rewards(Packed(value_model), right, right_mask),
                                   forward.sequence_rewards(value_model, right, right_mask), atol=1e-5, rtol=1e-5)


def test_sft_and_ppo_losses_and_gradients_equal_the_padded_forward(policy):
    rows = [{"input_ids": a + b, "loss_mask": [0] * len(a) + [1] * len(b)} for a, b in zip(PROMPTS, RESPONSES)]
    mb = batching.sft_batch(rows, 0)
    n = forward.sft_count(mb)
    padded, _ = forward.sft_nll(policy, mb, n)
    packed, _ = forward.sft_nll(Packed(policy), mb, n)
    torch.testing.assert_close(packed, padded, atol=1e-6, rtol=1e-6)
    for g, h in zip(_grads(policy, packed), _grads(policy, padded)):
        torch.testing.assert_close(g, h, atol=1e-6, rtol=1e-4)
    # The PPO policy loss at T = 0.7 (clipped surrogate, KL term, entropy bonus), on a rollout-layout mini-batch.
    ids, mask, rmask = _layout()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        old = forward.logprobs(policy, ids, mask, rmask.shape[1], 0.7) + 0.05 * torch.randn(rmask.shape, generator=g)
    batch = {"input_ids": ids, "attention_mask": mask, "response_mask": rmask, "old_logprobs": old * rmask,
             "advantages": torch.randn(rmask.shape, generator=g) * rmask, "is_weights": rmask,
             "ref_logprobs": (old - 0.1) * rmask}
    loss = ppo_losses.make_policy_loss(0.2, None, 0.01, 0.05, "k3", temperature=0.7)
    (a, ma), (b, mb_) = loss.fn(Packed(policy), batch, loss.count(batch)), loss.fn(policy, batch, loss.count(batch))
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert ma.keys() == mb_.keys() and all(ma[k] == pytest.approx(mb_[k], rel=1e-4, abs=1e-6) for k in ma)
    for x, y in zip(_grads(policy, a), _grads(policy, b)):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-4)


def test_budget_cuts_and_the_count_ranks_agree_on():
    assert budget_cuts([5, 19, 9, 14], 46) == [0, 3, 4]
    assert budget_cuts([7, 16, 11, 12], 46) == [0, 4]
    assert budget_cuts([7, 16, 11, 12], 46, count=2) == [0, 2, 4]  # cut where its tokens halve
    assert budget_cuts([50, 3, 3], 10) == [0, 1, 3]  # a row over the budget goes alone
    assert budget_cuts([50, 3, 3], 10, count=3) == [0, 1, 2, 3]  # the largest splittable one is cut
    with pytest.raises(ValueError, match="3 rows cannot make 4"):
        budget_cuts([1, 1, 1], 10, count=4)
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    assert real_tokens({"chosen_attention_mask": mask, "rejected_attention_mask": mask[:, :2], "x": mask}) == [4, 3]
