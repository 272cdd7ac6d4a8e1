"""Reward functions written TRL's way and veRL's way, unmodified, called as their own trainers call them: through
the reward-function actor on the rollouts table a generator returns, and checked before Ray."""

import json

import pyarrow as pa
import pytest

from actors.reward_function import RewardFunction
from rlhf_ray import data, rollout
from rlhf_ray.config import ConfigError, load_config
from rlhf_ray.engines import scoring
from rlhf_ray.engines.scoring import RewardFunctionError, resolve
from rlhf_ray.stages import inputs

SYSTEM = {"role": "system", "content": "Think, then answer after ####."}

# Written as a TRL user writes them (TRL's docs: reward functions take `completions` and `**kwargs`).
TRL_REWARDS = '''
def reward_42(completions, **kwargs):
    return [float("42" in c[0]["content"]) for c in completions]

def reward_len(completions, **kwargs):
    return [-abs(20 - len(c)) for c in completions]
'''

# Written as a veRL user writes `custom_reward_function.path`: one sample, GSM8K's `#### answer`.
VERL_REWARDS = r'''
import re

CALLS = []

def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    CALLS.append((data_source, solution_str, ground_truth, extra_info))
    match = re.search("#### (\\-?[0-9\\.\\,]+)", solution_str)
    if match is None:
        return 0.0
    return 1.0 if match.group(1).replace(",", "") == ground_truth else 0.0

def compute_score_dict(data_source, solution_str, ground_truth, extra_info=None):
    pred = solution_str.split("####")[-1].strip()
    return {"score": 1.0 if pred == ground_truth else -1.0, "acc": pred == ground_truth, "pred": pred}

def no_score(data_source, solution_str, ground_truth, extra_info=None):
    return {"acc": 1.0}

def extra_info_keys(data_source, solution_str, ground_truth, extra_info=None):
    return float(len(extra_info))
'''


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def _rollouts(prompts: list[dict], responses: list[str]) -> pa.Table:
    """The table a generator returns for `prompts` ({prompt, columns}), one sample each with these responses
    (vllm_engine.generate's rows, without the engine)."""
    columns = [rollout.encode_columns(p["prompt"], p["columns"]) for p in prompts]
    rows = [{"prompt": data.prompt_text(p["prompt"]), "response": r, "prompt_ids": [1], "response_ids": [2, 3],
             "logprobs": [-0.5], "finish_reason": "stop", "policy_version": 0, "group": g, **columns[g]}
            for g, (p, r) in enumerate(zip(prompts, responses))]
    return rollout.to_table(rows, list(columns[0]))


def resolve_fn(path, name):
    return scoring.load(resolve(f"{path}:{name}"))


def _score(path, name, table):
    spec = f"{path}:{name}"
    actor = RewardFunction([resolve(spec)])
    return actor.scores(table)[spec], actor.functions[spec]


# ---------------------------------------------------------------- TRL: conversational completions


def test_a_trl_function_gets_message_lists_for_chat_prompts_and_texts_otherwise(tmp_path):
    """TRL trl/trainer/grpo_trainer.py f2cd577 lines 2175-2189: when `is_conversational({"prompt": prompts[0]})`,
    each completion is `[{"role": "assistant", "content": content}]` (line 2187), else the decoded text (line
    2189); lines 1659-1661 call the function with prompts=, completions=, completion_ids= and the columns.
    trl/data_utils.py f2cd577 lines 184-198: a prompt is conversational when it is a list of {role, ...} messages.
    """
    path = _write(tmp_path, "trl_rewards.py", TRL_REWARDS)
    chat = [{"prompt": [SYSTEM, {"role": "user", "content": "6 * 7?"}], "columns": {}},
            {"prompt": [{"role": "user", "content": "5 * 8?"}], "columns": {}}]
    scores, _ = _score(path, "reward_42", _rollouts(chat, ["It is 42.", "It is 40."]))
    assert scores == [1.0, 0.0]
    # Text prompts: the completions are texts, as in TRL (len of a message list would be 1 here).
    text = [{"prompt": "6 * 7?", "columns": {}}, {"prompt": "5 * 8?", "columns": {}}]
    scores, _ = _score(path, "reward_len", _rollouts(text, ["x" * 20, "x" * 15]))
    assert scores == [0.0, -5.0]
    # The message-list form is TRL's only: a function written our way gets the texts, even for chat prompts.
    ours = _write(tmp_path, "ours.py", "def n(prompts, responses):\n    return [float(len(r)) for r in responses]\n")
    assert _score(ours, "n", _rollouts(chat, ["It is 42.", "40"]))[0] == [9.0, 2.0]


