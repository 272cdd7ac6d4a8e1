"""The peer side of `rlhf-ray bench`: time TRL's GRPOTrainer or its experimental PPOTrainer on CPU.

Run with the TRL venv's python (see peer.py), never ours: `python trl_peer.py SPEC.json OUT.json`. Imports only
stdlib, torch, transformers, trl and datasets. One step = one generation of batch_prompts x group completions, one
scoring, one reference/value forward, and ONE optimizer step over all of them (gradient accumulation over
micro-batches; num_iterations / num_ppo_epochs / num_mini_batches = 1). Completions are exactly response_len tokens:
GRPO suppresses EOS with min_new_tokens = max_new_tokens; PPO's generate() has no stop id at all. A step's time is
the wall time between consecutive optimizer steps (TrainerCallback.on_step_end), warmup steps dropped; of it, the
seconds inside the policy's generate() are reported apart (generate_s).

dtype "float32": fp32 weights, bf16=False (TRL defaults bf16=True, even on CPU). dtype "bfloat16": weights loaded in
bf16 and bf16=True (accelerate's CPU autocast), as TRL's own GRPO recipes load models; AdamW then runs on bf16 params.
"""
import functools
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

DEFAULTS = {"warmup_steps": 1, "threads": 2, "seed": 0, "temperature": 1.0, "beta": 0.0, "lr": 1e-6}


class StepTimer(transformers.TrainerCallback):
    """Wall time between consecutive optimizer steps (the first interval starts at train begin), and the
    seconds spent in the policy's generate() (start time, seconds)."""

    def __init__(self):
        self.ends, self.generations = [], []

    def timed(self, generate):
        @functools.wraps(generate)
        def call(*args, **kwargs):
            t0 = time.perf_counter()
            out = generate(*args, **kwargs)
            self.generations.append((t0, time.perf_counter() - t0))
            return out

        return call

    def generate_s(self, warmup_steps: int) -> float:
        """Mean seconds per timed step spent generating."""
        start, steps = self.ends[warmup_steps], len(self.ends) - 1 - warmup_steps
        return sum(s for t0, s in self.generations if t0 >= start) / steps

    def on_train_begin(self, args, state, control, **kwargs):
        self.ends = [time.perf_counter()]

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def load_reward_fn(ref: str, lengths: list):
    """`path/to/file.py:function`, loaded by file path; wrapped to record every completion's token count."""
    path, name = ref.rsplit(":", 1)
    module_spec = importlib.util.spec_from_file_location("bench_reward", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    fn = getattr(module, name)

    @functools.wraps(fn)
    def recorded(prompts, completions, **kwargs):
        lengths.extend(len(ids) for ids in kwargs["completion_ids"])
        return fn(prompts, completions, **kwargs)

    return recorded


def common_args(spec: dict, n_completions: int) -> dict:
    """TrainingArguments shared by both trainers: no hub, no saving, no logging, CPU, one update per step."""
    if n_completions % spec["micro_batch"]:
        raise ValueError(f"batch_prompts*group = {n_completions} is not a multiple of micro_batch "
                         f"{spec['micro_batch']}")
    return dict(
        output_dir=tempfile.mkdtemp(prefix="trl-peer-"),  # required by TrainingArguments; nothing is saved there
        per_device_train_batch_size=spec["micro_batch"],
        gradient_accumulation_steps=n_completions // spec["micro_batch"],
        learning_rate=spec["lr"], lr_scheduler_type="constant", seed=spec["seed"], temperature=spec["temperature"],
        bf16=spec["dtype"] == "bfloat16", use_cpu=True, report_to="none", save_strategy="no",
        logging_strategy="no", push_to_hub=False, dataloader_num_workers=0, disable_tqdm=True)


def build_grpo(spec: dict, dtype, lengths: list, timer: StepTimer):
    n = spec["batch_prompts"] * spec["group"]
    steps = spec["warmup_steps"] + spec["steps"]
    args = trl.GRPOConfig(
        **common_args(spec, n), max_steps=steps, num_generations=spec["group"], beta=spec["beta"],
        num_iterations=1, max_completion_length=spec["response_len"], generation_batch_size=n,
        generation_kwargs={"min_new_tokens": spec["response_len"]}, mask_truncated_completions=False,
        top_p=1.0, top_k=0, log_completions=False)
    prompts = (spec["prompts"] * steps * spec["batch_prompts"])[: steps * spec["batch_prompts"]]
    tokenizer = AutoTokenizer.from_pretrained(spec["model"], trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=dtype, trust_remote_code=False)
    model.generate = timer.timed(model.generate)  # GRPOTrainer samples with the (unwrapped) model's generate()
    return trl.GRPOTrainer(
        model=model, reward_funcs=load_reward_fn(spec["reward_fn"], lengths), args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tokenizer, callbacks=[timer])


def build_ppo(spec: dict, dtype, lengths: list, timer: StepTimer):
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as ppo_module

    n = spec["batch_prompts"] * spec["group"]
    steps = spec["warmup_steps"] + spec["steps"]
    args = PPOConfig(
        **common_args(spec, n), total_episodes=steps * n, num_ppo_epochs=1, num_mini_batches=1,
        kl_coef=spec["beta"], response_length=spec["response_len"], stop_token=None, missing_eos_penalty=None,
        local_rollout_forward_batch_size=n, num_sample_generations=0)
    tokenizer = AutoTokenizer.from_pretrained(spec["model"], padding_side="left", trust_remote_code=False)
    # TRL's PPO takes attention_mask = (ids != pad): a pad id that occurs inside the templated prompts (SmolLM2 pads
    # with <|im_end|>) would mask those tokens, so pad with a special token the prompts never use.
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in spec["prompts"]]
    used = {t for ids in prompt_ids for t in ids}
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id in used:
        free = [t for t in tokenizer.all_special_ids if t not in used and t != tokenizer.eos_token_id]
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(free[0])
    # PPO repeats each prompt `group` times so that a step sees batch_prompts*group rollouts, like GRPO.
    rows = [ids for ids in prompt_ids for _ in range(spec["group"])]
    dataset = Dataset.from_dict({"input_ids": rows})
    policy = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=dtype, trust_remote_code=False)
    # Fixed-length replies as vLLM's ignore_eos gives them: generate() never stops (no stop id), so every reply is
    # response_len long. (With min_new_tokens on the model's config instead, a random tiny model's PPO reply
    # ended at an EOS after 11 of 16 tokens in one CI run.)
    policy.generation_config.eos_token_id = None
    ref = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=dtype, trust_remote_code=False)
    reward = AutoModelForSequenceClassification.from_pretrained(spec["reward_model"], num_labels=1, dtype=dtype,
                                                                trust_remote_code=False)
    value = AutoModelForSequenceClassification.from_pretrained(spec["reward_model"], num_labels=1, dtype=dtype,
                                                               trust_remote_code=False)
    for m in (policy, ref, reward, value):
        m.config.pad_token_id = tokenizer.pad_token_id
    generate = ppo_module.batch_generation

    @timer.timed
    def recorded(model, queries, *a, **kw):  # measurement only: the time and the tokens each reply got
        query_responses, logits = generate(model, queries, *a, **kw)
        n = query_responses.shape[1] - queries.shape[1]
        lengths.extend([n] * len(query_responses))
        return query_responses, logits

    ppo_module.batch_generation = recorded
    return PPOTrainer(
        args=args, processing_class=tokenizer, model=policy, ref_model=ref, reward_model=reward,
        value_model=value, train_dataset=dataset, eval_dataset=dataset, callbacks=[timer])


