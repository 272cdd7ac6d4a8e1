"""docs/porting.md, "Port your run": the page shows the files of configs/port/ as they are, and every port passes
`rlhf-ray validate`, checked without starting Ray.

tests/unit/test_docs.py already loads every ```yaml block of the docs with `load_config`, runs every ```python
block and checks every command. This adds what is particular to the port page:

- each ```yaml / ```python block whose first line is `# configs/port/NAME` is that file byte for byte, and every
  config and reward function in configs/port/ is shown;
- the page has its six runs, each a peer's ```text block before the rlhf-ray config;
- each config passes `rlhf-ray validate` with its input checks (the sample datasets read, the reward functions
  imported and their columns found, veRL's `data_source` and ground truth among them), as `run` would before Ray;
- those checks bite: a port pointed at another peer's layout is refused, naming the column it lacks;
- the sample datasets are what configs/port/data/make_data.py writes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rlhf_ray.cli import main
from tests.unit.test_docs import Block, blocks

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "porting.md"
PORT = ROOT / "configs" / "port"
CONFIGS = sorted(p.relative_to(ROOT).as_posix() for p in PORT.glob("*.yaml"))
FUNCTIONS = sorted(p.relative_to(ROOT).as_posix() for p in PORT.glob("*.py"))
RUNS = 6


def shown(block: Block) -> str | None:
    """The configs/port/ file a block is, by its first line (`# configs/port/trl_grpo.yaml`)."""
    m = re.match(r"#\s*(configs/port/[\w./-]+\.(?:ya?ml|py))\b", block.text)
    return m.group(1) if m and block.lang in ("yaml", "python") else None


PAGE_BLOCKS = blocks(PAGE)
SHOWN = {shown(b): b for b in PAGE_BLOCKS if shown(b)}


def validate(*args: str) -> tuple[int, str, str]:
    """`rlhf-ray validate ARGS` through the real CLI, run from the repository root as the page's commands are."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["validate", *args])
    return rc, out.getvalue(), err.getvalue()


def test_the_port_folder_has_the_six_configs():
    assert len(CONFIGS) == RUNS and FUNCTIONS, (CONFIGS, FUNCTIONS)


@pytest.mark.parametrize("rel", CONFIGS + FUNCTIONS)
def test_the_page_shows_each_file_exactly(rel):
    assert rel in SHOWN, f"docs/porting.md does not show {rel} (a block whose first line is `# {rel}`)"
    block = SHOWN[rel]
    have, want = block.text, (ROOT / rel).read_text()
    assert have == want, f"{block.where} is not {rel} as it is: copy the file into the page again"


def test_the_page_shows_no_file_that_is_not_there():
    assert set(SHOWN) <= set(CONFIGS + FUNCTIONS), set(SHOWN) - set(CONFIGS + FUNCTIONS)


def test_each_run_sets_a_peer_beside_its_config():
    text = PAGE.read_text()
    heads = [(m.start(), int(m.group(1))) for m in re.finditer(r"^## (\d)\. ", text, flags=re.M)]
    assert [n for _, n in heads] == list(range(1, RUNS + 1))
    starts = [text[:pos].count("\n") + 1 for pos, _ in heads] + [len(text.splitlines()) + 1]
    configs_seen = []
    for (first, last), (_, n) in zip(zip(starts, starts[1:]), heads):
        inside = [b for b in PAGE_BLOCKS if first < b.line < last]
        peer = [b for b in inside if b.lang == "text"]
        config = [b for b in inside if b.lang == "yaml" and shown(b)]
        assert peer and config, f"run {n}: wants a peer's ```text block and an rlhf-ray config"
        assert peer[0].line < config[0].line, f"run {n}: the peer's command comes first"
        configs_seen += [shown(b) for b in config]
    assert sorted(configs_seen) == CONFIGS


@pytest.mark.parametrize("rel", CONFIGS)
def test_each_port_validates(rel, monkeypatch):
    monkeypatch.chdir(ROOT)
    rc, out, err = validate(rel)
    assert rc == 0, f"rlhf-ray validate {rel}: exit {rc}\n{err}"
    assert re.search(r"^name: port-", out, flags=re.M), out[:500]
    assert "note:" not in err, f"rlhf-ray validate {rel}:\n{err}"


@pytest.mark.parametrize("rel, overrides, named", [
    # veRL's compute_score on GSM8K's raw rows: no data_source, no reward_model.ground_truth
    ("configs/port/verl_grpo.yaml", ["data.prompts.path=configs/port/data/gsm8k_sample.jsonl",
                                     "data.prompts.eval_path=configs/port/data/gsm8k_sample.jsonl",
                                     "data.prompts.columns.prompt=question"], "data_source"),
    # TRL's correctness reward on prompts without its `answer` column
    ("configs/port/trl_grpo.yaml", ["data.prompts.path=configs/port/data/prompts_openrlhf.jsonl",
                                    "data.prompts.columns.prompt=context_messages"], "`answer`"),
    # OpenRLHF's input key on veRL's parquet: no `context_messages`
    ("configs/port/openrlhf_ppo.yaml", ["data.prompts.path=configs/port/data/gsm8k_verl_train.parquet"],
     "context_messages"),
])
def test_validate_refuses_a_port_on_another_layout(rel, overrides, named, monkeypatch):
    monkeypatch.chdir(ROOT)
    rc, _, err = validate(rel, *overrides)
    assert rc == 1 and err.startswith("error:") and named in err, err


def _make_data():
    spec = importlib.util.spec_from_file_location("port_make_data", PORT / "data" / "make_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_sample_data_is_what_make_data_writes():
    make = _make_data()
    for name, rows in make.JSONL.items():
        have = [json.loads(line) for line in (PORT / "data" / name).read_text().splitlines()]
        assert have == rows(), f"{name}: rerun configs/port/data/make_data.py"
    for name, rows in make.PARQUET.items():
        assert pq.read_table(PORT / "data" / name).to_pylist() == rows(), f"{name}: rerun make_data.py"
    data = {p.name for p in (PORT / "data").iterdir() if p.is_file() and p.suffix != ".py"}
    assert data == {*make.JSONL, *make.PARQUET}
