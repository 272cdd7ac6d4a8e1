"""The limits rlhf-ray is measured against: a vLLM engine called directly and a plain torch forward/backward/AdamW
loop, each in a plain process of its own (no Ray), and a plain in-memory copy (in the bench's own process).

    python -m rlhf_ray.bench.raw SPEC.json

SPEC: {"what": "generate" | "train", "threads": N, ...the fields each builder reads}. The process builds its engine
once, then times one call for each line it reads on stdin and answers each with a `RESULT` line ({"seconds",
"tokens"}) on stdout. The bench alternates these calls with its actors' calls, so that a slow minute on a shared
machine lands on both sides of a ratio.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Callable

import torch

RESULT = "@raw-result "


def timed(fn, repeats: int) -> tuple[list[float], object]:
    """Seconds of each of `repeats` calls, after one untimed warm-up call (compilation, caches, allocator), and
    the last call's result."""
    out = fn()
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        seconds.append(time.perf_counter() - t0)
    return seconds, out


def generate(spec: dict) -> Callable[[], dict]:
    """vllm.LLM.generate on the prompts, with the sampling a generator actor uses (logprobs of the sampled tokens,
    EOS ignored so every response has `response_len` tokens)."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if spec["dtype"] == "bfloat16":
        torch.cpu._init_amx()
    from vllm import LLM, SamplingParams

    llm = LLM(model=spec["model"], dtype=spec["dtype"], seed=spec["seed"], max_model_len=spec["max_model_len"],
              enforce_eager=True, kv_cache_memory_bytes=spec["kv_cache_mb"] << 20, trust_remote_code=False)
    params = SamplingParams(n=spec["group"], max_tokens=spec["response_len"], temperature=1.0, ignore_eos=True,
                            logprobs=0)
    prompts = [{"prompt_token_ids": ids} for ids in spec["prompt_ids"]]

    def call() -> dict:
        outs = llm.generate(prompts, params, use_tqdm=False)
        return {"tokens": sum(len(c.token_ids) for o in outs for c in o.outputs)}

    return call


def train(spec: dict) -> Callable[[], dict]:
    """One optimizer step = forward/backward over every micro-batch, gradient clipping, AdamW: a plain loop on the
    HF model, with the learner's loss (`forward.sft_nll`, plain torch) and optimizer settings."""
    from rlhf_ray import models
    from rlhf_ray.algos import forward
    from rlhf_ray.engines import ds_engine

    model = models.load_policy(spec["model"], spec["dtype"])
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=spec["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    batch = {k: torch.tensor(v) for k, v in spec["batch"].items()}
    micro = ds_engine.split_micro_batches(batch, spec["micro_batch"])
    n = sum(forward.sft_count(mb) for mb in micro)

    def step() -> dict:
        for mb in micro:
            loss, _ = forward.sft_nll(model, mb, n)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        return {"tokens": int(batch["attention_mask"].sum())}

    return step


def copy(n_bytes: int) -> Callable[[], torch.Tensor]:
    """memcpy of `n_bytes` bytes within this process (what moving the weights costs at the very least)."""
    src = torch.randint(0, 255, (n_bytes,), dtype=torch.uint8)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def main(argv: list[str]) -> int:
    spec = json.loads(open(argv[0]).read())
    torch.set_num_threads(spec["threads"])
    call = {"generate": generate, "train": train}[spec["what"]](spec)
    for _ in sys.stdin:  # one timed call per line; EOF ends the process
        t0 = time.perf_counter()
        out = call()
        print(RESULT + json.dumps({"seconds": time.perf_counter() - t0, **out}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
