"""A prompts dataset's columns travel with their prompt to the reward functions; column mapping, several files,
hub subsets; chat prompts and conversational preference rows; each bad input refused with its file and row."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actors.reward_function import RewardFunction, arguments
from rlhf_ray import data, rollout
from rlhf_ray.config import ConfigError, load_config
from rlhf_ray.data import DataError
from rlhf_ray.engines.scoring import RewardFunctionError, call_reward_function, required_keywords, resolve
from rlhf_ray.stages import inputs, label, pipeline

SYSTEM = {"role": "system", "content": "answer with a number"}


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def _rollouts(prompts: list[dict], n: int = 2) -> pa.Table:
    """The table a generator returns for `prompts` ({prompt, columns}), n samples each (vllm_engine.generate's
    rows, without the engine)."""
    columns = [rollout.encode_columns(p["prompt"], p["columns"]) for p in prompts]
    rows = [{"prompt": data.prompt_text(p["prompt"]), "response": f"r{g}.{k}", "prompt_ids": [1], "response_ids": [2],
             "logprobs": [-0.5], "finish_reason": "stop", "policy_version": 0, "group": g, **columns[g]}
            for g, p in enumerate(prompts) for k in range(n)]
    return rollout.to_table(rows, list(columns[0]))


# ---------------------------------------------------------------- columns travel with their prompt

ODD = [{"prompt": "2+2?", "answer": "4", "tests": [1, [2, {"a": None}]], "meta": {"level": 1, "tags": []}},
       {"prompt": "3+3?", "answer": 6, "tests": [], "meta": {"other": 1.5}, "extra": "only here"}]


def test_every_other_column_stays_with_its_row_and_round_trips_exactly(tmp_path):
    rows, _ = data.load_rows(_jsonl(tmp_path / "p.jsonl", ODD), "prompts")
    assert [r["prompt"] for r in rows] == ["2+2?", "3+3?"]
    assert rows[0]["columns"] == {**{k: v for k, v in ODD[0].items() if k != "prompt"}, "extra": None}  # filled
    assert rows[1]["columns"] == {k: v for k, v in ODD[1].items() if k != "prompt"}
    # Through Arrow and Parquet (what rollouts/*.parquet hold): every JSON value comes back as it was, mixed
    # types across rows included, two samples per prompt.
    pq.write_table(_rollouts(rows), tmp_path / "r.parquet")
    back = rollout.dataset_columns(pq.read_table(tmp_path / "r.parquet"))
    assert back == {k: [r["columns"][k] for r in rows for _ in range(2)] for k in rows[0]["columns"]}


def test_shares_without_chat_prompts_or_values_still_concatenate():
    a = _rollouts([{"prompt": "x", "columns": {"answer": None}}])
    b = _rollouts([{"prompt": [{"role": "user", "content": "y"}], "columns": {"answer": "1"}}])
    both = pa.concat_tables([a, b])
    chat = [{"role": "user", "content": "y"}]
    assert rollout.prompts(both) == ["x", "x", chat, chat]
    assert rollout.dataset_columns(both) == {"answer": [None, None, "1", "1"]}


def test_a_column_named_like_the_metadata_is_refused_with_its_row(tmp_path):
    src = _jsonl(tmp_path / "clash.jsonl", [{"prompt": "a"}, {"prompt": "b", "group": "algebra"}])
    with pytest.raises(DataError, match=r"clash\.jsonl: row 2: column 'group' has the name of a field of every "
                                        r"rollout .* rename it with data\.prompts\.columns"):
        data.load_rows(src, "prompts")


def test_a_value_that_is_not_json_is_refused(tmp_path):
    import datetime

    pq.write_table(pa.Table.from_pylist([{"prompt": "a", "when": datetime.datetime(2024, 1, 1)}]),
                   tmp_path / "t.parquet")
    with pytest.raises(DataError, match=r"t\.parquet: row 1: column 'when' holds a datetime, not a JSON value"):
        data.load_rows(str(tmp_path / "t.parquet"), "prompts")


# ---------------------------------------------------------------- mapping and sources


def test_columns_map_the_dataset_names_onto_ours(tmp_path):
    src = _jsonl(tmp_path / "q.jsonl", [{"question": "2+2?", "solution": "4", "id": 7}])
    rows, _ = data.load_rows(src, "prompts", columns={"prompt": "question", "answer": "solution"})
    assert rows == [{"prompt": "2+2?", "columns": {"id": 7, "answer": "4"}}]
    # A clashing column renamed out of the way.
    src = _jsonl(tmp_path / "g.jsonl", [{"prompt": "a", "group": "algebra"}])
    rows, _ = data.load_rows(src, "prompts", columns={"topic": "group"})
    assert rows[0]["columns"] == {"topic": "algebra"}
    src = _jsonl(tmp_path / "m.jsonl", [{"question": "a"}, {"q": "b"}])
    with pytest.raises(DataError, match=r"m\.jsonl: row 2: missing field 'question' \(data\.prompts\.columns maps "
                                        r"it to 'prompt'\)"):
        data.load_rows(src, "prompts", columns={"prompt": "question"})
    src = _jsonl(tmp_path / "both.jsonl", [{"question": "a", "prompt": "b"}])
    with pytest.raises(DataError, match=r"row 1: the row has a field 'prompt' and data\.prompts\.columns maps "
                                        r"'question' onto it"):
        data.load_rows(src, "prompts", columns={"prompt": "question"})
    # A row giving its prompt as messages needs no `question`.
    chat = [{"role": "user", "content": "hi"}]
    src = _jsonl(tmp_path / "mixed.jsonl", [{"question": "a", "sol": 1}, {"messages": chat, "sol": 2}])
    rows, _ = data.load_rows(src, "prompts", columns={"prompt": "question", "answer": "sol"})
    assert rows == [{"prompt": "a", "columns": {"answer": 1}}, {"prompt": chat, "columns": {"answer": 2}}]
    src = _jsonl(tmp_path / "pref.jsonl", [{"q": "p", "good": "g", "bad": "b"}])
    rows, _ = data.load_rows(src, "preferences", columns={"prompt": "q", "chosen": "good", "rejected": "bad"})
    assert rows == [{"prompt": "p", "chosen": "g", "rejected": "b"}]


def test_a_dotted_path_reads_a_field_of_a_nested_column(tmp_path):
    # veRL's layout: the answer under reward_model, the question under extra_info; as JSON objects and as Parquet
    # structs. The nested column itself stays a column (nothing dropped).
    verl = [{"data_source": "gsm8k", "extra_info": {"question": "2+2?", "index": 0},
             "reward_model": {"style": "rule", "ground_truth": "4"}}]
    columns = {"prompt": "extra_info.question", "ground_truth": "reward_model.ground_truth"}
    pq.write_table(pa.Table.from_pylist(verl), tmp_path / "v.parquet")
    for src in (_jsonl(tmp_path / "v.jsonl", verl), str(tmp_path / "v.parquet")):
        rows, _ = data.load_rows(src, "prompts", columns=columns)
        assert rows == [{"prompt": "2+2?", "columns": {**verl[0], "ground_truth": "4"}}]
    # A path a row lacks: its key, its file and its row, and what the row has there.
    bad = _jsonl(tmp_path / "bad.jsonl", [*verl,
                                          {"extra_info": {"question": "3+3?"}, "reward_model": {"style": "rule"}},
                                          {"extra_info": "3+3?", "reward_model": {"ground_truth": "6"}}])
    with pytest.raises(DataError, match=r"bad\.jsonl: row 2: data\.prompts\.columns\.ground_truth: no "
                                        r"'reward_model\.ground_truth' in this row: 'reward_model' has no field "
                                        r"'ground_truth' \(its fields: style\)"):
        data.load_rows(bad, "prompts", columns=columns)
    with pytest.raises(DataError, match=r"bad\.jsonl: row 3: data\.prompts\.columns\.prompt: no "
                                        r"'extra_info\.question' in this row: 'extra_info' is a str, not an object"):
        data.load_rows(bad, "prompts", columns={"prompt": "extra_info.question"})
    with pytest.raises(DataError, match=r"row 1: data\.prompts\.columns\.answer: no 'meta\.answer' in this row: the "
                                        r"row has no field 'meta'"):
        data.load_rows(bad, "prompts", columns={"prompt": "extra_info.question", "answer": "meta.answer"})
    # skip_malformed skips and counts such a row like any other malformed one.
    rows, report = data.load_rows(bad, "prompts", skip_malformed=True, columns=columns)
    assert len(rows) == 1 and sum(report.skipped.values()) == 2
    # A field whose own name has the dot is read as it is; preferences map nested fields the same way.
    rows, _ = data.load_rows(_jsonl(tmp_path / "dot.jsonl", [{"prompt": "a", "a.b": 1}]), "prompts",
                             columns={"answer": "a.b"})
    assert rows[0]["columns"] == {"answer": 1}
    pref = _jsonl(tmp_path / "pref.jsonl", [{"q": {"text": "p"}, "pair": {"good": "g", "bad": "b"}}])
    rows, _ = data.load_rows(pref, "preferences", columns={"prompt": "q.text", "chosen": "pair.good",
                                                           "rejected": "pair.bad"})
    assert rows == [{"prompt": "p", "chosen": "g", "rejected": "b"}]


def test_a_dotted_column_reaches_a_reward_function_checked_before_ray(tmp_path, rewards):
    src = _jsonl(tmp_path / "v.jsonl", [{"prompt": "2+2?", "reward_model": {"style": "rule", "ground_truth": "4"}}])
    base = [f"data.prompts.path={src}", "stages=[ppo]", f"reward.functions=[{{function: '{rewards}:exact'}}]"]
    with pytest.raises(ConfigError, match=r"requires the keyword argument `answer`"):
        inputs.check(load_config(None, base))
    inputs.check(load_config(None, [*base, "data.prompts.columns={answer: reward_model.ground_truth}"]))
    with pytest.raises(ConfigError, match=r"data\.prompts\.path: .*v\.jsonl: row 1: data\.prompts\.columns\.answer: no "
                                          r"'reward_model\.answer' in this row"):
        inputs.check(load_config(None, [*base, "data.prompts.columns={answer: reward_model.answer}"]))


def test_column_mapping_in_the_config(tmp_path):
    cfg = load_config(None, ["data.prompts.columns={prompt: question, answer: solution}", "data.prompts.subset=main"])
    assert cfg.data.prompts.columns == {"prompt": "question", "answer": "solution"}
    assert cfg.data.prompts.subset == "main"
    with pytest.raises(ConfigError, match=r"data\.prompts\.columns: maps the dataset's 'q' onto two names"):
        load_config(None, ["data.prompts.columns={prompt: q, answer: q}"])


def test_a_list_or_a_glob_reads_several_files_and_errors_name_the_file(tmp_path):
    (tmp_path / "d").mkdir()
    a = _jsonl(tmp_path / "d" / "part-0.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    b = _jsonl(tmp_path / "d" / "part-1.jsonl", [{"prompt": "c"}])
    pq.write_table(pa.Table.from_pylist([{"prompt": "d"}]), tmp_path / "d" / "part-2.parquet")
    rows, report = data.load_rows(str(tmp_path / "d" / "part-*"), "prompts")
    assert [r["prompt"] for r in rows] == ["a", "b", "c", "d"] and report.kept == 4
    rows, _ = data.load_rows([b, a], "prompts", max_rows=2)
    assert [r["prompt"] for r in rows] == ["c", "a"]
    bad = _jsonl(tmp_path / "d" / "part-3.jsonl", [{"prompt": "e"}, {"prompt": 5}])
    with pytest.raises(DataError, match=r"part-3\.jsonl: row 2: field 'prompt' must be a string"):
        data.load_rows([a, bad], "prompts")
    with pytest.raises(DataError, match=r"nothing-\*\.jsonl: no file matches this pattern"):
        data.load_rows(str(tmp_path / "nothing-*.jsonl"), "prompts")
    cfg = load_config(None, [f"data.prompts.path=[{a}, {b}]"])
    assert cfg.data.prompts.path == [a, b]
    with pytest.raises(ConfigError, match=r"data\.prompts\.path: expected string or list of string, got 3"):
        load_config(None, ["data.prompts.path=3"])


def test_a_hub_dataset_takes_a_subset_and_a_split(monkeypatch):
    import datasets

    seen = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: seen.append((a, k)) or [{"question": "q"}])
    rows, _ = data.load_rows("org/math", "prompts", split="test", columns={"prompt": "question"}, subset="main")
    assert seen == [(("org/math", "main"), {"split": "test"})] and rows[0]["prompt"] == "q"


# ---------------------------------------------------------------- chat formats


def test_chat_prompts_as_messages_or_a_prompt_list(tmp_path, tok):
    msgs = [SYSTEM, {"role": "user", "content": "2+2?"}]
    src = _jsonl(tmp_path / "c.jsonl", [{"messages": msgs, "answer": "4"}, {"prompt": msgs[1:]}, {"prompt": "x"}])
    rows, _ = data.load_rows(src, "prompts")
    assert rows[0] == {"prompt": msgs, "columns": {"answer": "4"}} and rows[1]["prompt"] == msgs[1:]
    # The chat template with its generation prompt, system turn included; a text prompt is one user turn.
    ids = data.encode_prompt(tok, rows[0], data.Limits(256, 16))
    assert ids == list(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)["input_ids"])
    assert data.encode_prompt(tok, rows[1], data.Limits(256, 16)) == data.prompt_ids(tok, "2+2?")


@pytest.mark.parametrize("row,match", [
    ({"messages": [SYSTEM]}, r"field 'messages' has no user turn \(roles: system\)"),
    ({"messages": [SYSTEM, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
     r"field 'messages' must end with a user turn .* got role 'assistant'"),
    ({"prompt": [{"role": "user"}]}, r"prompt\[0\] must be \{role: str, content: str\}"),
    ({"prompt": []}, r"field 'prompt' must be a list of at least 1"),
    ({"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "the row has both 'prompt' and 'messages'"),
])
def test_bad_chat_prompts_are_refused_with_their_row(tmp_path, row, match):
    src = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "fine"}, row])
    with pytest.raises(DataError, match=r"bad\.jsonl: row 2: " + match):
        data.load_rows(src, "prompts")


def test_conversational_and_implicit_prompt_preferences(tmp_path, tok):
    user = {"role": "user", "content": "2+2?"}
    good, bad = {"role": "assistant", "content": "4"}, {"role": "assistant", "content": "5"}
    src = _jsonl(tmp_path / "p.jsonl", [
        {"prompt": [SYSTEM, user], "chosen": [good], "rejected": [bad]},  # TRL's conversational form
        {"chosen": [SYSTEM, user, good], "rejected": [SYSTEM, user, bad], "margin": 1},  # implicit prompt
        {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
    ])
    rows, _ = data.load_rows(src, "preferences")
    assert rows[0] == {"prompt": [SYSTEM, user], "chosen": "4", "rejected": "5"}
    assert rows[1] == {**rows[0], "margin": 1.0}
    enc = data.encode_preference(tok, rows[0], data.Limits(256, 16))
    assert enc["prompt_ids"] == data.prompt_ids(tok, [SYSTEM, user])
    assert data.encode_preference(tok, rows[2], data.Limits(256, 16))["prompt_ids"] == data.prompt_ids(tok, [user])


@pytest.mark.parametrize("row,match", [
    ({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
     "'chosen' and 'rejected' are the same conversation"),
    ({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}]},
     "'chosen' and 'rejected' must share every message but the last assistant reply; they differ from message 0 "
     r"on, where chosen has 2 message\(s\) \(roles: user, assistant\)"),
    ({"chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]},
     "missing field 'prompt'; without it, 'chosen' and 'rejected' must be whole conversations"),
    ({"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
     "field 'chosen' must be one assistant message when the prompt is given apart, got roles user"),
    ({"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": " "}],
      "rejected": "b"}, "field 'chosen': the assistant message is empty"),
])
def test_bad_preference_rows_are_refused_with_their_row(tmp_path, row, match):
    src = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}, row])
    with pytest.raises(DataError, match=r"bad\.jsonl: row 2: (" + match + ")"):
        data.load_rows(src, "preferences")


def test_label_writes_one_type_of_prompt():
    table = _rollouts([{"prompt": "x", "columns": {}}, {"prompt": [SYSTEM, {"role": "user", "content": "y"}],
                                                        "columns": {}}])
    prompts, responses, scores = label._groups(table, [1.0, 0.0, 0.5, 0.2])
    assert prompts == [[{"role": "user", "content": "x"}], [SYSTEM, {"role": "user", "content": "y"}]]
    assert responses == [["r0.0", "r0.1"], ["r1.0", "r1.1"]] and scores == [[1.0, 0.0], [0.5, 0.2]]


# ---------------------------------------------------------------- reward functions get the columns

REWARDS = '''
def exact(prompts, responses, *, answer):
    return [float(r.endswith(str(a))) for r, a in zip(responses, answer)]

def echo(prompts, responses, *, answer, tests=None, group):
    return [float(len(t)) + 10 * g for t, g in zip(tests, group)]

def everything(prompts, responses, **kwargs):
    global SEEN
    SEEN = (prompts, kwargs)
    return [0.0] * len(responses)

def plain(prompts, responses):
    return [1.0] * len(responses)

def trl_style(completions, answer, completion_ids, **kwargs):
    global TRL_SEEN
    TRL_SEEN = sorted(kwargs)
    texts = [c if isinstance(c, str) else c[0]["content"] for c in completions]  # TRL's two forms
    return [float(t.endswith(str(a))) + len(i) for t, a, i in zip(texts, answer, completion_ids)]

def verdicts(prompts, responses, *, answer):
    return [None if a is None else True for a in answer]
'''


@pytest.fixture
def rewards(tmp_path):
    path = tmp_path / "checks.py"
    path.write_text(REWARDS)
    return path


def test_reward_functions_get_the_columns_they_declare_aligned_with_the_samples(rewards):
    prompts = [{"prompt": "2+2?", "columns": {"answer": "4", "tests": [1, 2]}},
               {"prompt": [SYSTEM, {"role": "user", "content": "3+3?"}], "columns": {"answer": 6, "tests": []}}]
    table = _rollouts(prompts)
    table = table.set_column(table.schema.get_field_index("response"), "response",
                             pa.array(["it is 4", "5", "6", "it is 6"]))
    fns = RewardFunction([resolve(f"{rewards}:{n}") for n in ("exact", "echo", "everything", "plain")])
    out = fns.scores(table)
    assert out[f"{rewards}:exact"] == [1.0, 0.0, 1.0, 1.0]
    assert out[f"{rewards}:echo"] == [2.0, 2.0, 10.0, 10.0]
    assert out[f"{rewards}:plain"] == [1.0] * 4
    seen_prompts, kwargs = fns.functions[f"{rewards}:everything"].__globals__["SEEN"]
    assert seen_prompts == ["2+2?", "2+2?", prompts[1]["prompt"], prompts[1]["prompt"]]  # a chat prompt as messages
    assert set(kwargs) == {"finish_reason", "policy_version", "group", "response_ids", "answer", "tests"}
    assert kwargs["answer"] == ["4", "4", 6, 6] and kwargs["tests"] == [[1, 2], [1, 2], [], []]
    assert arguments(table)[2]["group"] == [0, 0, 1, 1]
    # A function written for TRL is called TRL's way: everything by keyword, the responses as `completions`.
    trl = RewardFunction([resolve(f"{rewards}:trl_style")])
    assert trl.scores(table)[f"{rewards}:trl_style"] == [2.0, 1.0, 2.0, 2.0]
    assert trl.functions[f"{rewards}:trl_style"].__globals__["TRL_SEEN"] == [
        "finish_reason", "group", "policy_version", "prompts", "response_ids", "tests"]


def test_a_checker_that_returns_non_numbers_is_told_which_rows(rewards):
    fn = RewardFunction([resolve(f"{rewards}:verdicts")]).functions[f"{rewards}:verdicts"]
    with pytest.raises(RewardFunctionError, match=r"verdicts must return a real number for every response \(not a "
                                                  r"string, bool or None\); got row 0: True, row 1: None"):
        call_reward_function(fn, ["p", "q"], ["r", "s"], answer=["1", None])


def test_required_keywords(rewards):
    fns = RewardFunction([resolve(f"{rewards}:{n}") for n in ("exact", "echo", "everything")]).functions.values()
    assert [required_keywords(f) for f in fns] == [["answer"], ["answer", "group"], []]
    trl = RewardFunction([resolve(f"{rewards}:trl_style")]).functions[f"{rewards}:trl_style"]
    assert required_keywords(trl) == ["answer"]


def test_a_function_requiring_a_missing_column_is_refused_before_ray(tmp_path, rewards):
    prompts = _jsonl(tmp_path / "math.jsonl", [{"prompt": "2+2?", "solution": "4"}])
    base = [f"data.prompts.path={prompts}", "stages=[ppo]"]
    with pytest.raises(ConfigError) as e:
        inputs.check(load_config(None, [*base, f"reward.functions=[{{function: '{rewards}:echo'}}]"]))
    assert str(e.value).count("requires") == 1  # `group` is metadata
    assert (f"reward.functions[0].function: {rewards}:echo requires the keyword argument `answer`, but the prompts "
            f"dataset {prompts} has no column `answer` (its columns: solution;") in str(e.value)
    ok = [*base, f"reward.functions=[{{function: '{rewards}:exact'}}]", "data.prompts.columns={answer: solution}"]
    inputs.check(load_config(None, ok))
    held_out = _jsonl(tmp_path / "held.jsonl", [{"prompt": "1+1?"}])
    with pytest.raises(ConfigError, match=r"ppo\.gold: .*:exact requires the keyword argument `answer`, but the "
                                          r"prompts dataset .*held\.jsonl has no column `answer`"):
        inputs.check(load_config(None, [*base, f"reward.functions=[{{function: '{rewards}:plain'}}]",
                                                 f"ppo.gold={rewards}:exact", f"data.prompts.eval_path={held_out}"]))
    with pytest.raises(ConfigError, match=r"label\.labeler: .*:exact requires the keyword argument `answer`"):
        inputs.check(load_config(None, [f"data.prompts.path={prompts}", "stages=[label]",
                                                 f"label.labeler={rewards}:exact"]))
    with pytest.raises(ConfigError, match=r"data\.prompts\.path: .*nope-\*\.jsonl: no file matches"):
        inputs.check(load_config(None, [f"data.prompts.path={tmp_path}/nope-*.jsonl", "stages=[ppo]",
                                                 f"reward.functions=[{{function: '{rewards}:plain'}}]"]))


@pytest.fixture(scope="module")
def tok(tiny):
    from rlhf_ray import models

    return models.load_tokenizer(tiny)


def test_the_engine_puts_each_prompts_columns_on_its_samples(monkeypatch):
    """vllm_engine.generate with a stand-in engine (no vLLM here): every sample of prompt g carries columns[g],
    and the table a generator makes of them (as Generator.generate does) types them as strings."""
    import sys
    import types

    from rlhf_ray.engines import vllm_engine

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(SamplingParams=lambda **k: k))

    def sample(token, text):
        return types.SimpleNamespace(token_ids=[token], text=text, finish_reason="stop",
                                     logprobs=[{token: types.SimpleNamespace(logprob=-1.0)}])

    class Engine:
        def generate(self, requests, params, use_tqdm, lora_request=None):
            return [types.SimpleNamespace(outputs=[sample(7, f"a{g}"), sample(8, f"b{g}")])
                    for g, _ in enumerate(requests)]

    prompts = [{"prompt": "x", "columns": {"answer": None}}, {"prompt": [SYSTEM, {"role": "user", "content": "y"}],
                                                              "columns": {"answer": [1, "2"]}}]
    columns = [rollout.encode_columns(p["prompt"], p["columns"]) for p in prompts]
    rows = vllm_engine.generate(Engine(), [[1], [2]], vllm_engine.Sampling(n=2), 3, ["x", "y"], columns)
    table = rollout.to_table(rows, list(columns[0]))
    assert table.schema.field("answer").type == pa.string() == table.schema.field(rollout.MESSAGES).type
    assert rollout.dataset_columns(table) == {"answer": [None, None, [1, "2"], [1, "2"]]}
    assert rollout.prompts(table) == ["x", "x", prompts[1]["prompt"], prompts[1]["prompt"]]
    assert table.column("response").to_pylist() == ["a0", "b0", "a1", "b1"]


def test_an_encoder_reward_model_reads_a_chat_prompt_as_its_text(tok):
    """rm's text pairs (a reward model with its own tokenizer) read a message list the way the reward actor reads
    the rollouts' `prompt` column: its contents, one per line."""
    from rlhf_ray.stages import rm

    row = {"prompt": [SYSTEM, {"role": "user", "content": "2+2?"}], "chosen": "4", "rejected": "5"}
    pairs = rm._text_pairs(tok, 64, [row], data.LoadReport("mem"))
    text = data.prompt_text(row["prompt"])
    assert text == "answer with a number\n2+2?"
    want = {k: tok(text, row[k], truncation=True, max_length=64)["input_ids"] for k in ("chosen", "rejected")}
    assert pairs == [want]
