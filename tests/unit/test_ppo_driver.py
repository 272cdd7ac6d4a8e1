"""Pure choices of a PPO run: which roles it starts (fleet), and the order of a mini-batch's rows (rollout)."""

import torch

from rlhf_ray import rollout
from rlhf_ray.config import load_config
from rlhf_ray.stages import fleet


def test_reference_only_when_the_kl_is_used_or_named():
    assert "reference" in fleet.roles(load_config(None, []))  # default β 0.05
    grpo = ["ppo.advantage=grpo", "rollout.n_samples=2"]
    assert fleet.roles(load_config(None, ["ppo.kl_coef=0", *grpo])) == ["generator", "policy"]
    assert "reference" in fleet.roles(load_config(None, ["ppo.kl_coef=0", "ppo.kl_target=6"]))
    assert "reference" in fleet.roles(load_config(None, ["ppo.kl_coef=0", "model.reference=some/ref"]))
    assert fleet.roles(load_config(None, ["ppo.kl_coef=0", "ppo.advantage=gae", "model.reward=rm"])) == [
        "generator", "policy", "critic", "reward"]


def test_mini_batch_rows_ordered_by_prompt_length():
    # 4 rows, prompts of 3, 1, 2, 3 real tokens left-padded to P = 3, then T = 2 response columns
    attention = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 0], [0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    response = attention[:, 3:]
    idx = torch.tensor([3, 1, 0, 2])
    assert rollout.by_prompt_length(idx, response, attention).tolist() == [1, 2, 3, 0]  # stable among equals
