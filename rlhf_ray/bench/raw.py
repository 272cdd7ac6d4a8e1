"""The limits rlhf-ray is measured against, each in a plain process of its own (no Ray): a vLLM engine called
directly, a plain torch forward/backward/AdamW loop, and a plain in-memory copy.

    python -m rlhf_ray.bench.raw SPEC.json OUT.json

SPEC: {"what": "generate" | "train" | "copy", ...the fields each function reads}. The bench runs this with the
same OMP thread count its actors get, before Ray starts, so nothing else competes for the cores.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import torch


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


def generate(spec: dict) -> dict:
    """vllm.LLM.generate on the prompts, with the sampling a generator actor uses (logprobs of the sampled tokens,
    EOS ignored so every response has `response_len` tokens)."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if spec["dtype"] == "bfloat16":
        torch.cpu._init_amx()
    from vllm import LLM, SamplingParams

    llm = LLM(model=spec["model"], dtype=spec["dtype"], seed=spec["seed"], max_model_len=spec["max_model_len"],
              enforce_eager=True, kv_cache_memory_bytes=spec["kv_cache_mb"] << 20)
    params = SamplingParams(n=spec["group"], max_tokens=spec["response_len"], temperature=1.0, ignore_eos=True,
                            logprobs=0)
    prompts = [{"prompt_token_ids": ids} for ids in spec["prompt_ids"]]
    seconds, outs = timed(lambda: llm.generate(prompts, params, use_tqdm=False), spec["repeats"])
    return {"seconds": seconds, "tokens": sum(len(c.token_ids) for o in outs for c in o.outputs)}


def train(spec: dict) -> dict:
    """One optimizer step = forward/backward over every micro-batch, gradient clipping, AdamW: a plain loop on the
    HF model, with the learner's loss (`ds_engine.sft_nll`, plain torch) and optimizer settings."""
    from rlhf_ray import ds_engine, models

    model = models.load_policy(spec["model"], spec["dtype"])
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=spec["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    batch = {k: torch.tensor(v) for k, v in spec["batch"].items()}
    micro = ds_engine.split_micro_batches(batch, spec["micro_batch"])
    n = sum(ds_engine.sft_count(mb) for mb in micro)

    def step() -> None:
        for mb in micro:
            loss, _ = ds_engine.sft_nll(model, mb, n)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)

    return {"seconds": timed(step, spec["repeats"])[0], "tokens": int(batch["attention_mask"].sum())}


def copy(spec: dict) -> dict:
    """memcpy of `bytes` bytes within this process (what moving the weights costs at the very least)."""
    src = torch.randint(0, 255, (spec["bytes"],), dtype=torch.uint8)
    dst = torch.empty_like(src)
    return {"seconds": timed(lambda: dst.copy_(src), spec["repeats"])[0], "bytes": spec["bytes"]}


def main(argv: list[str]) -> int:
    spec = json.loads(open(argv[0]).read())
    torch.set_num_threads(spec["threads"])
    out = {"generate": generate, "train": train, "copy": copy}[spec["what"]](spec)
    out["median_s"] = statistics.median(out["seconds"])
    with open(argv[1], "w") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
