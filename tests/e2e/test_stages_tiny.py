"""SFT, reward model (on the policy backbone and on the MiniLM encoder) and DPO end to end through `rlhf-ray run` (in-process `cli.main`, one Ray session for the
module) on the tiny random-init model and the learnable datasets of configs/tiny/make_data.py; then the pipeline:
a later stage starts from an earlier stage's output and a rerun skips finished stages (a whole rerun of a finished
run, and `--force`, are tested on the pipeline: test_pipeline_tiny.py)."""

import json
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from rlhf_ray import cli, data, models
from rlhf_ray.stages.pipeline import MARKER

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> int:
    return cli.main(["run", *args])


def _metrics(run_dir: Path, stage: str) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["stage"] == stage]


def _marker(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / "final" / stage / MARKER).read_text())


@pytest.fixture(scope="module")
def sft_dir(ray_session, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("sft")
    assert _run("configs/tiny/sft.yaml", "--run-dir", str(run_dir)) == 0
    return run_dir


def test_sft_loss_falls_on_train_and_held_out(sft_dir):
    rows = _metrics(sft_dir, "sft")
    assert rows[0]["step"] == 0 and "loss" not in rows[0]  # the untrained model on the held-out split
    trained = rows[1:]
    assert [r["step"] for r in trained] == list(range(1, 43)) and all("loss" in r for r in trained)
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    print(f"sft: loss {trained[0]['loss']:.3f} -> {trained[-1]['loss']:.3f}, eval {evals[0]:.3f} -> {evals[-1]:.3f}")
    assert trained[-1]["loss"] < 0.3 * trained[0]["loss"]
    assert evals[-1] < 0.3 * evals[0] and evals == sorted(evals, reverse=True)
    model = AutoModelForCausalLM.from_pretrained(sft_dir / "final" / "sft")
    assert model.config.architectures == ["LlamaForCausalLM"]
    assert _marker(sft_dir, "sft")["outputs"] == {"policy": str(sft_dir / "final" / "sft")}


def test_rm_held_out_accuracy_and_the_reward_actor_loads_it(ray_session, tmp_path):
    assert _run("configs/tiny/rm.yaml", "--run-dir", str(tmp_path)) == 0
    rows = _metrics(tmp_path, "rm")
    first, last = rows[0], rows[-1]
    print(f"rm: held-out accuracy {first['eval_accuracy']:.3f} -> {last['eval_accuracy']:.3f}, "
          f"margin {first['eval_margin']:.3f} -> {last['eval_margin']:.3f}")
    assert last["eval_accuracy"] >= 0.75 and last["eval_margin"] > first["eval_margin"] + 1.0
    assert {"loss", "accuracy", "margin", "eval_loss"} <= set(last)
    folder = tmp_path / "final" / "rm"
    assert AutoModelForSequenceClassification.from_pretrained(folder).config.num_labels == 1
    # The PPO reward actor's class, in-process: it must rank held-out-style pairs as the stage learned to.
    from actors.reward_model import RewardModel

    rm = RewardModel(str(folder), models.resolve_model("tiny"))
    tok = models.load_tokenizer("tiny")
    pairs = [("Hello, what do you think of the kitchen?", "The kitchen is warm and kind.",
              "The kitchen is cold and broken."),
             ("Thank you, what do you think of the planet?", "The planet is golden and happy.",
              "The planet is noisy and empty.")]
    prompt = [data.prompt_ids(tok, p) for p, _, _ in pairs]
    table = pa.table({"prompt_ids": prompt * 2,
                      "response_ids": [data.response_ids(tok, c) for _, c, _ in pairs]
                      + [data.response_ids(tok, r) for _, _, r in pairs]})
    scores = rm.scores(table)
    assert scores[0] > scores[2] and scores[1] > scores[3], scores


def test_rm_on_a_separate_encoder_reads_text_pairs(ray_session, tmp_path):
    """model.reward = minilm-l6: the pairs are re-tokenized as (prompt, response) texts for the encoder, and the
    reward actor, which scores rollouts by their texts for such a model, agrees with what was trained."""
    assert _run("configs/tiny/rm.yaml", "model.reward=minilm-l6", "train.lr=1e-4", "train.max_steps=7",
                "--run-dir", str(tmp_path)) == 0
    last = _metrics(tmp_path, "rm")[-1]
    print(f"rm on minilm-l6: held-out accuracy {last['eval_accuracy']:.3f}, margin {last['eval_margin']:.3f}")
    assert last["step"] == 7 and last["eval_accuracy"] >= 0.75
    from actors.reward_model import RewardModel

    rm = RewardModel(str(tmp_path / "final" / "rm"), models.resolve_model("tiny"))
    assert not rm.same_vocab
    scores = rm.scores(pa.table({"prompt": ["Hello, what do you think of the kitchen?"] * 2,
                                 "response": ["The kitchen is warm and kind.", "The kitchen is cold and broken."]}))
    assert scores[0] > scores[1], scores


def test_dpo_raises_held_out_preference_accuracy(ray_session, tmp_path):
    assert _run("configs/tiny/dpo.yaml", "--run-dir", str(tmp_path)) == 0
    rows = _metrics(tmp_path, "dpo")
    first, last = rows[0], rows[-1]
    print(f"dpo: held-out policy preference accuracy {first['eval_policy_accuracy']:.3f} -> "
          f"{last['eval_policy_accuracy']:.3f}, implicit-reward accuracy {last['eval_accuracy']:.3f}, "
          f"margin {first['eval_reward_margin']:.3f} -> {last['eval_reward_margin']:.3f}")
    # Before training the policy is its reference: implicit rewards ~0 (the reference actor and the learner agree).
    assert abs(first["eval_reward_margin"]) < 1e-3
    assert last["eval_policy_accuracy"] >= 0.9 and last["eval_accuracy"] >= 0.9
    assert last["eval_reward_margin"] > 0.5 and last["eval_loss"] < first["eval_loss"] - 0.2
    assert {"loss", "accuracy", "reward_margin", "chosen_logps", "rejected_logps"} <= set(last)
    assert last["chosen_logps"] > rows[1]["chosen_logps"]  # DPO pushes chosen log-probs up on this data
    policy = AutoModelForCausalLM.from_pretrained(tmp_path / "final" / "dpo")
    ids = torch.tensor([[1, 2, 3]])
    assert torch.isfinite(policy(input_ids=ids).logits).all()


def test_a_later_stage_starts_from_the_sft_output_and_finished_stages_are_skipped(sft_dir, capsys):
    before = (sft_dir / "final" / "sft" / MARKER).read_text()
    assert _run("configs/tiny/sft.yaml", "stages=[sft,dpo]", "data.preferences.path=configs/data/tiny_prefs.jsonl",
                "train.max_steps=3", "train.eval_every=0", "--run-dir", str(sft_dir)) == 0
    out = capsys.readouterr().out
    assert "sft: finished in an earlier run" in out and "sft step" not in out
    assert (sft_dir / "final" / "sft" / MARKER).read_text() == before
    dpo = _marker(sft_dir, "dpo")
    assert dpo["inputs"]["model.policy"] == str(sft_dir / "final" / "sft")
    assert [r["step"] for r in _metrics(sft_dir, "dpo")] == [1, 2, 3]  # no held-out pairs here: no step-0 row
    assert len(_metrics(sft_dir, "sft")) == 43  # untouched
