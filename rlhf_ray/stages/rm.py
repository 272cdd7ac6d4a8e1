"""Reward-model stage: Bradley-Terry on preference pairs (`pref_losses.reward_loss`), accuracy and margin on
held-out pairs; the result is final/rm, a one-label sequence classifier that `actors.reward_model.RewardModel`
loads and PPO scores with.

Backbone: `model.reward` when set (e.g. `minilm-l6`, an encoder), else the policy the stage starts from (a decoder
read at the last token, as InstructGPT). The pairs are tokenized the way the reward actor will later see
rollouts: a backbone with the policy's vocabulary reads the policy's tokens (chat-templated prompt + response +
EOS); any other reads `prompt` and `response` texts as a pair through its own tokenizer, cut at model.max_seq_len.
"""

from __future__ import annotations

from functools import partial

from rlhf_ray import data, models
from rlhf_ray.algos import batching, pref_losses
from rlhf_ray.config import Config
from rlhf_ray.runtime.run_dir import RunDir
from rlhf_ray.stages import headline, supervised
from rlhf_ray.stages.result import StageResult


def _policy_token_pairs(tok, limits: data.Limits, chat: bool, rows: list[dict], report: data.LoadReport
                        ) -> list[dict]:
    out = []
    for r in data.encode_rows(tok, rows, "preferences", limits, report, chat):
        out.append({"chosen": r["prompt_ids"] + r["chosen_ids"], "rejected": r["prompt_ids"] + r["rejected_ids"],
                    **({"margin": r["margin"]} if "margin" in r else {})})
    return out


def _text_pairs(tok, max_len: int, rows: list[dict], report: data.LoadReport) -> list[dict]:
    out = []
    for r in rows:
        enc = {k: tok(data.prompt_text(r["prompt"]), r[k], truncation=True, max_length=max_len)["input_ids"]
               for k in ("chosen", "rejected")}
        out.append({**enc, **({"margin": r["margin"]} if "margin" in r else {})})
    report.kept = len(out)
    return out


def _require_margin(encode, rows: list[dict], report: data.LoadReport) -> list[dict]:
    for i, r in enumerate(rows, 1):
        if "margin" not in r:
            raise data.DataError(f"{report.source}: row {i}: rm.margin is set, but the row has no `margin` field")
    return encode(rows, report)


def build_job(cfg: Config) -> supervised.Job:
    """Load, check and tokenize the preference pairs (no actors yet)."""
    policy = models.resolve_model(cfg.model.policy)
    backbone = models.resolve_model(cfg.model.reward or policy)
    trust = cfg.model.trust_remote_code
    policy_tok = models.load_tokenizer(cfg.model.tokenizer or policy, trust)
    rm_tok = models.load_tokenizer(backbone, trust)
    d = cfg.data
    if rm_tok.get_vocab() == policy_tok.get_vocab():
        encode = partial(_policy_token_pairs, policy_tok, data.Limits(d.max_prompt_len, d.max_response_len,
                                                                       d.truncation), d.apply_chat_template)
    else:
        encode = partial(_text_pairs, rm_tok, cfg.model.max_seq_len)
    if cfg.rm.margin:
        encode = partial(_require_margin, encode)
    train, held_out = supervised.load_split(cfg, "preferences", encode)
    return supervised.Job("rm", backbone, "reward", pref_losses.make_reward_loss(cfg.rm.margin), train, held_out,
                          partial(batching.pair_batch, pad_id=rm_tok.pad_token_id))


def run(cfg: Config, run_dir: RunDir) -> StageResult:
    job = build_job(cfg)
    history = supervised.run(cfg, run_dir, job)
    out = run_dir.final("rm")
    last = history[-1]
    if "eval_accuracy" in last:
        acc, pairs = last["eval_accuracy"], len(job.eval)
        se = headline.accuracy_se(acc, pairs)
        line = (f"rm: reward model held-out accuracy {acc:.3f} ± {se:.3f} ({pairs} pairs; "
                f"{history[0]['eval_accuracy']:.3f} before training), margin {last['eval_margin']:.3f}, "
                f"eval loss {last['eval_loss']:.3f}")
        metrics = {**{k: last[k] for k in ("eval_loss", "eval_accuracy", "eval_margin")}, "eval_accuracy_se": se,
                   "eval_pairs": pairs}
    else:
        line = f"rm: train accuracy {last['accuracy']:.3f} (no held-out pairs: data.preferences.eval_fraction is 0)"
        metrics = {"accuracy": last["accuracy"]}
    return StageResult({"reward": str(out)}, f"{line}; reward model in {out}", metrics=metrics)
