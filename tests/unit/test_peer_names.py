"""The peers' names (rlhf_ray/peer_names.py): every row's key exists here, and every row's name, typed as a peer's
user would type it, gets the error that names our key; spelling hints only where no peer name matches."""

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from rlhf_ray import peer_names
from rlhf_ray.config import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]


def is_key(dotted: str) -> bool:
    """`dotted` names a setting of the config tree (a mapping's entry: `<name>` or a name)."""
    cls: typing.Any = Config
    for part in dotted.split("."):
        if typing.get_origin(cls) is dict:
            cls = typing.get_args(cls)[1]
            continue
        hints = typing.get_type_hints(cls, include_extras=False) if dataclasses.is_dataclass(cls) else {}
        if part not in hints:
            return False
        cls = hints[part]
        if typing.get_origin(cls) is typing.Union:  # Optional[Section]
            cls = next(a for a in typing.get_args(cls) if a is not type(None))
    return True


def error(override: str) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    return str(e.value)


@pytest.mark.parametrize("row", peer_names.NAMES, ids=lambda r: f"{r.peer}:{r.theirs}")
def test_every_peer_name_gets_our_key_in_its_error(row):
    assert row.ours is None or is_key(row.ours), row
    ours = f"`{row.ours}`" if row.ours else "not a setting"
    assert f"{row.peer}'s `{row.theirs}` is {ours} here" in error(f"{row.theirs}=1")


def test_typed_in_our_section_the_match_in_that_section_comes_first():
    assert error("ppo.beta=0.1").endswith("ppo.beta: unknown key; TRL's `beta` is `ppo.kl_coef` here (GRPO's KL "
                                          "weight; for DPO's beta, `dpo.beta`)")
    assert "veRL's `actor_rollout_ref.rollout.n` is `rollout.n_samples` here" in error("rollout.n=4")
    assert "TRL's `max_completion_length` is `data.max_response_len` here" in error("data.max_completion_length=9")


def test_a_yaml_section_of_a_peer_names_each_leaf(tmp_path):
    cfg = tmp_path / "verl.yaml"
    cfg.write_text("actor_rollout_ref:\n  rollout: {n: 8, temperature: 0.7}\n  actor: {optim: {lr: 1.0e-6}}\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(cfg), [])
    for ours in ("rollout.n_samples", "rollout.temperature", "train.lr"):
        assert f"is `{ours}` here" in str(e.value)


def test_spelling_hints_only_without_a_peer_name():
    assert error("ppo.kl_cof=1").endswith("ppo.kl_cof: unknown key; did you mean ppo.kl_coef?")
    assert "did you mean" not in error("train.learning_rate=1")


def test_the_docs_page_is_generated_from_the_table():
    assert (ROOT / "docs" / "peer_names.md").read_text() == peer_names.markdown(), \
        f"docs/peer_names.md is out of date: run `{peer_names.REGENERATE}`"


def test_validate_answers_a_config_written_with_trls_names(tmp_path):
    """`rlhf-ray validate` on a GRPO config as a TRL user writes one (GRPOConfig's field names, flat): one error
    per key, each naming TRL and our key, before anything runs."""
    trl = {"learning_rate": "1.0e-6", "beta": "0.04", "num_generations": "8", "max_completion_length": "256",
           "max_prompt_length": "512", "epsilon_high": "0.28", "top_k": "50", "scale_rewards": "none",
           "padding_free": "true", "loss_type": "dr_grpo"}
    cfg = tmp_path / "trl_grpo.yaml"
    cfg.write_text("".join(f"{k}: {v}\n" for k, v in trl.items()))
    out = subprocess.run([sys.executable, "-m", "rlhf_ray.cli", "validate", str(cfg)], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 1
    rows = {r.theirs: r for r in peer_names.NAMES if r.peer == peer_names.TRL}
    for key in trl:
        ours = f"`{rows[key].ours}`" if rows[key].ours else "not a setting"
        assert f"{key}: unknown key; TRL's `{key}` is {ours} here" in out.stderr, (key, out.stderr)
