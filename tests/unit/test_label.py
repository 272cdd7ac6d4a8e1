"""The label stage without Ray: best-vs-worst pair selection (ties and unusable prompts dropped and counted),
and labelers that fail, named by label.labeler."""

import math

import pyarrow as pa
import pytest

from rlhf_ray import data, models
from rlhf_ray.config import ConfigError, load_config
from rlhf_ray.engines.scoring import RewardFunctionError
from rlhf_ray.stages import inputs, label, pipeline


def _pairs(groups: list[tuple[str, list[str], list[float]]]):
    return data.best_worst_pairs([g[0] for g in groups], [g[1] for g in groups], [g[2] for g in groups])


def test_best_and_worst_of_k_become_chosen_and_rejected():
    rows, dropped = _pairs([("p1", ["a", "b", "c", "d"], [0.2, 0.9, -0.5, 0.1]),
                            ("p2", ["x", "y"], [1.0, 3.0])])
    assert rows == [
        {"prompt": "p1", "chosen": "b", "rejected": "c", "margin": 1.4, "chosen_score": 0.9, "rejected_score": -0.5},
        {"prompt": "p2", "chosen": "y", "rejected": "x", "margin": 2.0, "chosen_score": 3.0, "rejected_score": 1.0},
    ]
    assert dropped == {"ties": 0, "blank": 0, "same_text": 0}


def test_ties_and_unusable_prompts_are_dropped_and_counted():
    groups = [("tie", ["a", "b", "c"], [0.5, 0.5, 0.5]),
              ("blank", ["", "  ", "only one"], [0.0, 1.0, 2.0]),   # one response with text: no pair
              ("same", ["yes", "yes"], [0.1, 0.7]),                 # two token sequences, one text
              ("ok", ["good", "", "bad"], [0.9, 5.0, 0.1]),         # the blank one cannot be chosen, even scored best
              ("partial tie", ["m", "n", "o"], [0.3, 0.3, 0.0])]     # the earliest of equal bests is chosen
    rows, dropped = _pairs(groups)
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in rows] == [("ok", "good", "bad"),
                                                                         ("partial tie", "m", "o")]
    assert dropped == {"ties": 1, "blank": 1, "same_text": 1}
    assert len(rows) + sum(dropped.values()) == len(groups)
    assert all(r["margin"] > 0 and math.isclose(r["margin"], r["chosen_score"] - r["rejected_score"]) for r in rows)


def test_pairs_are_valid_preferences_rows():
    rows, _ = _pairs([("p", ["a", "b"], [0.0, 1.0])])
    assert data.check_row(rows[0], "preferences") == {"prompt": "p", "chosen": "b", "rejected": "a", "margin": 1.0}


def test_mismatched_scores_raise():
    with pytest.raises(ValueError, match="2 responses but 1 scores"):
        _pairs([("p", ["a", "b"], [0.0])])


# ---------------------------------------------------------------- labelers


LABELERS = '''
def nan(prompts, responses):
    return [float("nan")] * len(responses)

def short(prompts, responses):
    return [1.0]

def boom(prompts, responses):
    raise RuntimeError("the judge is out")

def by_ids(prompts, responses, response_ids):
    return [float(len(ids)) for ids in response_ids]
'''


@pytest.fixture
def labelers(tmp_path):
    path = tmp_path / "judges.py"
    path.write_text(LABELERS)
    return str(path)


def _samples() -> pa.Table:
    return pa.table({"prompt": ["p", "p"], "response": ["a", "bb"], "response_ids": [[5], [6, 7]],
                     "finish_reason": ["stop", "stop"], "group": [0, 0]})


@pytest.mark.parametrize("fn, message", [("nan", "non-finite values"), ("short", "returned 1 values for 2"),
                                         ("boom", "raised RuntimeError: the judge is out")])
def test_a_failing_labeler_is_named(labelers, fn, message):
    spec = f"{labelers}:{fn}"
    with pytest.raises(RewardFunctionError, match=rf"label\.labeler = {spec}: .*{message}"):
        label.score(label.load_labeler(spec), spec, _samples())


def test_the_labeler_gets_the_metadata_a_reward_function_gets(labelers):
    spec = f"{labelers}:by_ids"
    assert label.score(label.load_labeler(spec), spec, _samples()) == [1.0, 2.0]


def test_a_labeler_that_does_not_load_is_named(labelers):
    with pytest.raises(RewardFunctionError, match=r"label\.labeler: .*has no function 'missing'"):
        label.load_labeler(f"{labelers}:missing")


def test_the_pipeline_checks_the_labeler_spec_before_anything_runs(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    base = [f"data.prompts.path={prompts}", "stages=[label,dpo]"]
    with pytest.raises(ConfigError, match=r"label\.labeler: the label stage needs a labeler"):
        load_config(None, base)  # the library has no labeler of its own
    base.append("label.labeler=examples/warm/labelers.py:vader_warmth")
    inputs.check(load_config(None, base))  # dpo's preferences come from label
    with pytest.raises(ConfigError, match=r"label\.labeler: reward function 'nowhere\.py:f': no such file .*nowhere\.py"):
        inputs.check(load_config(None, [*base, "label.labeler=nowhere.py:f"]))
    with pytest.raises(ConfigError, match=r"label\.labeler: reward function 'just_a_name': expected `module:function`"):
        inputs.check(load_config(None, [*base, "label.labeler=just_a_name"]))


@pytest.mark.parametrize("truncation", ["error", "drop", "truncate"])
def test_pairs_over_the_token_limits_follow_data_truncation(truncation):
    """The RM and DPO re-tokenize the texts: a pair longer there than its samples were is settled here."""
    tok = models.load_tokenizer("tiny")
    rows = [{"prompt": "Hello", "chosen": "the cat " * 10, "rejected": "a dog"},
            {"prompt": "Hello", "chosen": "yes", "rejected": "no"}]
    cfg = load_config(None, ["data.max_response_len=8", f"data.truncation={truncation}"])
    if truncation == "error":
        with pytest.raises(data.DataError, match=r"1 of 2 pairs are over data\.max_response_len = 8 .*truncation"):
            label.fit_limits(cfg, tok, rows)
    elif truncation == "drop":
        assert label.fit_limits(cfg, tok, rows) == (rows[1:], 1)
    else:
        assert label.fit_limits(cfg, tok, rows) == (rows, 0)


def test_sampling_goes_in_chunks_that_keep_every_prompt_once():
    """A large labeling run is sampled in calls of CHUNK_PER_GENERATOR prompts per generator (so the call timeout
    bounds one chunk and progress is printed), in order, with no prompt lost or repeated."""
    prompts = [{"prompt": f"p{i}"} for i in range(label.CHUNK_PER_GENERATOR * 2 * 3 + 5)]
    chunks = label.chunks(prompts, 2)
    assert [len(c) for c in chunks] == [label.CHUNK_PER_GENERATOR * 2] * 3 + [5]
    assert [p for c in chunks for p in c] == prompts
    assert label.chunks([], 1) == []
