"""Preference collection (the `label` stage): the generator fleet samples `label.k` responses per prompt from the
current policy (the SFT output in a pipeline), the labeler scores each, and the best and worst of every prompt
become a preferences row {prompt, chosen, rejected, margin} (`data.best_worst_pairs`). The result is
final/label/preferences.parquet, the `data.preferences.path` of the RM and DPO stages after it.

Departures from "sample two, ask a human": k >= 2 samples and best-vs-worst (as in RLAIF / best-of-n data
collection), which maximises the margin per labelled prompt; prompts whose responses all score the same are
dropped and counted, never written as a coin flip.

The labeler is any reward function (`module:function` or `path/file.py:function`, called as
`fn(prompts, responses, **kwargs)` with what a PPO reward function gets: the metadata response_ids, finish_reason,
... and the prompts dataset's columns). It runs in this driver on every sample; what it returns is checked (one
finite number per response).

Responses are sampled to data.max_response_len - 1 tokens: the RM and DPO re-tokenize the text and append EOS,
so a response cut off at the limit still fits there. A pair whose text re-tokenizes longer is handled here by
data.truncation (`error` stops, `drop` drops and counts it, `truncate` leaves it to those stages), so they never
meet a row they refuse. Written prompts are the raw text (or messages, for chat prompts): those stages apply the
chat template themselves.
"""

from __future__ import annotations

import time

import pyarrow as pa

from actors.reward_function import RewardFunction
from cluster import pools
from rlhf_ray import data, models, rollout
from rlhf_ray.config import Config
from rlhf_ray.engines import scoring
from rlhf_ray.engines.scoring import RewardFunctionError
from rlhf_ray.runtime.run_dir import RunDir
from rlhf_ray.stages.result import StageResult

ROLE = "generator"


def load_labeler(spec: str) -> RewardFunction:
    """The labeler, loaded from what label.labeler names as the checks before Ray read it (`scoring.resolve`),
    before any actor starts, so a bad spec costs nothing."""
    try:
        return RewardFunction([scoring.resolve(spec)])
    except RewardFunctionError as e:
        raise RewardFunctionError(f"label.labeler: {e}") from None


def load_prompts(cfg: Config, tokenizer) -> list[dict]:
    """{prompt, ids, columns} for data.prompts (all rows, or max_rows), chat-templated as PPO's prompts are; the
    labeler gets the columns as keyword arguments."""
    ds, d = cfg.data.prompts, cfg.data
    if ds.path is None:
        raise data.DataError("data.prompts.path: the label stage needs a prompts dataset")
    rows, report = data.load_dataset(ds, "prompts", d.skip_malformed)
    limits = data.Limits(d.max_prompt_len, d.max_response_len, d.truncation)
    prompts = [{"prompt": row["prompt"], "ids": ids, "columns": row["columns"]}
               for row, ids in data.encode_kept(tokenizer, rows, "prompts", limits, report, d.apply_chat_template)]
    print(report, flush=True)
    return prompts


CHUNK_PER_GENERATOR = 64  # prompts per generator per call: cluster.call_timeout_s bounds one chunk, not the stage


def chunks(prompts: list[dict], n_generators: int) -> list[list[dict]]:
    """The prompts in calls of CHUNK_PER_GENERATOR per generator, so a large labeling run reports progress and
    no single call outlives the timeout."""
    size = CHUNK_PER_GENERATOR * n_generators
    return [prompts[i:i + size] for i in range(0, len(prompts), size)]


def sample(cfg: Config, policy: str, prompts: list[dict]) -> tuple[pa.Table, float]:
    """(k rollouts per prompt, grouped by `group`; generation seconds, engine start excluded)."""
    from rlhf_ray.stages import generation  # Ray and vLLM: here, so the checks above import without them

    placement = pools.create(pools.plan(cfg.cluster, [ROLE]), timeout_s=cfg.cluster.call_timeout_s)
    print(pools.describe(placement), flush=True)
    try:
        generators = generation.start_generators(cfg, policy, placement.slots(ROLE))
        try:
            generators.call(lambda a, r: a.weight_version.remote(), cfg.cluster.call_timeout_s, "label: start")
            t0 = time.perf_counter()
            params = generation.sampling(cfg, cfg.label.k, cfg.data.max_response_len - 1)
            tables, done = [], 0
            for chunk in chunks(prompts, len(generators)):
                refs = generation.launch(generators, chunk, params)
                tables.append(generation.gather(generators, refs, cfg.cluster.call_timeout_s, "label: generate"))
                done += len(chunk)
                print(f"label: sampled {done}/{len(prompts)} prompts x {cfg.label.k} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
            return generation.join(tables), time.perf_counter() - t0
        finally:
            generators.kill()
    finally:
        pools.remove(placement)


def score(labeler: RewardFunction, spec: str, table: pa.Table) -> list[float]:
    """The labeler's score of every sample; its errors name label.labeler."""
    try:
        return labeler.scores(table)[spec]
    except RewardFunctionError as e:
        raise RewardFunctionError(f"label.labeler = {spec}: {e}") from None


def _groups(table: pa.Table, scores: list[float]) -> tuple[list, list[list[str]], list[list[float]]]:
    """Per prompt (group): its prompt, its responses and their scores. When any prompt is a chat prompt, every
    prompt is written as messages (a text prompt as one user turn, which is how the chat template reads it), so
    the preferences file has one type of prompt."""
    prompts, responses, values = {}, {}, {}
    for g, p, r, s in zip(table.column("group").to_pylist(), rollout.prompts(table),
                          table.column("response").to_pylist(), scores):
        prompts[g] = p
        responses.setdefault(g, []).append(r)
        values.setdefault(g, []).append(s)
    order = sorted(prompts)
    texts = [prompts[g] for g in order]
    if any(isinstance(p, list) for p in texts):
        texts = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in texts]
    return texts, [responses[g] for g in order], [values[g] for g in order]


