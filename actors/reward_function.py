"""Reward-function actor: user functions `module:function(prompts, responses, **kwargs) -> list[float]`, in
place of or beside a reward model. Keyword arguments passed (each a list aligned with the responses), as far as
the function declares them or takes **kwargs: the metadata finish_reason, policy_version, group, response_ids,
and every column of the prompts dataset by its name (`answer`, `tests`, ...), repeated for each sample of a
prompt, the convention of TRL's reward functions. A chat prompt arrives as its message list. A function written
TRL's way (it names `completions`) or veRL's (`compute_score(data_source, solution_str, ground_truth, ...)`) is
called theirs (`scoring.call_reward_function`)."""

from __future__ import annotations

import pyarrow as pa

from rlhf_ray import rollout
from rlhf_ray.engines import scoring

METADATA = ("finish_reason", "policy_version", "group", "response_ids")


def arguments(table: pa.Table) -> tuple[list, list[str], dict[str, list]]:
    """(prompts, responses, keyword arguments) a reward function gets for `table`'s rollouts."""
    meta = {k: table.column(k).to_pylist() for k in METADATA if k in table.column_names}
    # No overlap: a dataset column with a metadata name is refused when the dataset loads (rollout.RESERVED).
    return rollout.prompts(table), table.column("response").to_pylist(), {**meta, **rollout.dataset_columns(table)}


class RewardFunction:
    """Wrap with `ray.remote`; named `reward-fn-<rank>`. Functions load at start, so a bad spec fails first.

    It takes the functions as the driver resolved them (`scoring.resolve`): a file's bytes as the driver read
    them, a module refused when this node's source differs; never a spec read again here."""

    def __init__(self, codes: list[scoring.FunctionCode]):
        self.functions = {code.spec: scoring.load(code) for code in codes}

    def scores(self, table: pa.Table) -> dict[str, list[float]]:
        """Each function's rewards, by spec."""
        prompts, responses, kwargs = arguments(table)
        return {spec: scoring.call_reward_function(fn, prompts, responses, **kwargs)
                for spec, fn in self.functions.items()}
