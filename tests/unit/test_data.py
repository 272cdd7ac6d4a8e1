"""Dataset loading, checking and tokenization on real files and the tiny model's real tokenizer."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhf_ray import data
from rlhf_ray.config import ConfigError
from rlhf_ray.data import DataError, Limits


@pytest.fixture(scope="module")
def tok(tiny):
    from rlhf_ray import models

    return models.load_tokenizer(tiny)


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


PREFS = [{"prompt": f"q{i}", "chosen": "good answer", "rejected": "bad answer"} for i in range(5)]


def test_jsonl_parquet_and_saved_dataset_give_the_same_rows(tmp_path):
    import datasets

    j = _jsonl(tmp_path / "p.jsonl", PREFS)
    pq.write_table(pa.Table.from_pylist(PREFS), tmp_path / "p.parquet")
    datasets.Dataset.from_list(PREFS).save_to_disk(str(tmp_path / "ds"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(PREFS[:2])}).save_to_disk(str(tmp_path / "dd"))
    for src in (j, str(tmp_path / "p.parquet"), str(tmp_path / "ds")):
        rows, report = data.load_rows(src, "preferences")
        assert rows == PREFS and report.kept == 5
    rows, _ = data.load_rows(str(tmp_path / "dd"), "preferences", split="train")
    assert rows == PREFS[:2]
    with pytest.raises(DataError, match="no split 'test'"):
        data.load_rows(str(tmp_path / "dd"), "preferences", split="test")


def test_malformed_row_names_file_and_row(tmp_path):
    src = _jsonl(tmp_path / "bad.jsonl", PREFS[:2] + [{"prompt": "x", "chosen": "y"}] + PREFS[:1])
    with pytest.raises(DataError, match=r"bad\.jsonl: row 3: missing field 'rejected'"):
        data.load_rows(src, "preferences")
    src = _jsonl(tmp_path / "broken.jsonl", PREFS[:1] + ["{not json"])
    with pytest.raises(DataError, match=r"broken\.jsonl: row 2: not valid JSON"):
        data.load_rows(src, "preferences")
    src = _jsonl(tmp_path / "types.jsonl", [{"prompt": 3}])
    with pytest.raises(DataError, match=r"row 1: field 'prompt' must be a string, got int"):
        data.load_rows(src, "prompts")
    src = _jsonl(tmp_path / "empty.jsonl", [{"prompt": "  "}])
    with pytest.raises(DataError, match=r"row 1: field 'prompt' is empty"):
        data.load_rows(src, "prompts")


def test_skip_malformed_counts_what_it_skips(tmp_path):
    src = _jsonl(tmp_path / "mixed.jsonl", [{"prompt": "a"}, {"text": "b"}, "[1, 2]", {"prompt": "c"}, "{oops"])
    rows, report = data.load_rows(src, "prompts", skip_malformed=True)
    assert [r["prompt"] for r in rows] == ["a", "c"]
    assert sum(report.skipped.values()) == 3 and report.kept == 2
    assert "skipped" in str(report)


def test_an_endless_line_is_refused_at_its_cap_not_read_whole(tmp_path, monkeypatch):
    """A sparse file of one 3 GiB line of NULs was read whole: 6.7 GB of memory and 53 s before "not valid JSON".
    Now the first line stops at data.MAX_ROW_BYTES (made small here: the file need not be large to show it); with
    skip_malformed the rest of the line is read and dropped, and the rows after it are kept."""
    monkeypatch.setattr(data, "MAX_ROW_BYTES", 1000)
    src = tmp_path / "endless.jsonl"
    src.write_bytes(b"\0" * 50_000 + b"\n" + json.dumps({"prompt": "after"}).encode() + b"\n")
    with pytest.raises(DataError, match=r"endless\.jsonl: row 1: longer than 1,000 bytes"):
        data.load_rows(str(src), "prompts")
    rows, report = data.load_rows(str(src), "prompts", skip_malformed=True)
    assert [r["prompt"] for r in rows] == ["after"] and report.kept == 1


def test_fields_no_stage_reads_are_named_in_the_report(tmp_path):
    src = _jsonl(tmp_path / "prefs.jsonl", [{**r, "id": i, "source": "web"} for i, r in enumerate(PREFS)])
    rows, report = data.load_rows(src, "preferences")
    assert set(rows[0]) == {"prompt", "chosen", "rejected"} and report.unused == {"id", "source"}
    assert str(report).endswith("kept 5 rows; fields not used: id, source")
    demos = _jsonl(tmp_path / "demos.jsonl", [{"prompt": "p", "response": "r", "score": 3}])
    assert data.load_rows(demos, "demonstrations")[1].unused == {"score"}
    prompts = _jsonl(tmp_path / "prompts.jsonl", [{"prompt": "p", "answer": 3}])
    assert data.load_rows(prompts, "prompts")[1].unused == set()  # a column, not dropped


def test_demonstrations_accept_messages_and_check_roles(tmp_path):
    msgs = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello!"}]
    src = _jsonl(tmp_path / "d.jsonl", [{"messages": msgs}, {"prompt": "p", "response": "r"}])
    rows, _ = data.load_rows(src, "demonstrations")
    assert rows[0] == {"messages": msgs} and rows[1] == {"prompt": "p", "response": "r"}
    src = _jsonl(tmp_path / "d2.jsonl", [{"messages": msgs[:2]}])
    with pytest.raises(DataError, match="row 1: the last message must be the assistant's"):
        data.load_rows(src, "demonstrations")


def test_missing_path_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        data.load_rows(str(tmp_path / "nope.jsonl"), "prompts")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="not a .jsonl"):
        data.load_rows(str(tmp_path / "x.csv"), "prompts")


def test_split_eval_is_seeded_and_disjoint():
    rows = list(range(100))
    tr, ev = data.split_eval(rows, 0.1, seed=3)
    assert len(ev) == 10 and sorted(tr + ev) == rows
    assert data.split_eval(rows, 0.1, seed=3) == (tr, ev)
    assert data.split_eval(rows, 0.1, seed=4)[1] != ev
    assert data.split_eval(rows, 0.0, seed=3) == (rows, [])


def test_chat_template_and_response_eos(tok):
    ids = data.prompt_ids(tok, "hello there")
    plain = data.prompt_ids(tok, "hello there", chat=False)
    assert len(ids) > len(plain)
    text = tok.decode(ids)
    assert "hello there" in text and text.rstrip().endswith("assistant")
    r = data.response_ids(tok, "fine thanks")
    assert r[-1] == tok.eos_token_id


def test_demonstration_loss_mask_covers_response_only(tok):
    lim = Limits(64, 64)
    ex = data.encode_demonstration(tok, {"prompt": "hello", "response": "hi there friend"}, lim)
    n_resp = len(data.response_ids(tok, "hi there friend"))
    assert len(ex["input_ids"]) == len(ex["loss_mask"])
    assert ex["loss_mask"] == [0] * (len(ex["input_ids"]) - n_resp) + [1] * n_resp
    msgs = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi there friend"}]
    assert data.encode_demonstration(tok, {"messages": msgs}, lim) == ex


def test_truncation_policies(tok):
    long_prompt = {"prompt": "word " * 200, "response": "short"}
    with pytest.raises(DataError, match="prompt is .* tokens, over the limit of 16"):
        data.encode_demonstration(tok, long_prompt, Limits(16, 16, "error"))
    ex = data.encode_demonstration(tok, long_prompt, Limits(16, 16, "truncate"))
    full = data.prompt_ids(tok, long_prompt["prompt"])
    n_prompt = ex["loss_mask"].count(0)
    assert n_prompt == 16 and ex["input_ids"][:16] == full[-16:]  # the end of the prompt is kept
    rows = [{"prompt": "hi"}, {"prompt": "word " * 200}, {"prompt": "ok"}]
    report = data.LoadReport("mem")
    out = data.encode_rows(tok, rows, "prompts", Limits(16, 16, "drop"), report)
    assert len(out) == 2 and report.skipped == {"too long: prompt": 1}
    with pytest.raises(DataError, match="mem: row 2: prompt is"):
        data.encode_rows(tok, rows, "prompts", Limits(16, 16, "error"), data.LoadReport("mem"))


def test_preferences_encode_with_margin(tok):
    ex = data.encode_preference(tok, {"prompt": "q", "chosen": "yes", "rejected": "no", "margin": 2.0},
                                Limits(32, 32))
    assert ex["chosen_ids"][-1] == ex["rejected_ids"][-1] == tok.eos_token_id
    assert ex["margin"] == 2.0


def test_write_rows_round_trips(tmp_path):
    for name in ("out.parquet", "out.jsonl"):
        data.write_rows(PREFS, tmp_path / name)
        assert data.load_rows(str(tmp_path / name), "preferences")[0] == PREFS


def test_held_out_by_its_own_file_or_by_fraction(tmp_path):
    from rlhf_ray.config import DatasetConfig, load_config

    train, held = tmp_path / "t.jsonl", tmp_path / "e.jsonl"
    data.write_rows([{"prompt": f"p{i}"} for i in range(10)], train)
    data.write_rows([{"prompt": f"e{i}"} for i in range(5)], held)

    def encode(rows, report):
        report.kept = len(rows)
        return [r["prompt"] for r in rows]

    a, b, reports = data.load_held_out(DatasetConfig(str(train), eval_path=str(held), eval_max_rows=3), "prompts",
                                       False, 0, encode)
    assert (len(a), b, len(reports)) == (10, ["e0", "e1", "e2"], 2)
    a, b, _ = data.load_held_out(DatasetConfig(str(train), eval_fraction=0.2), "prompts", False, 0, encode)
    assert len(a) == 8 and len(b) == 2 and not set(a) & set(b)
    with pytest.raises(ConfigError, match="data.prompts.eval_path: hold out rows by eval_path or by eval_fraction"):
        load_config(None, [f"data.prompts.eval_path={held}", "data.prompts.eval_fraction=0.1"])
