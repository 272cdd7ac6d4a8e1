"""Fuzzing the two doors a user's bytes come in by (hypothesis): config files and dataset rows. Every generated
input gives a valid config (or rows) or the one error type the command line prints as one line (ConfigError,
DataError), never another exception."""

import dataclasses
import json
import math
import os
import types
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhf_ray import cli, data
from rlhf_ray.config import Config, ConfigError, load_config, to_dict

SETTINGS = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 150)), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _keys(cls=Config, prefix="") -> list[str]:
    """Every dotted key of the config tree (a mapping of sections by one sample name: cluster.roles.policy)."""
    out = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
            tp = args[0]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            out += _keys(tp, key + ".")
        elif typing.get_origin(tp) is dict and dataclasses.is_dataclass(typing.get_args(tp)[1]):
            out += _keys(typing.get_args(tp)[1], f"{key}.{'policy' if 'role' in key else 'default'}.")
        out.append(key)
    return out


KEYS = _keys()
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=20), st.sampled_from(["sft", "ppo", "tiny", "auto", "1e-5", ".inf", "gae"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)


def _tree(pairs: list[tuple[str, object]]) -> dict:
    tree: dict = {}
    for key, value in pairs:
        node = tree
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {}) if isinstance(node.get(p, {}), dict) else {}
        node[last] = value
    return tree


configs = st.lists(st.tuples(st.sampled_from(KEYS), values), max_size=6).map(_tree)


def _finite(tree) -> bool:
    """No NaN anywhere (it would make a resolved config unequal to itself)."""
    if isinstance(tree, dict):
        return all(_finite(v) for v in tree.values())
    if isinstance(tree, list):
        return all(_finite(v) for v in tree)
    return not (isinstance(tree, float) and math.isnan(tree))


@SETTINGS
@given(tree=configs)
def test_a_generated_config_is_valid_or_a_config_error(tmp_path, tree):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(tree))  # JSON is YAML: every generated tree, written exactly
    try:
        cfg = load_config(path)
    except ConfigError as e:
        assert e.problems and all(isinstance(p, str) and p for p in e.problems)
        return
    assert isinstance(cfg, Config) and _finite(to_dict(cfg))


@SETTINGS
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_generated_bytes_as_a_config_file_exit_1_with_one_error(tmp_path, capsys, raw):
    path = tmp_path / "c.yaml"
    path.write_bytes(raw)
    code = cli.main(["validate", str(path)])
    err = capsys.readouterr().err
    assert code in (0, 1) and "Traceback" not in err
    assert code == 0 or err.startswith("error: invalid config:")


@SETTINGS
@given(overrides=st.lists(st.tuples(st.sampled_from(KEYS), st.text(max_size=30)).map("=".join), max_size=4))
def test_generated_overrides_are_valid_or_a_config_error(overrides):
    try:
        load_config(None, overrides)
    except ConfigError:
        pass


fields = st.sampled_from(["prompt", "response", "chosen", "rejected", "messages", "margin", "role", "content",
                          "answer", "group", "reward", "x"])
rows = st.one_of(values, st.dictionaries(fields, st.one_of(values, st.lists(
    st.dictionaries(st.sampled_from(["role", "content", "name"]),
                    st.one_of(st.sampled_from(["user", "assistant", "system", "tool"]), st.text(max_size=10))),
    max_size=3)), max_size=5))
lines = st.one_of(rows.map(lambda r: json.dumps(r).encode()), st.binary(max_size=40))


@pytest.fixture(scope="module")
def tokenizer(tiny):
    from rlhf_ray import models

    return models.load_tokenizer(tiny)


@SETTINGS
@given(lines=st.lists(lines, min_size=1, max_size=6), kind=st.sampled_from(sorted(data.KINDS)),
       skip=st.booleans(), truncation=st.sampled_from(["error", "drop", "truncate"]))
def test_generated_dataset_rows_are_rows_or_a_data_error(tmp_path, tokenizer, lines, kind, skip, truncation):
    """Read, checked and tokenized (chat template included) as a stage would."""
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n")
    try:
        got, report = data.load_rows(str(path), kind, skip_malformed=skip)
        assert got and report.kept == len(got)
        data.encode_kept(tokenizer, got, kind, data.Limits(8, 8, truncation), report)
    except data.DataError as e:
        assert str(e) and "\n" not in str(e).strip()


@pytest.mark.parametrize("kind", sorted(data.KINDS))
def test_the_row_fuzzer_reaches_valid_rows(tmp_path, kind):
    """The fuzzer above is not only testing refusals: rows of every kind it can make do load."""
    row = {"prompts": {"prompt": "hi"}, "demonstrations": {"prompt": "hi", "response": "yo"},
           "preferences": {"prompt": "hi", "chosen": "a", "rejected": "b"}}[kind]
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n")
    assert data.load_rows(str(path), kind)[1].kept == 1
