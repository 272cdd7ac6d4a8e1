"""Section 4 and rlhf-ray's side of section 5: whole PPO / GRPO steps through the real driver (rlhf_ray.stages.ppo), on
the benchmark's workload, read back from the run's metrics rows."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

from rlhf_ray import models
from rlhf_ray.bench.repeat import spread
from rlhf_ray.bench.workload import REWARD_FN, Workload
from rlhf_ray.config import load_config
from rlhf_ray.runtime.run_dir import RunDir

PHASES = ("generate", "score", "train", "sync")


def reward_model(w: Workload, out: Path) -> str:
    """A reward model for the PPO comparison: the policy's backbone with a fresh one-label head (seeded), saved
    once; both rlhf-ray and the peer score with it and start their critic / value model from it."""
    folder = out / "reward-model"
    if not (folder / "config.json").exists():
        import torch
        from transformers.utils import logging as hf_logging

        torch.manual_seed(w.seed)
        path = models.resolve_model(w.model)
        verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()  # its load report names the fresh head, which is the point here
        hf_logging.disable_progress_bar()
        try:
            models.load_value_model(path, "float32").save_pretrained(folder)
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()
        models.load_tokenizer(path).save_pretrained(folder)
    return str(folder)


def config(w: Workload, prompts: Path, advantage: str, staleness: int, rm: str | None, threads: dict[str, int]):
    """The PPO config of one run: one generation and one optimizer step per step, fixed-length completions."""
    values = {
        "name": f"bench-{advantage}-k{staleness}", "stages": ["ppo"], "resume": "never",
        "model": {"policy": w.model, "dtype": w.dtype, "max_seq_len": w.max_seq_len, "reward": rm},
        "data": {"prompts": {"path": str(prompts)}, "max_prompt_len": w.max_prompt_len,
                 "max_response_len": w.response_len, "truncation": "truncate"},
        "rollout": {"batch_size": w.prompts, "n_samples": w.group, "ignore_eos": True, "max_staleness": staleness,
                    "kv_cache_mb": 256},
        "reward": {"functions": [] if rm else [{"function": REWARD_FN}]},
        "train": {"lr": w.lr, "micro_batch_size": w.micro_batch},
        "ppo": {"steps": w.steps + 1, "advantage": advantage, "mini_batch_size": w.samples, "epochs": 1,
                "kl_coef": w.ppo_beta if advantage == "gae" else w.beta, "critic_lr": w.lr,
                "kl_in_reward": advantage == "gae"},
        "cluster": {"roles": {role: {"threads": n} for role, n in threads.items()}},
    }
    return load_config(None, [f"{key}={json.dumps(v)}" for key, v in values.items()])


def threads_for(w: Workload, staleness: int, advantage: str) -> dict[str, int]:
    """The cores split among the actors that run at once (more threads than cores cost: measured). Phases run one
    after another at staleness 0: generate; score (reference, reward model, critic values); train (policy and
    critic). With overlap the generator runs beside the learners."""
    critic = advantage == "gae"
    gen = w.threads // 2 if staleness else w.threads
    learner = w.threads // (1 + critic + (1 if staleness else 0))
    scorer = w.threads // (3 if critic else 1)
    return {k: max(1, n) for k, n in {"generator": gen, "reference": scorer, "reward": scorer, "policy": learner,
                                      "critic": learner}.items()}


def run(w: Workload, prompts: Path, out: Path, advantage: str, staleness: int, rm: str | None = None) -> dict:
    """Run `w.steps` + 1 steps; the first (compilation, warm caches) is left out of every number."""
    from rlhf_ray.stages.ppo import PPOTrainer  # Ray and the actors: not needed to build configs or read results

    threads = threads_for(w, staleness, advantage)
    cfg = config(w, prompts, advantage, staleness, rm, threads)
    shutil.rmtree(out / cfg.name, ignore_errors=True)  # a fresh run directory: no rows of an earlier bench
    run_dir = RunDir(out / cfg.name, cfg)
    run_dir.start_stage("ppo")
    rows = PPOTrainer(cfg, run_dir).fit()[1:]
    return {"advantage": advantage, "max_staleness": staleness, "threads": threads, "steps": len(rows),
            **summarize(rows, w.samples)}


def summarize(rows: list[dict], samples: int) -> dict:
    """Mean seconds per phase and per step (with the steps' spread), samples/s and generated tokens/s, and the share of the step the
    generators sat idle (1 - their sampling seconds / step seconds; fleet of one generator)."""
    phase = {p: statistics.mean(r[f"time_{p}_s"] for r in rows) for p in PHASES}
    step_s = sum(phase.values())
    steps_s = [sum(r[f"time_{p}_s"] for p in PHASES) for r in rows]
    tokens = statistics.mean(r["response_length_mean"] for r in rows) * samples
    busy = statistics.mean(r["generator_busy_s"] for r in rows)
    return {"phase_s": phase, "step_s": step_s, "step_spread": spread(steps_s), "samples_per_s": samples / step_s, "tokens_per_s": tokens / step_s,
            "generator_idle_frac": max(0.0, 1.0 - busy / step_s), "staleness_max": max(r["staleness_max"] for r in rows)}
