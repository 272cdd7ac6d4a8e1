"""Every input checked before Ray starts (`rlhf_ray.stages.inputs`): datasets opened and their first rows read,
eval datasets too; reward functions, labelers and gold judges imported and their signatures checked; each
problem naming its key. Real files, real imports; nothing here starts Ray."""

import json

import pytest

from rlhf_ray import data
from rlhf_ray.config import ConfigError, load_config
from rlhf_ray.stages import inputs

FUNCTIONS = '''
def good(prompts, responses):
    return [1.0] * len(responses)

def one_argument(responses):
    return [1.0] * len(responses)

def stuck(prompts, responses, answer, /):
    return [1.0] * len(responses)

def trl(completions, **kwargs):
    return [1.0] * len(completions)
'''


@pytest.fixture
def files(tmp_path):
    (tmp_path / "fns.py").write_text(FUNCTIONS)
    (tmp_path / "broken.py").write_text("import not_a_module_anywhere\n")
    _jsonl(tmp_path / "prompts.jsonl", [{"prompt": "hi"}])
    _jsonl(tmp_path / "prefs.jsonl", [{"prompt": "hi", "chosen": "a", "rejected": "b"}])
    _jsonl(tmp_path / "demos.jsonl", [{"prompt": "hi", "response": "hello"}])
    return tmp_path


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _problems(*overrides) -> list[str]:
    with pytest.raises(ConfigError) as e:
        inputs.check(load_config(None, list(overrides)), "c.yaml")
    return e.value.problems


def test_functions_are_imported_and_their_signatures_checked(files):
    ppo = [f"data.prompts.path={files}/prompts.jsonl", "stages=[ppo]"]
    inputs.check(load_config(None, [*ppo, f"reward.functions=[{{function: '{files}/fns.py:good'}}, "
                                          f"{{function: '{files}/fns.py:trl'}}]"]))
    (err,) = _problems(*ppo, f"reward.functions=[{{function: '{files}/fns.py:one_argument'}}]")
    assert err.startswith("c.yaml: reward.functions[0].function: reward function ") and \
        "its signature (responses) cannot take the call fn(prompts, responses, **columns)" in err
    (err,) = _problems(*ppo, f"reward.functions=[{{function: '{files}/fns.py:stuck'}}]")
    assert err.endswith("positional-only without a default: answer")
    (err,) = _problems(*ppo, f"reward.functions=[{{function: '{files}/fns.py:good'}}]",
                       "data.prompts.eval_fraction=0.5", f"ppo.gold={files}/broken.py:judge")
    assert err.startswith(f"c.yaml: ppo.gold: importing {files}/broken.py:judge raised ModuleNotFoundError")


def test_a_misspelled_labeler_is_refused_before_the_stages_before_it_run(files):
    """label after sft: the labeler is imported up front, not once SFT has spent its compute."""
    base = [f"data.prompts.path={files}/prompts.jsonl", f"data.demonstrations.path={files}/demos.jsonl",
            "stages=[sft,label,dpo]"]
    (err,) = _problems(*base, "label.labeler=examples.warm.labelrs:vader_warmth")
    assert err.startswith("c.yaml: label.labeler: reward function 'examples.warm.labelrs:vader_warmth': cannot "
                          "import 'examples.warm.labelrs'")
    inputs.check(load_config(None, [*base, "label.labeler=examples/warm/labelers.py:vader_warmth"]))


@pytest.mark.parametrize("stage,key,row,message", [
    ("sft", "data.demonstrations.path", {"prompt": "hi"}, "row 1: missing field 'response'"),
    ("rm", "data.preferences.path", {"prompt": "hi", "chosen": "a"}, "row 1: missing field 'rejected'"),
    ("ppo", "data.prompts.eval_path", {"question": "hi"}, "row 1: missing field 'prompt'"),
    ("rm", "data.preferences.eval_path", {"prompt": "hi", "chosen": 3, "rejected": "b"}, "row 1:"),
])
def test_the_first_rows_of_every_dataset_are_read_before_ray(files, stage, key, row, message):
    bad = _jsonl(files / "bad.jsonl", [row])
    base = [f"data.prompts.path={files}/prompts.jsonl", f"data.demonstrations.path={files}/demos.jsonl",
            f"data.preferences.path={files}/prefs.jsonl", f"stages=[{stage}]", "model.reward=org/rm", f"{key}={bad}"]
    (err,) = _problems(*base)
    assert err.startswith(f"c.yaml: {key}: {bad}: {message}"), err


