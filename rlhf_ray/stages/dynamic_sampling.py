"""DAPO's dynamic sampling (Yu et al. 2025; `ppo.dynamic_sampling`): a group whose samples' rewards are all equal
has zero advantage under a group baseline, so it spends the step's compute and teaches nothing. Such groups are
dropped, and more prompts sampled, until the batch holds rollout.batch_size groups of varied rewards or
`ppo.refill_rounds` more batches were sampled; a step still short trains on equal-reward groups too, and says so.

The PPO driver samples and scores the rounds (stages/ppo.py); what is kept is chosen here, from the scorers'
answers alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pyarrow as pa
import torch

from rlhf_ray import rollout
from rlhf_ray.algos import rl_math


@dataclass
class Answers:
    """A batch's rollouts with the scorers' answers for them, row for row: what groups are chosen on."""

    table: pa.Table
    task: torch.Tensor
    """(B,) the summed task reward."""
    ref_rows: Optional[list[list[float]]]
    """The reference scorer's log-probs of each response; None without one (or with the reference in the policy
    learner, which scores the chosen batch later)."""

    def take(self, rows: list[int]) -> Answers:
        return Answers(self.table.take(rows), self.task[rows],
                       None if self.ref_rows is None else [self.ref_rows[i] for i in rows])


@dataclass
class Choice:
    """The batch a step trains on, and how it was filled."""

    answers: Answers
    stats: dict
    """refill_rounds, groups_sampled, groups_dropped (equal rewards, not trained on), groups_short (equal
    rewards trained on: refill_rounds ran out)."""


def choose(rounds: list[Answers], group_size: int, want: int) -> Choice:
    """The first `want` groups of varied rewards over the rounds, in order; short of that, equal-reward groups
    fill the rest, in order. Groups are consecutive runs of `group_size` rows; the chosen are numbered 0..want-1
    and tagged with every round's sampling seconds (the work spent, dropped groups included)."""
    varied, equal = [], []
    for r in rounds:
        for g, ok in enumerate(rl_math.varied_groups(r.task, group_size).tolist()):
            (varied if ok else equal).append(r.take(list(range(g * group_size, (g + 1) * group_size))))
    short = max(0, want - len(varied))
    chosen = varied[:want] + equal[:short]
    table = pa.concat_tables([c.table for c in chosen])
    table = table.set_column(table.schema.get_field_index("group"), "group",
                             pa.array([i // group_size for i in range(table.num_rows)], pa.int64()))
    refs = None if chosen[0].ref_rows is None else [row for c in chosen for row in c.ref_rows]
    answers = Answers(rollout.with_seconds(table, sum(rollout.seconds(r.table) for r in rounds)),
                      torch.cat([c.task for c in chosen]), refs)
    return Choice(answers, {"refill_rounds": len(rounds) - 1, "groups_sampled": len(varied) + len(equal),
                            "groups_dropped": len(equal) - short, "groups_short": short})


def enough(rounds: list[Answers], group_size: int, want: int) -> bool:
    """Whether the rounds so far hold `want` groups of varied rewards."""
    return sum(int(rl_math.varied_groups(r.task, group_size).sum()) for r in rounds) >= want