def fit_limits(cfg: Config, tokenizer, rows: list[dict]) -> tuple[list[dict], int]:
    """(rows the RM and DPO stages will take, rows dropped), by data.truncation. Those stages re-tokenize the text,
    which can take more tokens than were sampled (a policy far from its training data samples byte pieces that
    decode to U+FFFD), so a pair can be over data.max_response_len here though its samples were not."""
    d = cfg.data
    if d.truncation == "truncate":
        return rows, 0  # those stages cut them
    limits = data.Limits(d.max_prompt_len, d.max_response_len, "drop")
    kept = []
    for r in rows:
        try:
            data.encode_preference(tokenizer, r, limits, d.apply_chat_template)
            kept.append(r)
        except data.TooLong:
            pass
    over = len(rows) - len(kept)
    if over and d.truncation == "error":
        raise data.DataError(f"label: {over} of {len(rows)} pairs are over data.max_response_len = "
                             f"{d.max_response_len} tokens once their text is re-tokenized; set data.truncation to "
                             "`drop` (skip and count them) or `truncate`, or raise data.max_response_len")
    return kept, over


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def metrics_row(n_prompts: int, table: pa.Table, scores: list[float], pairs: list[dict], dropped: dict[str, int],
                seconds: float) -> dict:
    """The stage's one metrics row. score_mean is the labeler's (gold) score of the policy that was sampled."""
    lengths = [len(ids) for ids in table.column("response_ids").to_pylist()]
    return {"step": 0, "prompts": n_prompts, "samples": table.num_rows, "pairs": len(pairs),
            **{f"{why}_dropped": n for why, n in dropped.items()},
            "score_mean": _mean(scores), "chosen_score_mean": _mean([p["chosen_score"] for p in pairs]),
            "rejected_score_mean": _mean([p["rejected_score"] for p in pairs]),
            "margin_mean": _mean([p["margin"] for p in pairs]), "response_length_mean": _mean(lengths),
            "eos_frac": _mean([f == "stop" for f in table.column("finish_reason").to_pylist()]),
            "tokens_per_s": sum(lengths) / max(seconds, 1e-9), "time_generate_s": seconds}


def run(cfg: Config, run_dir: RunDir) -> StageResult:
    spec = cfg.label.labeler
    labeler = load_labeler(spec)
    policy = models.resolve_model(cfg.model.policy)
    tokenizer = models.load_tokenizer(cfg.model.tokenizer or policy, cfg.model.trust_remote_code)
    prompts = load_prompts(cfg, tokenizer)

    table, seconds = sample(cfg, policy, prompts)
    scores = score(labeler, spec, table)
    run_dir.write_rollouts("label", table.append_column("score", pa.array(scores, pa.float64())))
    pairs, dropped = data.best_worst_pairs(*_groups(table, scores))
    pairs, dropped["too_long"] = fit_limits(cfg, tokenizer, pairs)
    if not pairs:
        raise data.DataError(f"label: no preference pairs from {len(prompts)} prompts (dropped: {dropped}); "
                             f"sample more responses per prompt (label.k) or check label.labeler = {spec}")
    out = run_dir.final("label") / "preferences.parquet"
    data.write_rows(pairs, out)

    row = metrics_row(len(prompts), table, scores, pairs, dropped, seconds)
    run_dir.expect_steps(1)
    run_dir.log_metrics(row)
    why = ", ".join(f"{n} {reason}" for reason, n in dropped.items() if n) or "none"
    line = (f"label: {len(prompts)} prompts x {cfg.label.k} samples -> {len(pairs)} pairs (dropped: {why}); "
            f"labeler score: all samples {row['score_mean']:.3f}, chosen {row['chosen_score_mean']:.3f}, "
            f"rejected {row['rejected_score_mean']:.3f}; {row['tokens_per_s']:.0f} tokens/s")
    metrics = {k: row[k] for k in ("pairs", "ties_dropped", "score_mean", "chosen_score_mean", "rejected_score_mean")}
    return StageResult({"preferences": str(out)}, f"{line}; preferences in {out}", metrics=metrics)
