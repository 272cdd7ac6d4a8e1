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
from rlhf_ray.stages import push


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
    generators = ActorGroup(Generator, f"generator-{dtype}", args=(tiny, dtype),
                            kwargs={"kv_cache_mb": 64, "max_model_len": 256}, num_ranks=1, num_cpus=0.25,
                            distributed=False)
    return group, generators


def _push(group, generators, transport, version, tiny, dtype) -> push.WeightPush:
    """The run's push owner (stages/push.py) on these actors, probe included, at `version`."""
    probe = push.Probe.make(models.load_tokenizer(tiny), data.prompt_ids(models.load_tokenizer(tiny), PROMPTS[0]),
                            dtype, 16)
    owner = push.WeightPush(transport, "gloo", group, generators, 1, 120.0, version, probe)
    owner.open([0])
    return owner


def test_fp32_object_store_then_broadcast(ray_session, tiny, pairs):
    group, generators = _setup(tiny, "float32", ranks=2, zero=3)
    generator = generators.actors[0]
    mask = pairs["batch"].response_mask
    before = _score(generator, pairs)
    assert _gap(before, _learner_logprobs(group, pairs), mask) < TOLERANCE["float32"]  # same starting weights

    # Version 1 through the object store.
    metrics = _train(group, pairs)
    assert metrics["loss"] > 0
    owner = _push(group, generators, "object_store", 0, tiny, "float32")
    (info,) = owner(1)
    assert info["version"] == 1 and info["bytes"] > 0 and owner.gap() < 1e-4  # the probe ran, and passed
    after = _score(generator, pairs)
    learner = _learner_logprobs(group, pairs)
    print(f"fp32 learner-vs-generator max |Δ log p| = {_gap(after, learner, mask):.2e}, probe {owner.gap():.2e}")
    assert _gap(after, learner, mask) < TOLERANCE["float32"]
    assert _gap(before, learner, mask) > 0.05  # the step moved the policy, and the sync moved the engine

    # Version 2 through the broadcast group (gloo here; NCCL on GPU): ZeRO-3, so every rank gathers.
    _train(group, pairs)
    owner = _push(group, generators, "broadcast", 1, tiny, "float32")
    (info,) = owner(2)
    assert info["version"] == 2 and info["bytes"] > 0 and owner.gap() < 1e-4
    assert _gap(_score(generator, pairs), _learner_logprobs(group, pairs), mask) < TOLERANCE["float32"]
    group.kill()
    generators.kill()


def test_bf16_sync(ray_session, tiny, pairs):
    group, generators = _setup(tiny, "bfloat16", ranks=1, zero=0)
    mask = pairs["batch"].response_mask
    _train(group, pairs)
    owner = _push(group, generators, "object_store", 0, tiny, "bfloat16")
    owner(1)
    gap = _gap(_score(generators.actors[0], pairs), _learner_logprobs(group, pairs), mask)
    print(f"bf16 learner-vs-generator max |Δ log p| = {gap:.4f}, probe mean gap {owner.gap():.4f}")
    assert gap < TOLERANCE["bfloat16"] and owner.gap() < push.PROBE_TOLERANCE["bfloat16"]
    group.kill()
    generators.kill()
