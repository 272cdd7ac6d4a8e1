"""SFT stage: next-token loss on the response tokens of demonstrations (`forward.SFT_LOSS`), eval loss on a
held-out split (`data.demonstrations.eval_fraction`); the result is final/sft, the policy of later stages."""

from __future__ import annotations

from functools import partial

from rlhf_ray import data, models
from rlhf_ray.algos import batching, forward
from rlhf_ray.config import Config
from rlhf_ray.runtime.run_dir import RunDir
from rlhf_ray.stages import supervised
from rlhf_ray.stages.result import StageResult


def build_job(cfg: Config) -> supervised.Job:
    """Load, check and tokenize the demonstrations (no actors yet)."""
    policy = models.resolve_model(cfg.model.policy)
    tok = models.load_tokenizer(cfg.model.tokenizer or policy, cfg.model.trust_remote_code)
    d = cfg.data
    limits = data.Limits(d.max_prompt_len, d.max_response_len, d.truncation)
    train, held_out = supervised.load_split(
        cfg, "demonstrations",
        lambda rows, report: data.encode_rows(tok, rows, "demonstrations", limits, report, d.apply_chat_template))
    return supervised.Job("sft", policy, "policy", forward.SFT_LOSS, train, held_out,
                          partial(batching.sft_batch, pad_id=tok.pad_token_id))


def run(cfg: Config, run_dir: RunDir) -> StageResult:
    history = supervised.run(cfg, run_dir, build_job(cfg))
    out = run_dir.final("sft")
    trained = [r for r in history if "loss" in r]
    line = f"sft: loss {trained[0]['loss']:.3f} -> {trained[-1]['loss']:.3f}"
    metrics = {"loss": trained[-1]["loss"]}
    if "eval_loss" in history[0]:
        line += f", eval loss {history[0]['eval_loss']:.3f} -> {history[-1]['eval_loss']:.3f}"
        metrics["eval_loss"] = history[-1]["eval_loss"]
    return StageResult({"policy": str(out)}, f"{line}; policy in {out}", metrics=metrics)
