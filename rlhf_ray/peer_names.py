"""The peers' names for rlhf-ray's keys: TRL's config fields, OpenRLHF's command-line flags, veRL's dotted config
paths. One table drives both the error a peer's name gets ("TRL's `beta` is `ppo.kl_coef` here", yaml_tree's
unknown-key hint) and docs/peer_names.md (`python -m rlhf_ray.peer_names` writes it).

Their names as TRL's configs (GRPOConfig, PPOConfig, DPOConfig, transformers' TrainingArguments), OpenRLHF's
`train_ppo_ray` flags and veRL's `ppo_trainer.yaml` spell them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

TRL, OPENRLHF, VERL = "TRL", "OpenRLHF", "veRL"


@dataclass(frozen=True)
class PeerName:
    peer: str
    theirs: str
    """Their name: a TRL field, an OpenRLHF flag without `--`, a veRL dotted path."""
    ours: Optional[str]
    """Our key; None where nothing here is set in its place (the note says why)."""
    note: str = ""
    """Where the meaning differs."""


PER_PROMPT = "counts prompts, here samples: theirs x rollout.n_samples"
NAMES = [
    # TRL (GRPOConfig, PPOConfig, DPOConfig, and transformers' TrainingArguments)
    PeerName(TRL, "learning_rate", "train.lr"),
    PeerName(TRL, "beta", "ppo.kl_coef", "GRPO's KL weight; for DPO's beta, `dpo.beta`"),
    PeerName(TRL, "num_generations", "rollout.n_samples"),
    PeerName(TRL, "max_completion_length", "data.max_response_len"),
    PeerName(TRL, "max_prompt_length", "data.max_prompt_len"),
    PeerName(TRL, "max_length", "model.max_seq_len"),
    PeerName(TRL, "per_device_train_batch_size", "train.micro_batch_size", "per learner rank, per forward"),
    PeerName(TRL, "gradient_accumulation_steps", None,
             "derived: ppo.mini_batch_size (train.batch_size) / (ranks x train.micro_batch_size)"),
    PeerName(TRL, "num_train_epochs", "train.epochs"),
    PeerName(TRL, "num_iterations", "ppo.epochs", "GRPO's updates per batch"),
    PeerName(TRL, "num_ppo_epochs", "ppo.epochs"),
    PeerName(TRL, "epsilon", "ppo.clip_eps"),
    PeerName(TRL, "epsilon_high", "ppo.clip_eps_high"),
    PeerName(TRL, "top_k", "rollout.top_k", "their 0 (all tokens) is None here"),
    PeerName(TRL, "padding_free", "train.packing"),
    PeerName(TRL, "scale_rewards", "ppo.scale_rewards"),
    PeerName(TRL, "cliprange", "ppo.clip_eps"),
    PeerName(TRL, "cliprange_value", "ppo.value_clip_eps"),
    PeerName(TRL, "lr_scheduler_type", "train.lr_schedule"),
    PeerName(TRL, "warmup_steps", "train.warmup_steps"),
    PeerName(TRL, "max_grad_norm", "train.grad_clip"),
    PeerName(TRL, "save_steps", "train.checkpoint_every"),
    PeerName(TRL, "save_total_limit", "train.keep_checkpoints"),
    PeerName(TRL, "eval_steps", "train.eval_every"),
    PeerName(TRL, "bf16", "model.dtype", "`model.dtype: bfloat16`"),
    PeerName(TRL, "reward_funcs", "reward.functions", "`module:function` or `file.py:function` specs"),
    PeerName(TRL, "reward_weights", "reward.functions", "each function's `weight`"),
    PeerName(TRL, "loss_type", "dpo.loss", "DPO's; GRPO's loss aggregation is `ppo.loss_agg`"),
    PeerName(TRL, "vllm_gpu_memory_utilization", "rollout.engine.gpu_memory_utilization"),
    PeerName(TRL, "vllm_tensor_parallel_size", "rollout.engine.tensor_parallel_size"),
    PeerName(TRL, "model_name_or_path", "model.policy"),
    # OpenRLHF (train_ppo_ray flags)
    PeerName(OPENRLHF, "pretrain", "model.policy"),
    PeerName(OPENRLHF, "reward_pretrain", "model.reward"),
    PeerName(OPENRLHF, "critic_pretrain", "model.critic"),
    PeerName(OPENRLHF, "actor_learning_rate", "train.lr"),
    PeerName(OPENRLHF, "critic_learning_rate", "ppo.critic_lr"),
    PeerName(OPENRLHF, "init_kl_coef", "ppo.kl_coef"),
    PeerName(OPENRLHF, "n_samples_per_prompt", "rollout.n_samples"),
    PeerName(OPENRLHF, "rollout_batch_size", "rollout.batch_size", "prompts per batch in both"),
    PeerName(OPENRLHF, "train_batch_size", "ppo.mini_batch_size", "samples per optimizer step in both"),
    PeerName(OPENRLHF, "micro_train_batch_size", "train.micro_batch_size"),
    PeerName(OPENRLHF, "max_epochs", "ppo.epochs"),
    PeerName(OPENRLHF, "prompt_max_len", "data.max_prompt_len"),
    PeerName(OPENRLHF, "generate_max_len", "data.max_response_len"),
    PeerName(OPENRLHF, "eps_clip", "ppo.clip_eps"),
    PeerName(OPENRLHF, "value_clip", "ppo.value_clip_eps"),
    PeerName(OPENRLHF, "lambd", "ppo.lam"),
    PeerName(OPENRLHF, "advantage_estimator", "ppo.advantage"),
    PeerName(OPENRLHF, "use_kl_loss", "ppo.kl_in_reward", "inverted: `ppo.kl_in_reward: false` is the KL as a loss"),
    PeerName(OPENRLHF, "vllm_num_engines", "cluster.roles.generator.count"),
    PeerName(OPENRLHF, "vllm_tensor_parallel_size", "rollout.engine.tensor_parallel_size"),
    PeerName(OPENRLHF, "adam_offload", "train.offload_optimizer"),
    PeerName(OPENRLHF, "packing_samples", "train.packing"),
    PeerName(OPENRLHF, "save_steps", "train.checkpoint_every"),
    PeerName(OPENRLHF, "max_ckpt_num", "train.keep_checkpoints"),
    PeerName(OPENRLHF, "lora_rank", "model.lora.rank"),
    PeerName(OPENRLHF, "lora_alpha", "model.lora.alpha"),
    PeerName(OPENRLHF, "num_episodes", "ppo.steps", "ours counts PPO steps (batches), not passes over the prompts"),
    # veRL (ppo_trainer.yaml paths)
    PeerName(VERL, "actor_rollout_ref.model.path", "model.policy"),
    PeerName(VERL, "actor_rollout_ref.actor.optim.lr", "train.lr"),
    PeerName(VERL, "critic.optim.lr", "ppo.critic_lr"),
    PeerName(VERL, "actor_rollout_ref.rollout.n", "rollout.n_samples"),
    PeerName(VERL, "data.train_batch_size", "rollout.batch_size", "prompts per batch in both"),
    PeerName(VERL, "data.max_prompt_length", "data.max_prompt_len"),
    PeerName(VERL, "data.max_response_length", "data.max_response_len"),
    PeerName(VERL, "actor_rollout_ref.actor.ppo_mini_batch_size", "ppo.mini_batch_size", PER_PROMPT),
    PeerName(VERL, "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu", "train.micro_batch_size"),
    PeerName(VERL, "actor_rollout_ref.actor.ppo_epochs", "ppo.epochs"),
    PeerName(VERL, "actor_rollout_ref.actor.clip_ratio", "ppo.clip_eps"),
    PeerName(VERL, "actor_rollout_ref.actor.clip_ratio_high", "ppo.clip_eps_high"),
    PeerName(VERL, "actor_rollout_ref.actor.kl_loss_coef", "ppo.kl_coef", "with `ppo.kl_in_reward: false`"),
    PeerName(VERL, "actor_rollout_ref.actor.kl_loss_type", "ppo.kl_estimator"),
    PeerName(VERL, "actor_rollout_ref.actor.entropy_coeff", "ppo.entropy_coef"),
    PeerName(VERL, "algorithm.kl_ctrl.kl_coef", "ppo.kl_coef", "with `ppo.kl_in_reward: true`"),
    PeerName(VERL, "algorithm.kl_ctrl.target_kl", "ppo.kl_target"),
    PeerName(VERL, "algorithm.adv_estimator", "ppo.advantage"),
    PeerName(VERL, "algorithm.norm_adv_by_std_in_grpo", "ppo.scale_rewards", "false: `none`; true: `group`"),
    PeerName(VERL, "algorithm.gamma", "ppo.gamma"),
    PeerName(VERL, "algorithm.lam", "ppo.lam"),
    PeerName(VERL, "algorithm.filter_groups.enable", "ppo.dynamic_sampling", "on the summed task reward"),
    PeerName(VERL, "algorithm.filter_groups.max_num_gen_batches", "ppo.refill_rounds",
             "theirs counts the first batch and raises when reached (<= 0: no bound); ours counts the batches after "
             "it, and a step still short trains on equal-reward groups (`groups_short`)"),
    PeerName(VERL, "actor_rollout_ref.rollout.temperature", "rollout.temperature"),
    PeerName(VERL, "actor_rollout_ref.rollout.top_k", "rollout.top_k", "their -1 (all tokens) is None here"),
    PeerName(VERL, "actor_rollout_ref.rollout.tensor_model_parallel_size", "rollout.engine.tensor_parallel_size"),
    PeerName(VERL, "actor_rollout_ref.rollout.gpu_memory_utilization", "rollout.engine.gpu_memory_utilization"),
    PeerName(VERL, "actor_rollout_ref.model.enable_gradient_checkpointing", "train.gradient_checkpointing"),
    PeerName(VERL, "actor_rollout_ref.model.lora_rank", "model.lora.rank"),
    PeerName(VERL, "actor_rollout_ref.model.use_remove_padding", "train.packing", "off by default here"),
    PeerName(VERL, "trainer.total_training_steps", "ppo.steps"),
    PeerName(VERL, "trainer.save_freq", "train.checkpoint_every"),
    PeerName(VERL, "trainer.test_freq", "train.eval_every"),
    PeerName(VERL, "trainer.n_gpus_per_node", "cluster.pools.<name>.gpus_per_node"),
    PeerName(VERL, "trainer.nnodes", "cluster.pools.<name>.nodes"),
]


def _leaves(key: str, value: Any) -> list[str]:
    """The dotted paths of every leaf under `key` (a YAML mapping's nested keys)."""
    if not isinstance(value, dict) or not value:
        return [key]
    return [leaf for k, v in value.items() for leaf in _leaves(f"{key}.{k}", v)]


def matches(typed: str) -> list[PeerName]:
    """The rows for a key a user typed: their name is its tail or it is their name's tail (`ppo.beta` is TRL's
    `beta`; `rollout.n` is veRL's `actor_rollout_ref.rollout.n`); those landing in the typed key's own section
    first, if any."""
    t = typed.split(".")
    found = [row for row in NAMES if _tail(row.theirs.split("."), t) or _tail(t, row.theirs.split("."))]
    same = [row for row in found if row.ours and row.ours.split(".")[0] == t[0]]
    return same or found


def _tail(longer: list[str], shorter: list[str]) -> bool:
    return len(shorter) <= len(longer) and longer[len(longer) - len(shorter):] == shorter


def hint(key: str, value: Any = None) -> Optional[str]:
    """What the unknown key `key` (with `value`, a mapping's leaves read too) is called here, or None."""
    said = []
    for leaf in _leaves(key, value):
        for row in matches(leaf):
            ours = f"`{row.ours}`" if row.ours else "not a setting"
            said.append(f"{row.peer}'s `{row.theirs}` is {ours} here" + (f" ({row.note})" if row.note else ""))
    return "; ".join(dict.fromkeys(said)) or None


REGENERATE = "python -m rlhf_ray.peer_names"


def markdown() -> str:
    lines = ["# Peer names", "", f"Generated from `rlhf_ray/peer_names.py` by `{REGENERATE}`; do not edit by hand.",
             "", "A TRL, OpenRLHF or veRL name given as a key gets an error that names the key here:", "",
             "```text", "rlhf-ray validate configs/tiny/ppo.yaml ppo.beta=0.1",
             "error: invalid config: command line: ppo.beta: unknown key; TRL's `beta` is `ppo.kl_coef` here (GRPO's "
             "KL weight; for DPO's beta, `dpo.beta`)", "```", "",
             "A name is matched by its tail: `rollout.n` is veRL's `actor_rollout_ref.rollout.n`. Spelling hints "
             "(`did you mean ...?`) are given only where no peer's name matches.", "",
             "| peer | their name | rlhf-ray key | note |", "|---|---|---|---|"]
    lines += [f"| {r.peer} | `{r.theirs}` | {f'`{r.ours}`' if r.ours else '-'} | {r.note} |" for r in NAMES]
    return "\n".join(lines) + "\n"


def main() -> int:
    out = Path(__file__).resolve().parents[1] / "docs" / "peer_names.md"
    out.write_text(markdown())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
