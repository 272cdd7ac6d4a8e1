"""User reward functions: loading by spec, and every way a function can misbehave."""

import sys

import pytest

from rlhf_ray.engines import scoring
from rlhf_ray.engines.scoring import RewardFunctionError, call_reward_function, load_reward_function

USER_FILE = '''
def length_bonus(prompts, responses, finish_reason=None):
    return [min(len(r), 10) / 10 + (0.5 if f == "stop" else 0.0) for r, f in zip(responses, finish_reason)]

def everything(prompts, responses, **metadata):
    return [float(len(metadata))] * len(responses)

def boom(prompts, responses):
    raise KeyError("no such word")

def short(prompts, responses):
    return [1.0]

def nan(prompts, responses):
    return [float("nan")] * len(responses)

def words(prompts, responses):
    return ["high"] * len(responses)

def huge(prompts, responses):
    return [10 ** 400, 1]

def digits(prompts, responses):
    return "01"

def verdict(prompts, responses):
    return [True, False]

def numpy_verdict(prompts, responses):
    import numpy as np
    return list(np.array([True, False]))

def complex(prompts, responses):
    return [1j, 2.0]

def tensor_bool(prompts, responses):
    import torch
    return list(torch.tensor([True, False]))

def fine(prompts, responses):
    import numpy as np, torch
    return [np.float32(0.5), torch.tensor(2)]

NOT_A_FUNCTION = 3
'''


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(USER_FILE)
    return path


def test_function_from_a_user_file_gets_the_metadata_it_declares(user_file):
    fn = load_reward_function(f"{user_file}:length_bonus")
    out = call_reward_function(fn, ["p", "p"], ["abc", "a" * 20], finish_reason=["stop", "length"], group=[0, 0])
    assert out == [pytest.approx(0.8), pytest.approx(1.0)]
    every = load_reward_function(f"{user_file}:everything")
    assert call_reward_function(every, ["p"], ["r"], a=[1], b=[2]) == [2.0]


def test_importable_module_spec():
    fn = load_reward_function("os.path:join")
    assert fn.__name__ == "join"


@pytest.mark.parametrize("spec,match", [
    ("no_colon", "expected `module:function`"),
    ("missing_file.py:f", "no such file"),
    ("rlhf_ray_no_such_module:f", "cannot import"),
])
def test_bad_specs(spec, match):
    with pytest.raises(RewardFunctionError, match=match):
        load_reward_function(spec)


def test_missing_function_in_file(user_file):
    with pytest.raises(RewardFunctionError, match="has no function 'NOT_A_FUNCTION'"):
        load_reward_function(f"{user_file}:NOT_A_FUNCTION")


@pytest.mark.parametrize("name,match", [
    ("boom", "raised KeyError"),
    ("short", "returned 1 values for 2 responses"),
    ("nan", "non-finite values at rows \\[0, 1\\]"),
    ("words", "must return a real number for every response .*; got row 0: 'high', row 1: 'high'"),
    ("digits", "must return a list of numbers, got '01'"),
    ("huge", "returned a number too large for a float"),
    ("verdict", "got row 0: True, row 1: False"),
    ("numpy_verdict", "got row 0: np.True_"),
    ("complex", "got row 0: 1j"),
    ("tensor_bool", "got row 0: tensor\\(True\\)"),
])
def test_misbehaving_functions(user_file, name, match):
    fn = load_reward_function(f"{user_file}:{name}")
    with pytest.raises(RewardFunctionError, match=match):
        call_reward_function(fn, ["p", "q"], ["r", "s"])


def test_numpy_and_torch_reals_are_numbers(user_file):
    assert call_reward_function(load_reward_function(f"{user_file}:fine"), ["p", "q"], ["r", "s"]) == [0.5, 2.0]


def test_a_file_spec_runs_the_bytes_the_driver_read_even_when_the_file_changes_or_goes(tmp_path, monkeypatch):
    """A `file.py:function` spec is read once on the driver (relative to the current directory) and actors run
    those bytes: the file edited or removed afterwards (or different on another node) changes nothing."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "judge.py").write_text("def judge(prompts, responses):\n    return [1.0] * len(responses)\n")
    code = scoring.resolve("judge.py:judge")
    assert code.origin == str(tmp_path / "judge.py") and code.source.startswith(b"def judge")
    (tmp_path / "judge.py").write_text("def judge(prompts, responses):\n    return [-1.0] * len(responses)\n")
    assert call_reward_function(scoring.load(code), ["p"], ["r"]) == [1.0]
    assert scoring.resolve("judge.py:judge") is code  # read once: the checks before Ray and the stages agree
    (tmp_path / "judge.py").unlink()
    assert call_reward_function(scoring.load(code), ["p"], ["r"]) == [1.0]


def test_a_module_spec_is_refused_where_its_source_differs_from_the_drivers(tmp_path, monkeypatch):
    """A `module:function` spec is imported by name on each node; a node whose module file is not the one the
    driver imported (another version installed) refuses it, naming the module, instead of running other code."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "rlhf_ray_test_judges", raising=False)  # imported here, dropped after
    module = tmp_path / "rlhf_ray_test_judges.py"
    module.write_text("def judge(prompts, responses):\n    return [1.0] * len(responses)\n")
    code = scoring.resolve("rlhf_ray_test_judges:judge")
    assert call_reward_function(scoring.load(code), ["p"], ["r"]) == [1.0]
    module.write_text("def judge(prompts, responses):\n    return [-1.0] * len(responses)\n")  # this node's copy
    with pytest.raises(RewardFunctionError, match=r"'rlhf_ray_test_judges:judge': module rlhf_ray_test_judges on "
                                                  r"this node \(.*rlhf_ray_test_judges.py\) is not the code the "
                                                  r"driver checked .*install the same version on every node"):
        scoring.load(code)