def test_a_trl_function_sees_the_prompts_as_given():
    seen = {}

    def reward(prompts, completions, completion_ids, **kwargs):
        seen.update(prompts=prompts, completions=completions, completion_ids=completion_ids)
        return [1.0] * len(completions)

    chat = [{"role": "user", "content": "hi"}]
    scoring.call_reward_function(reward, [chat, "plain"], ["a", "b"], response_ids=[[1], [2]])
    # Each completion follows its own prompt (a dataset may mix both forms; TRL's datasets cannot).
    assert seen == {"prompts": [chat, "plain"], "completions": [[{"role": "assistant", "content": "a"}], "b"],
                    "completion_ids": [[1], [2]]}


# ---------------------------------------------------------------- veRL: compute_score, one sample at a time

GSM8K = [{"prompt": [{"role": "user", "content": "Natalia sold 48 clips, then half as many. How many?"}],
          "columns": {"data_source": "openai/gsm8k", "ability": "math",
                      "reward_model": {"style": "rule", "ground_truth": "72"},
                      "extra_info": {"split": "train", "index": 0}}},
         {"prompt": "Weng earns $12 an hour for 50 minutes. How much?",
          "columns": {"data_source": "openai/gsm8k", "ability": "math",
                      "reward_model": {"style": "rule", "ground_truth": "10"},
                      "extra_info": {"split": "train", "index": 1}}}]


def test_verl_compute_score_is_called_once_per_sample_with_verls_columns(tmp_path):
    """veRL verl/workers/reward_manager/naive.py b178a3c lines 59-98: for each sample, ground_truth =
    reward_model["ground_truth"] (line 77), data_source from its column (line 78), extra_info the column or {}
    (line 79), compute_score called by keyword (lines 85-90); a dict result gives its "score" (lines 92-98).
    verl/utils/reward_score/__init__.py b178a3c lines 19-28: default_compute_score(data_source, solution_str,
    ground_truth, extra_info=None, ...)."""
    path = _write(tmp_path, "verl_rewards.py", VERL_REWARDS)
    assert scoring.convention(resolve_fn(path, "compute_score")) == "verl"
    table = _rollouts(GSM8K, ["48 + 24 = 72\n#### 72", "12 / 60 * 50 = 10\n#### 10"])
    scores, fn = _score(path, "compute_score", table)
    assert scores == [1.0, 1.0]
    assert fn.__globals__["CALLS"] == [
        ("openai/gsm8k", "48 + 24 = 72\n#### 72", "72", {"split": "train", "index": 0}),
        ("openai/gsm8k", "12 / 60 * 50 = 10\n#### 10", "10", {"split": "train", "index": 1})]
    # A dict result: its `score` is the reward, as in veRL.
    assert _score(path, "compute_score_dict", _rollouts(GSM8K, ["#### 72", "#### 12"]))[0] == [1.0, -1.0]
    with pytest.raises(RewardFunctionError, match=r"no_score returned a dict without a `score` for row 0 \(its "
                                                  r"keys: acc\)"):
        _score(path, "no_score", table)
    # No extra_info column: an empty dict, veRL's default.
    bare = [{"prompt": p["prompt"], "columns": {k: v for k, v in p["columns"].items() if k != "extra_info"}}
            for p in GSM8K]
    assert _score(path, "extra_info_keys", _rollouts(bare, ["a", "b"]))[0] == [0.0, 0.0]


def test_a_ground_truth_column_comes_before_reward_model(tmp_path):
    """A dataset in TRL's layout (GSM8K's `answer`) scored by a veRL function: data.prompts.columns maps the
    answer onto `ground_truth`, which veRL's function then gets, with no reward_model column."""
    path = _write(tmp_path, "verl_rewards.py", VERL_REWARDS)
    src = tmp_path / "gsm8k.jsonl"
    src.write_text(json.dumps({"question": "2 + 2?", "final": "4", "source": "openai/gsm8k"}) + "\n")
    rows, _ = data.load_rows(str(src), "prompts", columns={"prompt": "question", "ground_truth": "final",
                                                            "data_source": "source"})
    assert _score(path, "compute_score", _rollouts(rows, ["#### 4"]))[0] == [1.0]


