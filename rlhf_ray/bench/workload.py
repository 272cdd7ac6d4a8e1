"""What the benchmark runs: one workload (model, prompts, group, response length, batch) shared by every section
and by the peer, so each pair of numbers is the same work."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf_ray import data, models
from rlhf_ray.bench.repeat import Until

PROMPTS = Path(__file__).resolve().parents[2] / "configs" / "data" / "warm" / "warm_prompts_train.jsonl"
REWARD_FN = f"{Path(__file__).resolve().parent / 'rewards.py'}:letter_frac"  # both sides load it by file path


@dataclass(frozen=True)
class Workload:
    model: str
    """A built-in model name (rlhf_ray.models) or a local HF folder."""
    prompts: int
    """Prompts per batch (a PPO step's rollout.batch_size)."""
    group: int
    """Completions per prompt (GRPO's group; vLLM's n)."""
    response_len: int
    """Tokens per completion: EOS is ignored, so every completion is exactly this long."""
    micro_batch: int
    """Sequences per forward/backward; one optimizer step takes the whole batch (gradient accumulation)."""
    bucket_bytes: tuple[int, ...]
    """Weight-sync bucket sizes to measure."""
    dtype: str = "float32"
    """Engine, learner and peer dtype. bf16 only where the CPU has bf16 units: on this project's AVX2-only CPUs a
    bf16 matmul is 100-300x slower than fp32 (measured), so a bf16 SmolLM2 step does not finish in 20 minutes."""
    repeats: int = 3
    """At most this many timed rounds of a measurement (a round: one timed call of each side), after one untimed
    warm-up call a side; medians are reported, with their spread."""
    min_repeats: int = 3
    """At least this many rounds (fewer where `repeats` is lower), then more only until every side's median moves
    by at most `tol` with a round (rlhf_ray.bench.repeat)."""
    tol: float = 0.05
    measure_s: float = 300.0
    """A measurement's share of the bench's time: no new round starts after this many seconds of rounds."""
    steps: int = 3
    """Timed PPO / GRPO steps, after one untimed warm-up step; the mean is reported."""
    threads: int = 2
    """Torch/OpenMP threads of every engine (the cores of this machine)."""
    lr: float = 1e-5
    beta: float = 0.0
    """KL coefficient β of the GRPO comparison (0: neither side needs the reference for the loss)."""
    ppo_beta: float = 0.05
    """β of the PPO-with-critic comparison (both sides score the reference)."""
    max_prompt_len: int = 96
    seed: int = 0

    @property
    def until(self) -> Until:
        return Until(min(self.min_repeats, self.repeats), self.repeats, self.tol, self.measure_s)

    @property
    def samples(self) -> int:
        return self.prompts * self.group

    @property
    def max_seq_len(self) -> int:
        return self.max_prompt_len + self.response_len


MB = 1 << 20
WORKLOADS = {
    # The scale: 32 completions x 64 tokens per step on SmolLM2-135M.
    # Two timed steps: TRL's PPO step alone takes minutes here. 3-7 rounds of calls, 150 s of rounds at most per
    # measurement: the whole bench within 40 minutes on 2 cores (docs/benchmarks.md has the arithmetic).
    "smollm2": Workload("smollm2-135m-instruct", prompts=8, group=4, response_len=64, micro_batch=8,
                        bucket_bytes=(4 * MB, 16 * MB, 64 * MB, 256 * MB), steps=2, repeats=7, measure_s=150),
    "tiny": Workload("tiny", prompts=8, group=4, response_len=64, micro_batch=16,
                     bucket_bytes=(64 << 10, 256 << 10, 1 * MB)),
    # The larger sync: Qwen2.5-0.5B's shape (494 M parameters, 1.98 GB in fp32), random weights; meant for
    # `--only sync` (its samples are noise).
    "random-0.5b": Workload("random-0.5b", prompts=4, group=2, response_len=16, micro_batch=4,
                            bucket_bytes=(64 * MB, 256 * MB), steps=1, repeats=3),
}


def quick(w: Workload) -> Workload:
    """Tiny sizes, one timed repeat: proves every section runs (CI), measures nothing worth quoting."""
    return dataclasses.replace(w, prompts=4, group=2, response_len=16, micro_batch=4, repeats=1, steps=1)


def prompt_rows(n: int) -> list[dict]:
    """The first n prompts of the project's warm-reply prompt set (no hub)."""
    rows = [json.loads(line) for line in PROMPTS.read_text().splitlines() if line.strip()]
    if n > len(rows):
        raise ValueError(f"the benchmark needs {n} prompts; {PROMPTS} has {len(rows)}")
    return rows[:n]


def encode_prompts(w: Workload, rows: list[dict]) -> list[list[int]]:
    """Chat-templated prompt ids, exactly as the PPO driver encodes them."""
    tok = models.load_tokenizer(models.resolve_model(w.model))
    limits = data.Limits(w.max_prompt_len, w.response_len, "truncate")
    return [data.encode_prompt(tok, r, limits) for r in rows]


def prompt_texts(w: Workload, ids: list[list[int]]) -> list[str]:
    """The same prompts as text with the template applied (what the peer takes: it adds no template again)."""
    tok = models.load_tokenizer(models.resolve_model(w.model))
    return [tok.decode(x, skip_special_tokens=False) for x in ids]


def varied_lengths(w: Workload) -> list[int]:
    """The varied workload's completion lengths, one per completion (seeded): log-normal with a median of a third
    of response_len and σ 0.8, the shape of chat replies (mostly short, a long tail), capped at response_len (the
    replies cut off there, ~9%) and at least 1 token."""
    g = torch.Generator().manual_seed(w.seed + 1)
    x = torch.exp(torch.randn(w.samples, generator=g) * 0.8) * (w.response_len / 3)
    return [int(n) for n in x.round().clamp(1, w.response_len)]


def train_batch(w: Workload, prompt_ids: list[list[int]], lengths: list[int] | None = None
                ) -> dict[str, torch.Tensor]:
    """One step's batch as the learner sees it: each of prompts x group rows is a prompt and random tokens (fixed
    seed), `response_len` of them or `lengths[i]` (the varied workload), right-padded; the loss reads the response
    tokens (loss_mask)."""
    g = torch.Generator().manual_seed(w.seed)
    vocab = len(models.load_tokenizer(models.resolve_model(w.model)))
    rows = [prompt_ids[i // w.group] for i in range(w.samples)]
    lengths = lengths or [w.response_len] * w.samples
    T = max(len(p) + n for p, n in zip(rows, lengths))
    batch = {k: torch.zeros(w.samples, T, dtype=torch.long) for k in ("input_ids", "attention_mask", "loss_mask")}
    for i, (p, r) in enumerate(zip(rows, lengths)):
        n = len(p) + r
        batch["input_ids"][i, :n] = torch.cat([torch.tensor(p), torch.randint(0, vocab, (r,), generator=g)])
        batch["attention_mask"][i, :n] = 1
        batch["loss_mask"][i, len(p) : n] = 1
    return batch
