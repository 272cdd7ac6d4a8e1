"""DPO stage (Rafailov et al. 2023; IPO and conservative DPO through `dpo.loss` / `dpo.label_smoothing`).

The reference log-probs log π_ref(y|x) of every chosen and rejected response are computed once, before training,
by Reference actors (the frozen starting policy, or `model.reference`), and travel with the rows; the reference
actors are gone before the learners start. Metrics: loss, accuracy (implicit reward r_c > r_r), reward_margin,
chosen/rejected log-probs and rewards, policy_accuracy (log π(y_c) > log π(y_r)); the `eval_` versions on
held-out pairs, at step 0 for the starting policy. The result is final/dpo, the policy of later stages.
"""

from __future__ import annotations

from functools import partial

import pyarrow as pa

from actors.reference import Reference
from cluster.actor_group import ActorGroup
from rlhf_ray import data, models
from rlhf_ray.algos import batching, pref_losses
from rlhf_ray.config import Config, ConfigError
from rlhf_ray.runtime.run_dir import RunDir
from rlhf_ray.stages import supervised
from rlhf_ray.stages.result import StageResult


def build_job(cfg: Config) -> tuple[supervised.Job, str]:
    """(job, reference folder): load, check and tokenize the pairs (no actors yet)."""
    policy = models.resolve_model(cfg.model.policy)
    reference = models.resolve_model(cfg.model.reference or policy)
    trust = cfg.model.trust_remote_code
    tok = models.load_tokenizer(cfg.model.tokenizer or policy, trust)
    if models.load_tokenizer(reference, trust).get_vocab() != tok.get_vocab():
        raise ConfigError([f"model.reference: {reference} does not share the policy's vocabulary; DPO compares "
                           "their log-probs of the same tokens"])
    d, p = cfg.data, cfg.dpo
    limits = data.Limits(d.max_prompt_len, d.max_response_len, d.truncation)
    train, held_out = supervised.load_split(
        cfg, "preferences",
        lambda rows, report: data.encode_rows(tok, rows, "preferences", limits, report, d.apply_chat_template))
    loss = pref_losses.make_dpo_loss(p.beta, p.loss, p.label_smoothing)
    job = supervised.Job("dpo", policy, "policy", loss, train, held_out,
                         partial(batching.dpo_batch, pad_id=tok.pad_token_id))
    return job, reference


def add_reference_logps(cfg: Config, reference: str, slots: list, rows: list[dict]) -> None:
    """Set ref_chosen_logps and ref_rejected_logps (summed over the response) on every row, in place."""
    seqs = [(r["prompt_ids"], r[f"{k}_ids"]) for k in ("chosen", "rejected") for r in rows]
    group = ActorGroup(Reference, "reference", (reference, cfg.model.dtype, cfg.train.micro_batch_size,
                                                cfg.model.trust_remote_code, cfg.train.packing),
                       slots=slots, distributed=False, threads=cfg.cluster.roles["reference"].threads)
    try:
        n = len(group)
        parts = [pa.table({"prompt_ids": [s[0] for s in seqs[i::n]], "response_ids": [s[1] for s in seqs[i::n]]})
                 for i in range(n)]
        per_rank = group.call(lambda a, i: a.logprobs.remote(parts[i]), cfg.cluster.call_timeout_s,
                              "dpo: reference log-probs")
    finally:
        group.kill()
    sums = [0.0] * len(seqs)
    for i, part in enumerate(per_rank):  # rank i scored seqs[i::n]
        for j, lp in enumerate(part):
            sums[i + j * n] = sum(lp)
    for j, r in enumerate(rows):
        r["ref_chosen_logps"], r["ref_rejected_logps"] = sums[j], sums[len(rows) + j]


def run(cfg: Config, run_dir: RunDir) -> StageResult:
    job, reference = build_job(cfg)
    history = supervised.run(
        cfg, run_dir, job, roles=("reference", supervised.LEARNER_ROLE),
        before_learners=lambda pl: add_reference_logps(cfg, reference, pl.slots("reference"), job.train + job.eval))
    out = run_dir.final("dpo")
    first, last = history[0], history[-1]
    if "eval_accuracy" in last:
        line = (f"dpo: held-out preference accuracy {first['eval_policy_accuracy']:.3f} -> "
                f"{last['eval_policy_accuracy']:.3f} (policy log-probs), implicit-reward accuracy "
                f"{last['eval_accuracy']:.3f}, reward margin {first['eval_reward_margin']:.3f} -> "
                f"{last['eval_reward_margin']:.3f}")
        metrics = {k: last[k] for k in ("eval_loss", "eval_accuracy", "eval_reward_margin", "eval_policy_accuracy")}
    else:
        line = f"dpo: train accuracy {last['accuracy']:.3f}, reward margin {last['reward_margin']:.3f}"
        metrics = {"accuracy": last["accuracy"]}
    return StageResult({"policy": str(out)}, f"{line}; policy in {out}", metrics=metrics)
