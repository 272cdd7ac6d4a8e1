"""GPU checks of the learner and weight-sync paths, run by hand on a machine with one NVIDIA GPU (CI has none).

    python tests/gpu/check_gpu.py            # prints one line per check; exit 1 if any fails

Needs torch with CUDA, transformers, deepspeed, pyyaml, pyarrow (no Ray, no vLLM: those paths are checked on CPU
in tests/cpu). What it checks:
  1. rl_math on CUDA equals rl_math on CPU;
  2. the tiny model's response log-probs on GPU in bf16 against fp32 on CPU (the gap is printed);
  3. a DeepSpeed engine (NCCL process group, world size 1, store bound to 127.0.0.1): ZeRO-2 fp32 one train_step
     equals a plain torch AdamW step on the GPU; ZeRO-3 bf16 steps and exports full weights in buckets;
  4. the NCCL weight-sync group forms and broadcasts (one GPU cannot host a second NCCL rank, so receiving is
     checked on CPU with gloo in tests/cpu);
  5. realistic shapes (Qwen2.5-0.5B's, randomly initialised, bf16, 8 x 512 tokens): a plain torch AdamW step, then
     DeepSpeed ZeRO-2 and ZeRO-3 steps, a LoRA step, gradient checkpointing and token-budget micro-batches, each
     with tokens/s beside plain torch's, peak GPU memory and its first loss beside plain torch's.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from cluster.local import listening_socket  # noqa: E402
from cluster.weight_sync import BroadcastGroup, pack, plan  # noqa: E402
from tests.oracles import make_buckets, verified  # noqa: E402
from rlhf_ray import data, models, rollout  # noqa: E402
from rlhf_ray.algos import forward, rl_math  # noqa: E402
from rlhf_ray.config import TrainConfig  # noqa: E402
from rlhf_ray.engines import ds_engine, scoring  # noqa: E402

# RLHF_RAY_CHECK_ON_CPU=1 dry-runs the same checks on the CPU with gloo (to debug the script without a GPU).
ON_CPU = os.environ.get("RLHF_RAY_CHECK_ON_CPU") == "1"
CUDA = torch.device("cpu") if ON_CPU else torch.device("cuda", 0)
BACKEND = "gloo" if ON_CPU else "nccl"
RESULTS: list[tuple[str, bool, str]] = []

# bf16 log-prob tolerance on the tiny model, from measured gaps (max |Δ log p| per token, same weights):
#   0.0045  two bf16 implementations, the learner's DeepSpeed forward against vLLM (tests/cpu/test_learner_sync.py,
#           which shares this constant; measured 2026-12-06 on CPU)
#   0.0019  bf16 against fp32, this script's check on the CPU dry run (RLHF_RAY_CHECK_ON_CPU=1, same day)
# Tolerance = 4 x the larger: 4 x 0.0045 = 0.018, room for other kernels' rounding (cuBLAS, vLLM's GPU attention),
# well under the 0.05 by which one training step moves these log-probs (test_learner_sync.py), so a stale or wrong
# weight still fails.
BF16_MEASURED_GAP = 0.0045
BF16_TOLERANCE = 4 * BF16_MEASURED_GAP


def check(name):
    def wrap(fn):
        t0 = time.perf_counter()
        try:
            detail = fn() or ""
            RESULTS.append((name, True, detail))
        except Exception:
            RESULTS.append((name, False, traceback.format_exc(limit=6)))
        print(f"[{'ok' if RESULTS[-1][1] else 'FAIL'}] {name} ({time.perf_counter() - t0:.1f} s) {RESULTS[-1][2]}",
              flush=True)
        return fn
    return wrap


def tiny_batch(folder):
    tok = models.load_tokenizer(folder)
    prompts = ["how do I cook rice", "tell me about the sea", "hello", "what is in the garden"]
    responses = ["the cat likes the red book", "a quiet river", "hello there friend", "we find a golden apple"]
    rows = [{"prompt": p, "response": r, "prompt_ids": data.prompt_ids(tok, p), "response_ids": data.response_ids(tok, r),
             "logprobs": [], "finish_reason": "stop", "policy_version": 0, "group": i}
            for i, (p, r) in enumerate(zip(prompts, responses))]
    b = rollout.collate(rollout.to_table(rows), tok.pad_token_id)
    loss_mask = torch.zeros_like(b.attention_mask)
    loss_mask[:, b.prompt_len:] = b.response_mask.long()
    return b, {"input_ids": b.input_ids, "attention_mask": b.attention_mask, "loss_mask": loss_mask}


def main() -> int:
    assert ON_CPU or torch.cuda.is_available(), "no CUDA device"
    print(torch.__version__, "CPU dry run" if ON_CPU else torch.cuda.get_device_name(0), flush=True)
    tiny = str(models.make_tiny_model(Path(tempfile.mkdtemp()) / "tiny"))
    batch, train_batch = tiny_batch(tiny)

    @check("rl_math on CUDA == CPU")
    def _():
        g = torch.Generator().manual_seed(0)
        r, v = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
        m = (torch.rand(8, 16, generator=g) > 0.2).float()
        a_cpu, ret_cpu = rl_math.gae(r, v, m, 0.99, 0.95)
        a_gpu, ret_gpu = rl_math.gae(r.to(CUDA), v.to(CUDA), m.to(CUDA), 0.99, 0.95)
        assert torch.allclose(a_cpu, a_gpu.cpu(), atol=1e-5) and torch.allclose(ret_cpu, ret_gpu.cpu(), atol=1e-5)
        lp, old, adv = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
        l_cpu, _ = rl_math.ppo_policy_loss(lp, old, adv, 0.2, dual_clip=3.0)
        l_gpu, _ = rl_math.ppo_policy_loss(lp.to(CUDA), old.to(CUDA), adv.to(CUDA), 0.2, dual_clip=3.0)
        assert torch.allclose(l_cpu, l_gpu.cpu(), atol=1e-5)
        k3 = rl_math.kl_estimate(lp.to(CUDA), old.to(CUDA), "k3")
        assert torch.allclose(k3.cpu(), rl_math.kl_estimate(lp, old, "k3"), atol=1e-5)

    @check("tiny model log-probs, GPU bf16 vs CPU fp32")
    def _():
        cpu = scoring.response_logprobs(models.load_policy(tiny, "float32").eval(), batch)
        gpu_model = models.load_policy(tiny, "bfloat16").to(CUDA).eval()
        gb = rollout.RolloutBatch(*(t.to(CUDA) for t in (batch.input_ids, batch.attention_mask, batch.response_mask,
                                                         batch.logprobs, batch.policy_version)))
        gap = (scoring.response_logprobs(gpu_model, gb).cpu() - cpu).abs().max().item()
        assert gap < BF16_TOLERANCE, gap
        return f"max |Δ log p| = {gap:.4f}"

    sock = listening_socket("127.0.0.1")
    store = dist.TCPStore("127.0.0.1", sock.getsockname()[1], 1, True, timedelta(seconds=60),
                          master_listen_fd=sock.detach())
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group(BACKEND, store=store, rank=0, world_size=1, device_id=None if ON_CPU else CUDA)
    ds_engine.init_deepspeed_comm(BACKEND)

    @check("DeepSpeed ZeRO-2 fp32 step == plain torch AdamW step (NCCL)")
    def _():
        train = TrainConfig(lr=1e-4, batch_size=4, micro_batch_size=2, zero_stage=2, grad_clip=1.0)
        engine = ds_engine.build_engine(models.load_policy(tiny), ds_engine.ds_config(train, 1), total_steps=4)
        metrics = ds_engine.train_step(engine, ds_engine.split_micro_batches(train_batch, 2), forward.SFT_LOSS)
        ref = models.load_policy(tiny).to(CUDA).train()
        opt = torch.optim.AdamW(ref.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        full = {k: v.to(CUDA) for k, v in train_batch.items()}
        loss, _ = forward.sft_nll(ref, full, forward.sft_count(full))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        opt.step()
        assert abs(metrics["loss"] - loss.item()) <= 1e-4 * abs(loss.item()), (metrics["loss"], loss.item())
        got = dict(ds_engine.named_full_weights(engine))
        worst = max((got[k].float() - v.detach().cpu().float()).abs().max().item() for k, v in ref.named_parameters())
        assert worst < 1e-5, worst
        return f"loss {metrics['loss']:.5f} vs {loss.item():.5f}, max weight gap {worst:.1e}"

    @check("DeepSpeed ZeRO-3 bf16 step and bucketed export (NCCL)")
    def _():
        train = TrainConfig(lr=1e-3, batch_size=4, micro_batch_size=4, zero_stage=3)
        engine = ds_engine.build_engine(models.load_policy(tiny, "bfloat16"),
                                        ds_engine.ds_config(train, 1, "bfloat16"), total_steps=4)
        m1 = ds_engine.train_step(engine, [train_batch], forward.SFT_LOSS)
        m2 = ds_engine.train_step(engine, [train_batch], forward.SFT_LOSS)
        buckets = list(pack(ds_engine.named_full_weights(engine, copy=False),
                            plan(ds_engine.weight_specs(engine), 64 << 10), 1))  # gathered straight from the GPU
        names = [n for n, _ in verified(buckets, 1)]
        expected = {n for n, _ in models.load_policy(tiny).named_parameters()}
        assert expected <= set(names), expected - set(names)
        assert m2["loss"] < m1["loss"], (m1, m2)
        return f"loss {m1['loss']:.4f} -> {m2['loss']:.4f}, {len(buckets)} buckets"

    @check("NCCL weight-sync group forms and broadcasts (world size 1: one GPU cannot host two NCCL ranks)")
    def _():
        wsock = listening_socket("127.0.0.1")
        group = BroadcastGroup("127.0.0.1", wsock.getsockname()[1], 0, 1, BACKEND, 60.0, wsock)
        buckets = make_buckets(models.load_policy(tiny).named_parameters(), 5, 1 << 20)
        group.send(buckets)  # the source side of a real sync; with one rank the collective is a no-op copy
        assert len(verified(buckets, 5)) == sum(len(b.names) for b in buckets)

    realistic_steps()
    dist.destroy_process_group()
    failed = [name for name, ok, _ in RESULTS if not ok]
    print(f"{len(RESULTS) - len(failed)} passed, {len(failed)} failed", flush=True)
    return 1 if failed else 0


# ---------------------------------------------------------------- 5. realistic shapes: learner steps and memory

# Qwen2.5-0.5B's shapes, randomly initialised (no download); the CPU dry run shrinks them to seconds.
QWEN_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                num_key_value_heads=2, vocab_size=151936, max_position_embeddings=4096, tie_word_embeddings=True)
SMALL = dict(QWEN_05B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, vocab_size=1024)
B, T = (8, 512) if not ON_CPU else (4, 32)


def realistic_steps() -> None:
    """A plain torch bf16 AdamW step, then DeepSpeed steps (ZeRO-2, ZeRO-3, ZeRO-2 with LoRA, with gradient
    checkpointing, with a token budget of half a micro-batch) on the same random-init model and batch: tokens/s
    (median of 3 steps after a warm-up), peak GPU memory, and the first loss beside plain torch's."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from rlhf_ray.config import LoraConfig

    config = Qwen2Config(**(SMALL if ON_CPU else QWEN_05B))
    torch.manual_seed(0)
    init = AutoModelForCausalLM.from_config(config).state_dict()
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(0, config.vocab_size, (B, T), generator=g),
             "attention_mask": torch.ones(B, T, dtype=torch.long), "loss_mask": torch.ones(B, T, dtype=torch.long)}
    tokens = int(batch["loss_mask"].sum())

    def fresh():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.load_state_dict(init)
        return model

    def measure(step) -> tuple[float, float, float]:
        if not ON_CPU:
            torch.cuda.reset_peak_memory_stats()
        seconds, first = [], None
        for _ in range(4):
            t0 = time.perf_counter()
            loss = step()
            if not ON_CPU:
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - t0)
            first = loss if first is None else first
        peak = torch.cuda.max_memory_allocated() / 2**30 if not ON_CPU else 0.0
        return tokens / sorted(seconds[1:])[1], peak, first

    plain = {}

    @check(f"plain torch bf16 AdamW step, Qwen2.5-0.5B shapes ({B} x {T} tokens)")
    def _():
        model = fresh().to(CUDA).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        full = {k: v.to(CUDA) for k, v in batch.items()}

        def step():
            loss, _ = forward.sft_nll(model, full, forward.sft_count(full))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.item()

        plain["tps"], peak, plain["loss"] = measure(step)
        del model, opt
        return f"{plain['tps']:.0f} tokens/s, peak {peak:.1f} GiB, first loss {plain['loss']:.4f}"

    runs = {"DeepSpeed ZeRO-2 bf16": ({"zero_stage": 2}, None),
            "DeepSpeed ZeRO-3 bf16": ({"zero_stage": 3}, None),
            "ZeRO-2 + LoRA r=16, all linear": ({"zero_stage": 2}, LoraConfig(rank=16, alpha=32)),
            "ZeRO-2 + gradient checkpointing": ({"zero_stage": 2, "gradient_checkpointing": True}, None),
            "ZeRO-2 + token budget (half a micro-batch)": ({"zero_stage": 2, "micro_batch_tokens": B * T // 4}, None)}
    for name, (fields, lora_cfg) in runs.items():
        @check(f"{name} step beside plain torch")
        def _(fields=fields, lora_cfg=lora_cfg):
            from rlhf_ray import lora

            train = TrainConfig(lr=1e-5, batch_size=B, micro_batch_size=B // 2, **fields)
            model = fresh() if lora_cfg is None else lora.wrap(fresh(), lora_cfg, "policy")
            engine = ds_engine.build_engine(ds_engine.prepare_model(model, train),
                                            ds_engine.ds_config(train, 1, "bfloat16"), total_steps=8)
            tps, peak, first = measure(lambda: ds_engine.train_step(engine, ds_engine.micro_batches(batch, train),
                                                                    forward.SFT_LOSS)["loss"])
            del engine
            assert abs(first - plain["loss"]) <= 1e-2 * abs(plain["loss"]), (first, plain["loss"])  # bf16 rounding
            return (f"{tps:.0f} tokens/s ({tps / plain['tps']:.2f} of plain torch), peak {peak:.1f} GiB, first loss "
                    f"{first:.4f}")


if __name__ == "__main__":
    sys.exit(main())