def test_a_verl_function_missing_its_columns_is_refused_before_ray(tmp_path):
    path = _write(tmp_path, "verl_rewards.py", VERL_REWARDS)
    src = tmp_path / "math.jsonl"
    src.write_text(json.dumps({"prompt": "2 + 2?", "reward_model": {"style": "rule", "ground_truth": "4"}}) + "\n")
    base = [f"data.prompts.path={src}", "stages=[ppo]", f"reward.functions=[{{function: '{path}:compute_score'}}]"]
    with pytest.raises(ConfigError) as e:
        inputs.check(load_config(None, base))
    assert (f"reward.functions[0].function: reward function {path}:compute_score (veRL's compute_score) needs "
            f"`data_source`, read from the prompts dataset's `data_source`; it has no such column (its columns: "
            f"reward_model; data.prompts.columns renames them); prompts dataset {src}") in str(e.value)
    # A row whose reward_model lacks the ground truth: named by its prompt, before Ray too.
    rows = [{"prompt": "2 + 2?", "data_source": "math", "reward_model": {"style": "rule", "ground_truth": "4"}},
            {"prompt": "3 + 3?", "data_source": "math", "reward_model": {"style": "model"}}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ConfigError, match=r"compute_score \(veRL's compute_score\) reads `ground_truth` from "
                                          r"`reward_model\.ground_truth`, but the prompt '3 \+ 3\?' has reward_model "
                                          r"= \{'style': 'model'\}, no field `ground_truth`"):
        inputs.check(load_config(None, base))
    rows[1]["reward_model"]["ground_truth"] = "6"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    inputs.check(load_config(None, base))


def test_a_hub_datasets_missing_column_is_told_on_the_first_batch(tmp_path):
    # A hub dataset's columns are not known before Ray: the first call says the same.
    path = _write(tmp_path, "verl_rewards.py", VERL_REWARDS)
    table = _rollouts([{"prompt": "2 + 2?", "columns": {"data_source": "math", "answer": "4"}}], ["#### 4"])
    with pytest.raises(RewardFunctionError, match=r"compute_score \(veRL's compute_score\) needs `ground_truth`, read "
                                                  r"from the prompts dataset's `ground_truth` or "
                                                  r"`reward_model\.ground_truth`; it has no such column \(its "
                                                  r"columns: data_source, answer;"):
        _score(path, "compute_score", table)


def test_verl_signatures_that_veRL_could_not_call_are_refused():
    def positional(data_source, solution_str, ground_truth, /, extra_info=None):
        return 0.0

    def needs_more(data_source, solution_str, ground_truth, tokenizer):
        return 0.0

    def both(completions, solution_str):
        return 0.0

    def kwargs_only(solution_str, ground_truth, **kwargs):  # veRL passes data_source and extra_info here
        return 0.0

    with pytest.raises(RewardFunctionError, match=r"`data_source`, `solution_str`, `ground_truth` are "
                                                  r"positional-only; veRL's way passes every argument by keyword"):
        scoring.check_signature(positional, "f.py:positional")
    with pytest.raises(RewardFunctionError, match=r"veRL's way passes only data_source, solution_str, ground_truth, "
                                                  r"extra_info; it also requires tokenizer"):
        scoring.check_signature(needs_more, "f.py:needs_more")
    with pytest.raises(RewardFunctionError, match=r"names both `completions` \(TRL's way\) and `solution_str`"):
        scoring.check_signature(both, "f.py:both")
    scoring.check_signature(kwargs_only, "f.py:kwargs_only")
    assert scoring.required_keywords(kwargs_only) == []
    got = scoring.verl_arguments(kwargs_only, "kwargs_only", ["p"], {"reward_model": [{"ground_truth": "1"}]})
    assert got == {"ground_truth": ["1"], "extra_info": [{}]}  # no data_source column: none passed