def test_bytes_that_are_not_utf8_are_a_malformed_row(files):
    path = files / "latin1.jsonl"
    path.write_bytes(json.dumps({"prompt": "hi"}).encode() + b"\n" + '{"prompt": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(data.DataError, match=r"latin1\.jsonl: row 2: not UTF-8 text \(byte 0xe9 at column 16\)"):
        data.load_rows(str(path), "prompts")
    rows, report = data.load_rows(str(path), "prompts", skip_malformed=True)
    assert len(rows) == 1 and "skipped 1 (malformed: not UTF-8 text" in str(report)
    (err,) = _problems(f"data.prompts.path={path}", "stages=[ppo]", "model.reward=org/rm")
    assert "latin1.jsonl: row 2: not UTF-8 text" in err


def test_a_file_named_parquet_that_is_not_one(files):
    fake = files / "rows.parquet"
    fake.write_text('{"prompt": "hi"}\n')
    (err,) = _problems(f"data.prompts.path={fake}", "stages=[ppo]", "model.reward=org/rm")
    assert err.startswith(f"c.yaml: data.prompts.path: {fake}: not a readable Parquet file: ")
    assert "\n" not in err


def test_a_user_error_raised_in_an_actor_is_one_line_at_the_command_line(capsys, monkeypatch):
    """An actor's RewardFunctionError reaches the driver inside a GroupError (cluster.actor_group): the command
    line finds it and prints one line; any other failure keeps its traceback."""
    from cluster.actor_group import GroupError
    from rlhf_ray import cli, errors
    from rlhf_ray.engines.scoring import RewardFunctionError

    def fails(cause):
        def fn(args):
            try:
                raise cause
            except Exception as e:
                raise GroupError("reward-fn", [0], "score: reward functions", f"raised {type(e).__name__}: {e}") from e
        return fn

    bad = RewardFunctionError("reward function verdict must return a real number")
    assert errors.user_error(GroupError("x", [0], "p", "w")) is None
    monkeypatch.setattr(cli, "cmd_validate", fails(bad))
    assert cli.main(["validate", "c.yaml"]) == 1
    assert capsys.readouterr().err == ("error: score: reward functions: raised RewardFunctionError: reward function "
                                       "verdict must return a real number on reward-fn-0\n")
    monkeypatch.setattr(cli, "cmd_validate", fails(KeyError("a bug of ours")))
    with pytest.raises(GroupError):
        cli.main(["validate", "c.yaml"])


@pytest.mark.parametrize("empty", ["''", "[]"])
def test_an_empty_dataset_path_is_a_missing_dataset(files, empty):
    (err,) = _problems(f"data.demonstrations.path={empty}", "stages=[sft]")
    assert err == "c.yaml: data.demonstrations.path: the `sft` stage needs this dataset; set it (or run a stage " \
                  "that makes it first)"


@pytest.mark.parametrize("spec,problem", [
    ("rlhf_ray_no_such_module:judge", "reward.functions[0].function: reward function "
                                      "'rlhf_ray_no_such_module:judge': cannot import 'rlhf_ray_no_such_module'"),
    ("syntax.py:judge", "reward.functions[0].function: importing syntax.py:judge raised SyntaxError: "),
])
def test_validate_and_submit_refuse_what_run_refuses_with_its_message(files, monkeypatch, capsys, spec, problem):
    """`validate` and `submit` make the checks `run` makes before Ray (one function, inputs.before_ray), so a
    reward function that does not import is refused by all three alike; `submit` before any connection. None
    builds a model: the built-in policy's cache folder is never made."""
    from rlhf_ray.cli import main
    from rlhf_ray.runtime import jobs

    monkeypatch.chdir(files)
    monkeypatch.setenv("RLHF_RAY_CACHE", str(files / "cache"))
    monkeypatch.setattr(jobs, "client", lambda *a, **k: pytest.fail("submit connected before checking its inputs"))
    (files / "syntax.py").write_text("def judge(prompts, responses:\n    return []\n")
    (files / "c.yaml").write_text(f"stages: [ppo]\ndata: {{prompts: {{path: prompts.jsonl}}}}\n"
                                  f"reward: {{functions: [{{function: '{spec}'}}]}}\n")
    errors = {}
    for command, flags in [("run", ["--run-dir", "run"]), ("validate", []),
                           ("submit", ["--address", "http://127.0.0.1:9"])]:
        assert main([command, "c.yaml", *flags]) == 1, command
        errors[command] = capsys.readouterr().err
    assert errors["validate"] == errors["run"] == errors["submit"], errors
    assert errors["run"].startswith(f"error: invalid config: c.yaml: {problem}")
    assert not (files / "cache").exists() and not (files / "run").exists()


def test_validate_builds_no_model_and_notes_the_checks_it_skipped(files, monkeypatch, capsys):
    """A fresh cache: the SmolLM2 conversion (~40 s) and the tiny build are left to the run; the checks that need
    their tokenizers or modules say they were skipped."""
    from rlhf_ray.cli import main

    monkeypatch.setenv("RLHF_RAY_CACHE", str(files / "cache"))
    (files / "c.yaml").write_text(f"stages: [sft]\ndata: {{demonstrations: {{path: {files}/demos.jsonl}}}}\n"
                                  "model: {policy: smollm2-135m-instruct, tokenizer: tiny, lora: {rank: 8}}\n")
    assert main(["validate", str(files / "c.yaml")]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: ")]
    assert notes == ["note: model.tokenizer: not checked against model.policy's embedding until "
                     "smollm2-135m-instruct and tiny are built (the run builds them)",
                     "note: model.lora.target_modules: not checked against model.policy's modules until "
                     "smollm2-135m-instruct is built (the run builds them)"]
    assert not (files / "cache").exists()
