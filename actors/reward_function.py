"""Reward-function actor: user functions `module:function(prompts, responses, **metadata) -> list[float]`, in
place of or beside a reward model. Metadata passed: finish_reason, policy_version, group, response_ids."""

from __future__ import annotations

import pyarrow as pa

from rlhf_ray.engines import scoring

METADATA = ("finish_reason", "policy_version", "group", "response_ids")


class RewardFunction:
    """Wrap with `ray.remote`; named `reward-fn-<rank>`. Functions load at start, so a bad spec fails first."""

    def __init__(self, specs: list[str]):
        self.functions = {spec: scoring.load_reward_function(spec) for spec in specs}

    def scores(self, table: pa.Table) -> dict[str, list[float]]:
        """Each function's rewards, by spec."""
        prompts, responses = table.column("prompt").to_pylist(), table.column("response").to_pylist()
        meta = {k: table.column(k).to_pylist() for k in METADATA if k in table.column_names}
        return {spec: scoring.call_reward_function(fn, prompts, responses, **meta)
                for spec, fn in self.functions.items()}
