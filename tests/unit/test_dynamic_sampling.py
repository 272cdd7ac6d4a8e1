"""DAPO's dynamic sampling (stages/dynamic_sampling.py): which groups a step trains on, over refill rounds, checked
against veRL's filter; and the config's refusal of a group of one."""

import random

import numpy as np
import pytest
import torch

from rlhf_ray import rollout
from rlhf_ray.algos import rl_math
from rlhf_ray.config import load_config
from rlhf_ray.yaml_tree import ConfigError
from rlhf_ray.stages.dynamic_sampling import Answers, choose, enough


def _round(rewards: list[float], n: int, tag: str, seconds: float = 1.0, ref: bool = True) -> Answers:
    """A round's answers: len(rewards) // n groups of n rows, each row's response naming its round and row."""
    rows = [{"prompt": "p", "response": f"{tag}{i}", "prompt_ids": [1], "response_ids": [2], "logprobs": [-0.5],
             "finish_reason": "stop", "policy_version": 0, "group": i // n} for i in range(len(rewards))]
    table = rollout.with_seconds(rollout.to_table(rows), seconds)
    return Answers(table, torch.tensor(rewards), [[-float(i)] for i in range(len(rewards))] if ref else None)


def test_varied_groups():
    scores = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, 0.2, 0.2000001])
    assert rl_math.varied_groups(scores, 2).tolist() == [False, True, False, True]
    assert rl_math.varied_groups(scores, 4).tolist() == [True, True]


def test_refill_rounds_fill_the_batch_with_varied_groups_in_order():
    n, want = 2, 3
    first = _round([1, 1, 0, 1, 0, 0, 1, 0], n, "a", 2.0)  # groups: equal, varied, equal, varied
    second = _round([0, 1, 1, 1, 1, 0, 0, 1], n, "b", 3.0)  # varied, equal, varied, varied
    assert not enough([first], n, want) and enough([first, second], n, want)
    chosen = choose([first, second], n, want)
    t = chosen.answers.table
    assert t.column("response").to_pylist() == ["a2", "a3", "a6", "a7", "b0", "b1"]  # the first 3 varied, in order
    assert t.column("group").to_pylist() == [0, 0, 1, 1, 2, 2]
    assert chosen.answers.task.tolist() == [0, 1, 1, 0, 0, 1]
    assert chosen.answers.ref_rows == [[-2.0], [-3.0], [-6.0], [-7.0], [-0.0], [-1.0]]  # row for row
    assert rollout.seconds(t) == 5.0  # every round's sampling, the dropped groups' too
    # 8 groups sampled; 3 of equal rewards dropped; 2 varied ones past the 3 wanted go unused (not counted dropped)
    assert chosen.stats == {"refill_rounds": 1, "groups_sampled": 8, "groups_dropped": 3, "groups_short": 0}


def test_a_step_short_of_varied_groups_trains_on_equal_ones_and_says_how_many():
    chosen = choose([_round([1, 1, 0, 1, 0, 0], 2, "a", ref=False), _round([1, 1, 1, 1, 1, 1], 2, "b", ref=False)],
                    2, 4)
    assert chosen.answers.table.column("response").to_pylist() == ["a2", "a3", "a0", "a1", "a4", "a5", "b0", "b1"]
    assert chosen.stats == {"refill_rounds": 1, "groups_sampled": 6, "groups_dropped": 2, "groups_short": 3}
    assert chosen.answers.ref_rows is None


def _verl_kept(uids: list[int], rewards: list[float], prompts: int, n: int) -> list[int]:
    """veRL's filter over rounds (verl-project/verl-recipe at 48ea0a7, dapo/dapo_ray_trainer.py lines 250-291,
    metric `seq_reward`), written out here: per round, the prompts whose rewards' np.std > 0 (or a group of one)
    keep all their trajectories, concatenated over rounds; once `prompts` prompts are kept, batch[:prompts * n]."""
    by_uid: dict[int, list[float]] = {}
    for u, r in zip(uids, rewards):
        by_uid.setdefault(u, []).append(r)
    kept = [u for u, v in by_uid.items() if np.std(v) > 0 or len(v) == 1]
    return [i for i, u in enumerate(uids) if u in kept][: prompts * n]


@pytest.mark.parametrize("seed", range(5))
def test_the_batch_is_verls_on_the_same_rewards(seed):
    rng, n, want = random.Random(seed), 4, 6
    rounds, rewards = [], []
    while len(rounds) < 2 or not enough(rounds, n, want):
        r = [float(rng.random() < 0.3) for _ in range(8 * n)]  # binary rewards: many groups all 0
        rounds.append(_round(r, n, f"r{len(rounds)}-"))
        rewards += r
    uids = [i // n for i in range(len(rewards))]  # a prompt id across rounds
    responses = [f"r{k}-{i}" for k in range(len(rounds)) for i in range(8 * n)]
    verl = [responses[i] for i in _verl_kept(uids, rewards, want, n)]
    assert choose(rounds, n, want).answers.table.column("response").to_pylist() == verl


def test_dynamic_sampling_needs_groups():
    with pytest.raises(ConfigError, match="ppo.dynamic_sampling.*n_samples >= 2"):
        load_config(None, ["ppo.dynamic_sampling=true", "rollout.n_samples=1"])
    cfg = load_config(None, ["ppo.dynamic_sampling=true", "rollout.n_samples=2", "ppo.refill_rounds=5"])
    assert cfg.ppo.dynamic_sampling and cfg.ppo.refill_rounds == 5
