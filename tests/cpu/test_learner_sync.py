"""Learner -> generator weight sync, end to end: a ZeRO-3 learner group trains a step, pushes its weights, and the
vLLM generator's log-probs of fixed prompt/response pairs then match the learner's (and differ from before).

Tolerances (max |Δ log p| per token between the learner's DeepSpeed forward and the vLLM engine, same weights):
fp32 1e-4 (measured ~1e-6); bf16 4 x the 0.0045 measured here on the tiny model (the two sides' kernels round
differently in bf16), the constant the GPU check uses too (tests/gpu/check_gpu.py: BF16_TOLERANCE, its arithmetic).
"""

import importlib.util
from pathlib import Path

import pytest
import ray
import torch

from actors.generator import Generator
from actors.learner import Learner
from cluster.actor_group import ActorGroup
from rlhf_ray import data, models, rollout
from rlhf_ray.algos import forward
from rlhf_ray.config import TrainConfig


def _gpu_check_script():
    """tests/gpu/check_gpu.py as a module (its checks run only under `__main__`)."""
    spec = importlib.util.spec_from_file_location("check_gpu", Path(__file__).parents[1] / "gpu" / "check_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOLERANCE = {"float32": 1e-4, "bfloat16": _gpu_check_script().BF16_TOLERANCE}
RESPONSES = ["the cat likes the red book", "a quiet river", "hello there friend", "we find a golden apple"]
PROMPTS = ["how do I cook rice", "tell me about the sea", "hello", "what is in the garden"]


@pytest.fixture(scope="module")
def pairs(tiny):
    """Fixed prompt/response pairs as a padded batch: what both sides score, and what the learner trains on."""
    tok = models.load_tokenizer(tiny)
    rows = [{"prompt": p, "response": r, "prompt_ids": data.prompt_ids(tok, p),
             "response_ids": data.response_ids(tok, r), "logprobs": [], "finish_reason": "stop",
             "policy_version": 0, "group": i} for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES))]
    batch = rollout.collate(rollout.to_table(rows), tok.pad_token_id)
    P = batch.prompt_len
    loss_mask = torch.zeros_like(batch.attention_mask)
    loss_mask[:, P:] = batch.response_mask.long()
    return {"rows": rows, "batch": batch,
            "train": {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "loss_mask": loss_mask}}


def _gap(generator_lps, learner_lps, mask):
    gen = torch.zeros_like(learner_lps)
    for i, row in enumerate(generator_lps):
        gen[i, : len(row)] = torch.tensor(row)
    return ((gen - learner_lps) * mask).abs().max().item()


def _learner_logprobs(group, pairs):
    b = pairs["batch"]
    out = group.call(lambda a, r: a.logprobs.remote({"input_ids": b.input_ids, "attention_mask": b.attention_mask},
                                                    b.response_mask.shape[1]), 120, "logprobs")
    return out[0] * b.response_mask


def _score(generator, pairs):
    rows = pairs["rows"]
    return ray.get(generator.score.remote([r["prompt_ids"] for r in rows], [r["response_ids"] for r in rows]))


def _train(group, pairs):
    shards = group.shard(pairs["train"])
    return group.call(lambda a, r: a.train_step.remote(shards[r], forward.SFT_LOSS), 300, "train")[0]


def _setup(tiny, dtype, ranks, zero):
    train = TrainConfig(lr=1e-2, batch_size=4, micro_batch_size=4 // ranks // 2 or 1, zero_stage=zero)
    group = ActorGroup(Learner, f"policy-learner-{dtype}", args=(tiny, "policy", train, dtype),
                       kwargs={"total_steps": 10}, num_ranks=ranks, num_cpus=0.25)
    generator = ray.remote(Generator).options(name=f"generator-{dtype}", num_cpus=0.25).remote(
        tiny, dtype, kv_cache_mb=64, max_model_len=256)
    return group, generator


def test_fp32_object_store_then_broadcast(ray_session, tiny, pairs):
    group, generator = _setup(tiny, "float32", ranks=2, zero=3)
    mask = pairs["batch"].response_mask
    before = _score(generator, pairs)
    assert _gap(before, _learner_logprobs(group, pairs), mask) < TOLERANCE["float32"]  # same starting weights

    # Version 1 through the object store.
    metrics = _train(group, pairs)
    assert metrics["loss"] > 0
    refs = group.call(lambda a, r: a.export_buckets.remote(1, 64 << 10), 120, "export")[0]
    assert len(refs) > 3
    info = ray.get(generator.update_weights.remote(1, refs), timeout=120)
    assert info["version"] == 1 and info["bytes"] > 0
    after = _score(generator, pairs)
    learner = _learner_logprobs(group, pairs)
    print(f"fp32 learner-vs-generator max |Δ log p| = {_gap(after, learner, mask):.2e}")
    assert _gap(after, learner, mask) < TOLERANCE["float32"]
    assert _gap(before, learner, mask) > 0.05  # the step moved the policy, and the sync moved the engine

    # Version 2 through the broadcast group (gloo here; NCCL on GPU).
    _train(group, pairs)
    host, port = group.call(lambda a, r: a.open_weight_group.remote(), 60, "open weight group")[0]
    group.get(group.map(lambda a, r: a.join_weight_group.remote(host, port, 2, "gloo", 60.0))
              + [generator.join_weight_group.remote(host, port, 1, 2, "gloo", 60.0)], 120, "join weight group")
    plan = group.call(lambda a, r: a.weight_plan.remote(64 << 10), 120, "weight plan")[0]
    sent = group.map(lambda a, r: a.broadcast_weights.remote(2, 64 << 10))  # ZeRO-3: every rank gathers
    out = ray.get(sent + [generator.receive_weights.remote(plan)], timeout=120)
    assert out[-1]["version"] == 2 and out[0] == out[-1]["bytes"] > 0 and out[1] == 0
    assert _gap(_score(generator, pairs), _learner_logprobs(group, pairs), mask) < TOLERANCE["float32"]
    group.kill()
    ray.kill(generator)


def test_bf16_sync(ray_session, tiny, pairs):
    group, generator = _setup(tiny, "bfloat16", ranks=1, zero=0)
    mask = pairs["batch"].response_mask
    _train(group, pairs)
    refs = group.call(lambda a, r: a.export_buckets.remote(1, 1 << 20), 120, "export")[0]
    ray.get(generator.update_weights.remote(1, refs), timeout=120)
    gap = _gap(_score(generator, pairs), _learner_logprobs(group, pairs), mask)
    print(f"bf16 learner-vs-generator max |Δ log p| = {gap:.4f}")
    assert gap < TOLERANCE["bfloat16"]
    group.kill()
    ray.kill(generator)