def main(spec_path: str, out_path: str) -> None:
    spec = {**DEFAULTS, **json.load(open(spec_path))}
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[spec["dtype"]]
    if dtype == torch.bfloat16 and hasattr(torch.cpu, "_init_amx"):
        torch.cpu._init_amx()  # bf16 kernels on this CPU need AMX initialised first
    lengths, timer = [], StepTimer()
    trainer = {"grpo": build_grpo, "ppo": build_ppo}[spec["algo"]](spec, dtype, lengths, timer)
    trainer.train()
    per_step = [b - a for a, b in zip(timer.ends, timer.ends[1:])][spec["warmup_steps"]:]
    n = spec["batch_prompts"] * spec["group"]
    args = trainer.args
    ran = {k: getattr(args, k) for k in (
        "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "bf16", "temperature",
        "beta", "num_iterations", "num_generations", "generation_batch_size", "steps_per_generation",
        "max_completion_length", "generation_kwargs", "loss_type", "scale_rewards", "kl_coef", "num_ppo_epochs",
        "num_mini_batches", "response_length", "local_rollout_forward_batch_size", "batch_size", "vf_coef")
           if getattr(args, k, None) is not None}
    result = {
        "algo": spec["algo"], "seconds_per_step": per_step, "mean_s": statistics.mean(per_step),
        "median_s": statistics.median(per_step), "generate_s": timer.generate_s(spec["warmup_steps"]),
        "trl_version": trl.__version__, "torch_version": torch.__version__,
        "transformers_version": transformers.__version__, "completions_per_step": n,
        "tokens_per_step": n * spec["response_len"], "steps_run": len(timer.ends) - 1,
        "completion_lengths": sorted(set(lengths)), "completions_seen": len(lengths),
        "model_dtype": str(next(trainer.model.parameters()).dtype), "threads": torch.get_num_threads(),
        "ref_model_loaded": getattr(trainer, "ref_model", None) is not None,
        "pad_token": trainer.processing_class.pad_token, "trl_settings": ran}
    with open(out_path, "w") as f:
        json.dump({k: v for k, v in result.items() if v is not None}, f, indent=1, default=str)


if __name__ == "__main__":
    main(*sys.argv[1:3])
