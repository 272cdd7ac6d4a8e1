"""Learner groups on a local Ray: one 2-rank DeepSpeed step (ZeRO-2 and ZeRO-3) equals one plain-torch step.

The batch (8 sequences of varied lengths) is split into 2 ranks x 2 micro-batches of 2 (and, for ZeRO-0 on one
rank, into 4 micro-batches of 2). The reference is a single process: same weights (the same folder), torch AdamW
with the same hyperparameters, the full-batch SFT loss, the same gradient clipping. Tolerances, fp32:
  loss, gradient norm   rel 1e-5 (only the summation order differs)
  weights               atol 1e-6 = 1% of one step at LR 1e-4. Adam's first step is lr·g/(|g|+eps), so weights
                        whose gradient is near eps = 1e-8 turn float rounding of g into ~1e-3·lr: the tolerance
                        must scale with the LR, and the loss and gradient-norm checks carry the exactness.
Clipping is active (grad norm ≈ 1.8 > clip 1), so a gradient off by the rank count would be hidden from the weights
but not from the gradient norm. The PPO policy loss, at a sampling temperature of 0.7 and in each loss aggregation,
is checked the same way (loss, metrics, gradient norm).
"""

import ipaddress
import math
import os
import sys
import time
from types import SimpleNamespace

import psutil
import pytest
import ray
import torch
from transformers import AutoModelForCausalLM

from actors.learner import Learner
from cluster import quiet
from cluster.actor_group import ActorGroup, GroupError, shard
from tests.oracles import verified
from rlhf_ray import errors, lora, models
from rlhf_ray.algos import forward, ppo_losses, rl_math
from rlhf_ray.config import LoraConfig, TrainConfig
from rlhf_ray.engines import safe_checkpoint

LR, WD, CLIP = 1e-4, 0.01, 1.0
B, MICRO = 8, 2
TIMEOUT_S = 300


def train_cfg(stage: int, **memory) -> TrainConfig:
    """`memory`: the learner-memory settings (gradient checkpointing, offload, token-budget micro-batches), each of
    which must leave the step unchanged."""
    return TrainConfig(lr=LR, weight_decay=WD, grad_clip=CLIP, batch_size=B, micro_batch_size=MICRO, zero_stage=stage,
                       **memory)


@pytest.fixture(scope="module")
def batch(tiny):
    """8 right-padded sequences of 5..19 tokens; the first 2..4 tokens are the prompt (not trained on)."""
    g = torch.Generator().manual_seed(0)
    vocab = AutoModelForCausalLM.from_pretrained(tiny).config.vocab_size
    lengths, prompts, T = [5, 19, 9, 14, 7, 16, 11, 12], [2, 3, 4, 2, 3, 4, 2, 3], 19
    ids = torch.randint(3, vocab, (B, T), generator=g)
    pos = torch.arange(T)
    attention = (pos < torch.tensor(lengths)[:, None]).long()
    loss_mask = attention * (pos >= torch.tensor(prompts)[:, None]).long()
    return {"input_ids": ids * attention, "attention_mask": attention, "loss_mask": loss_mask}


@pytest.fixture(scope="module")
def reference(tiny, batch):
    """One plain-torch step on the full batch: loss, gradient norm (before clipping), the model after."""
    model = models.load_policy(tiny, "float32")
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WD)
    loss, _ = forward.sft_nll(model, batch, forward.sft_count(batch))
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
    opt.step()
    return {"loss": loss.item(), "grad_norm": grad_norm.item(), "model": model.eval(),
            "weights": {k: v.detach().clone() for k, v in model.state_dict().items()}}


# The memory settings: checkpointing with one-row micro-batches (a 19-token budget over 19-token rows: 4 micro-batches
# per rank where DeepSpeed was configured for 2), and ZeRO-3 with optimizer and parameters offloaded to CPU memory.
# Packed (padding-free) with a 46-real-token budget: rank 0's rows (5 + 19 + 9 + 14 tokens) make 2 micro-batches,
# rank 1's (7 + 16 + 11 + 12 = 46) one, so the ranks agree on 2 and rank 1 cuts its one in two (ZeRO-3's forwards
# are collective): the same step as the padded plain-torch reference.
MEMORY = {"ckpt-tokens": {"gradient_checkpointing": True, "micro_batch_tokens": 19},
          "offload": {"offload_optimizer": True, "offload_params": True},
          "packed": {"packing": True, "micro_batch_tokens": 46}}


@pytest.fixture(scope="module", params=[(2, 2, None), (3, 2, None), (0, 1, None), (2, 2, "ckpt-tokens"),
                                        (3, 2, "offload"), (3, 2, "packed")],
                ids=["zero2", "zero3", "zero0-1rank", "zero2-ckpt-tokens", "zero3-offload", "zero3-packed"])
def stepped(request, ray_session, tiny, batch):
    """A learner group (ZeRO stage, ranks, memory settings) after one train step on `batch`, and the metrics each
    rank returned."""
    stage, ranks, memory = request.param
    train = train_cfg(stage, **MEMORY.get(memory, {}))
    group = ActorGroup(Learner, f"zero{stage}-learner", args=(tiny, "policy", train),
                       kwargs={"dtype": "float32", "seed": 0, "total_steps": 4}, num_ranks=ranks, num_cpus=0.5,
                       setup_timeout_s=TIMEOUT_S)
    shards = group.shard(batch)
    metrics = group.call(lambda a, r: a.train_step.remote(shards[r], forward.SFT_LOSS), TIMEOUT_S, "train")
    yield group, metrics
    group.kill()


def _export(group, bucket_bytes: int, version: int = 1):
    refs = group.call(lambda a, r: a.export_buckets.remote(version, bucket_bytes), TIMEOUT_S, "export")
    assert refs[1:] == [None] * (len(refs) - 1) and len(refs[0]) >= 1
    buckets = ray.get(refs[0])
    return buckets, dict(verified(buckets, version))


def test_step_matches_single_process_torch(stepped, reference):
    group, metrics = stepped
    assert all(m == metrics[0] for m in metrics)  # all-reduced: every rank reports the global batch
    m = metrics[0]
    assert m["loss"] == pytest.approx(reference["loss"], rel=1e-5)
    assert m["grad_norm"] == pytest.approx(reference["grad_norm"], rel=1e-5)
    assert reference["grad_norm"] > CLIP and m["lr"] == pytest.approx(LR)
    # Both ranks hold the same weights (ZeRO-3: their all-gathered views), and they are torch's.
    digests = group.call(lambda a, r: a.state_digest.remote(), TIMEOUT_S, "digest")
    assert len(set(digests)) == 1
    _, weights = _export(group, bucket_bytes=1 << 30)
    assert weights.keys() == reference["weights"].keys()
    for name, w in reference["weights"].items():
        torch.testing.assert_close(weights[name], w, atol=1e-6, rtol=0, msg=name)


def test_export_buckets_cover_every_weight(stepped, reference):
    group, _ = stepped
    buckets, weights = _export(group, bucket_bytes=64 << 10, version=7)
    assert len(buckets) > 3 and all(b.version == 7 and b.total == len(buckets) for b in buckets)
    assert all(b.nbytes <= 64 << 10 or len(b.names) == 1 for b in buckets)
    assert weights.keys() == reference["weights"].keys()  # every HF name, no "module." prefixes
    _, whole = _export(group, bucket_bytes=1 << 30)
    assert all(torch.equal(weights[k], whole[k]) for k in whole)


def test_logprobs_match_torch(stepped, reference, batch):
    group, _ = stepped
    shards = group.shard(batch)
    R = 10
    out = torch.cat(group.call(lambda a, r: a.logprobs.remote(shards[r], R), TIMEOUT_S, "logprobs"))
    with torch.no_grad():
        ref = forward.logprobs(reference["model"], batch["input_ids"], batch["attention_mask"], R)
    assert out.shape == (B, R)
    real = batch["attention_mask"][:, -R:]  # a padding position's output is read by no one (packed: not computed)
    torch.testing.assert_close(out * real, ref * real, atol=1e-5, rtol=1e-5)


def test_save_is_an_hf_folder_with_identical_weights(stepped, tmp_path):
    group, _ = stepped
    paths = group.call(lambda a, r: a.save.remote(str(tmp_path / "out")), TIMEOUT_S, "save")
    assert paths == [str(tmp_path / "out")] + [None] * (len(group) - 1)
    _, weights = _export(group, bucket_bytes=1 << 30)
    loaded = AutoModelForCausalLM.from_pretrained(paths[0]).state_dict()
    assert loaded.keys() == weights.keys()
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)
    assert (tmp_path / "out" / "tokenizer.json").is_file()
    assert (tmp_path / "out" / "deepspeed" / "latest").is_file()


def test_rendezvous_listens_on_loopback_only(stepped):
    group, _ = stepped
    pids = group.call(lambda a, r: a.__ray_call__.remote(lambda self: os.getpid()), TIMEOUT_S, "pids")
    listening = [c.laddr for pid in pids for c in psutil.Process(pid).net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN]
    assert listening  # rank 0's store, gloo's listeners, Ray's own worker servers
    assert [a for a in listening if not _is_loopback(a.ip)] == []


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    return (getattr(addr, "ipv4_mapped", None) or addr).is_loopback  # ::ffff:127.0.0.1 counts


@pytest.mark.parametrize("stepped", [(3, 2, None)], indirect=True, ids=["zero3"])
def test_checkpoint_resumes_bit_identically(stepped, tiny, batch, tmp_path):
    """Last of the `stepped` tests: it takes a second step. ZeRO-3 only (partitioned optimizer state), to save time."""
    group, _ = stepped
    group.call(lambda a, r: a.save.remote(str(tmp_path / "ck")), TIMEOUT_S, "save")
    resumed = ActorGroup(Learner, "zero3-resumed", args=(tiny, "policy", train_cfg(3)),
                         kwargs={"dtype": "float32", "seed": 0, "total_steps": 4}, num_ranks=2, num_cpus=0.5,
                         setup_timeout_s=TIMEOUT_S)
    try:
        resumed.call(lambda a, r: a.load_checkpoint.remote(str(tmp_path / "ck")), TIMEOUT_S, "load")
        shards = group.shard(batch)
        after = [g.call(lambda a, r: a.train_step.remote(shards[r], forward.SFT_LOSS), TIMEOUT_S, "train")[0]
                 for g in (group, resumed)]
        digests = [g.call(lambda a, r: a.state_digest.remote(), TIMEOUT_S, "digest")[0] for g in (group, resumed)]
    finally:
        resumed.kill()
    assert after[0] == after[1] and digests[0] == digests[1]  # weights, Adam moments and LR schedule restored


class _Touch:
    """Unpickling this runs `touch marker` (a planted checkpoint file's payload)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("stepped", [(3, 2, None)], indirect=True, ids=["zero3"])
def test_a_pickle_planted_for_one_rank_stops_every_rank_in_one_line(stepped, tmp_path):
    """In rank 1's optimizer partition only: every rank refuses it before DeepSpeed reads anything (so rank 0 does
    not wait in a collective for rank 1), nothing runs, and the stages' one line names the file. The engine is
    untouched (the next tests go on with it)."""
    group, _ = stepped
    group.call(lambda a, r: a.save.remote(str(tmp_path / "ck")), TIMEOUT_S, "save")
    folder = tmp_path / "ck" / "deepspeed"
    target = folder / (folder / "latest").read_text().strip() / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    assert target.is_file()
    torch.save({"optimizer_state_dict": _Touch(tmp_path / "pwned")}, target)
    with pytest.raises(GroupError) as err:
        group.call(lambda a, r: a.load_checkpoint.remote(str(tmp_path / "ck")), 60, "sft: resume")
    assert err.value.ranks == [0, 1] and not err.value.died
    assert isinstance(errors.user_error(err.value), safe_checkpoint.UnsafeCheckpoint)  # one line at the CLI
    line = str(err.value)
    assert line.startswith(f"sft: resume: raised UnsafeCheckpoint: refused to unpickle {target}: it names "
                           "posix.system; ") and "\n" not in line
    assert not (tmp_path / "pwned").exists()


def _nan_on_last_rank(model, mb, n_global):
    """The SFT loss, but NaN on the last rank only (so the ranks must agree to skip)."""
    import torch.distributed as dist

    loss, metrics = forward.sft_nll(model, mb, n_global)
    last = not dist.is_initialized() or dist.get_rank() == dist.get_world_size() - 1
    return (loss * float("nan") if last else loss), metrics


ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors unpickle _nan_on_last_rank by value


def test_a_non_finite_loss_skips_the_update_on_every_rank(stepped, batch):
    """Weights, Adam state and LR schedule stay as they were: the next good step is the one it would have been."""
    group, _ = stepped
    shards = group.shard(batch)

    def step(loss):
        return group.call(lambda a, r: a.train_step.remote(shards[r], loss), TIMEOUT_S, "train")

    before = group.call(lambda a, r: a.state_digest.remote(), TIMEOUT_S, "digest")
    bad = step(forward.Loss(_nan_on_last_rank, forward.sft_count))
    assert all(m["skipped"] == 1.0 and math.isnan(m["loss"]) for m in bad), bad
    assert group.call(lambda a, r: a.state_digest.remote(), TIMEOUT_S, "digest") == before
    good = step(forward.SFT_LOSS)
    after = group.call(lambda a, r: a.state_digest.remote(), TIMEOUT_S, "digest")
    assert good[0]["skipped"] == 0.0 and math.isfinite(good[0]["grad_norm"]) and len(set(after)) == 1
    assert after != before and good[0]["lr"] == bad[0]["lr"]  # the schedule did not move on the skipped step


def _ppo_batch(model, seed: int = 1) -> dict:
    """8 PPO rows (Experience.mini_batch's keys): prompts of 2..4 tokens left-padded to 4, responses of 1..8 tokens
    right-padded to 8; old and reference log-probs near the model's own at T = 0.7, so ratios clip now and then."""
    g = torch.Generator().manual_seed(seed)
    P, R = 4, 8
    prompt_lens, resp_lens = [4, 2, 3, 4, 2, 3, 4, 2], [8, 1, 5, 3, 8, 2, 6, 4]
    ids = torch.randint(3, model.config.vocab_size, (B, P + R), generator=g)
    pos = torch.arange(P + R)
    attention = ((pos >= P - torch.tensor(prompt_lens)[:, None]) & (pos < P + torch.tensor(resp_lens)[:, None])).long()
    response = attention[:, P:].float()
    with torch.no_grad():
        own = forward.logprobs(model, ids * attention, attention, R, temperature=0.7)
    noise = lambda scale: scale * torch.randn(B, R, generator=g)  # noqa: E731
    return {"input_ids": ids * attention, "attention_mask": attention, "response_mask": response,
            "old_logprobs": (own + noise(0.2)) * response, "ref_logprobs": (own + noise(0.3)) * response,
            "advantages": noise(1.0) * response, "is_weights": (0.5 + torch.rand(B, R, generator=g)) * response,
            "returns": torch.zeros(B, R), "old_values": torch.zeros(B, R)}


def test_ppo_loss_aggregations_at_a_temperature_match_single_process_torch(stepped, tiny):
    """The policy loss at T = 0.7 in each ppo.loss_agg, split over ranks and micro-batches by DeepSpeed: loss,
    metrics and gradient norm are those of one plain-torch forward and backward on the whole batch at the same
    weights (exported before each step)."""
    group, _ = stepped
    for agg in rl_math.LOSS_AGGS:
        _, weights = _export(group, bucket_bytes=1 << 30)
        model = models.load_policy(tiny, "float32")
        model.load_state_dict(weights)
        batch = _ppo_batch(model)
        loss = ppo_losses.make_policy_loss(0.2, 3.0, 0.01, 0.1, "k3", temperature=0.7, loss_agg=agg,
                                           max_response_len=8)
        value, want = loss.fn(model, batch, loss.count(batch))
        value.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")).item()
        shards = group.shard(batch)
        got = group.call(lambda a, r: a.train_step.remote(shards[r], loss), TIMEOUT_S, f"train {agg}")
        assert all(m == got[0] for m in got), agg
        m = got[0]
        assert m["loss"] == pytest.approx(value.item(), rel=1e-5, abs=1e-7), agg
        assert m["grad_norm"] == pytest.approx(grad_norm, rel=1e-5), agg
        for key, v in want.items():
            assert m[key] == pytest.approx(v, rel=1e-5, abs=1e-7), (agg, key)
        assert 0 < want["clip_frac"] < 1, agg  # the clipped branch is exercised


# ---------------------------------------------------------------- the group itself


def test_shard_splits_evenly_or_refuses():
    assert shard(list(range(6)), 3) == [[0, 1], [2, 3], [4, 5]]
    parts = shard({"x": torch.arange(4), "y": torch.arange(4) * 2}, 2)
    assert torch.equal(parts[1]["y"], torch.tensor([4, 6]))
    with pytest.raises(ValueError, match="5 items do not split evenly across 2 ranks"):
        shard(list(range(5)), 2)


def test_group_errors_name_role_ranks_and_phase(ray_session):
    class Sleeper:  # defined here so Ray pickles it by value (workers cannot import test modules)
        def nap(self, seconds: float) -> float:
            time.sleep(seconds)
            return seconds

        def boom(self) -> None:
            raise ValueError("no luck")

    group = ActorGroup(Sleeper, "sleeper", num_ranks=2, num_cpus=0.1, distributed=False)
    try:
        assert ray.get(ray.get_actor("sleeper-1").nap.remote(0)) == 0  # named by role and rank
        # 2 s: room for sleeper-0's instant answer on a loaded machine (0.5 s was not, beside other test runs)
        with pytest.raises(GroupError, match=r"train: no answer within 2 s on sleeper-1$"):
            group.get(group.map(lambda a, r: a.nap.remote(6.0 * r)), timeout_s=2, phase="train")
        with pytest.raises(GroupError, match=r"score: raised ValueError: no luck on sleeper-0, sleeper-1"):
            group.call(lambda a, r: a.boom.remote(), timeout_s=30, phase="score")
        ray.kill(group.actors[0], no_restart=True)
        with pytest.raises(ray.exceptions.RayActorError):  # ray.kill is asynchronous: wait until it took effect
            for _ in range(100):
                ray.get(group.actors[0].nap.remote(0))
                time.sleep(0.1)
        with pytest.raises(GroupError, match=r"sync: actor died on sleeper-0$"):
            group.call(lambda a, r: a.nap.remote(0), timeout_s=30, phase="sync")
    finally:
        group.kill()


def test_group_places_ranks_on_placement_group_slots(ray_session):
    pg = ray.util.placement_group([{"CPU": 0.2}, {"CPU": 0.2}])
    ray.get(pg.ready(), timeout=60)
    slots = [SimpleNamespace(pg=pg, bundle_index=i, num_cpus=0.1, num_gpus=0.0) for i in range(2)]
    group = ActorGroup(type("Probe", (), {}), "probe", slots=slots, distributed=False)
    try:
        pgs = group.call(lambda a, r: a.__ray_call__.remote(
            lambda self: ray.get_runtime_context().get_placement_group_id()), 60, "probe")
        assert pgs == [pg.id.hex()] * 2
    finally:
        group.kill()
        ray.util.remove_placement_group(pg)


def test_critic_values_match_a_plain_forward(ray_session, tiny, batch):
    group = ActorGroup(Learner, "critic-learner", args=(tiny, "critic", train_cfg(0)), kwargs={"seed": 3},
                       num_ranks=1, num_cpus=0.5, setup_timeout_s=TIMEOUT_S)
    try:
        (values,) = group.call(lambda a, r: a.values.remote(batch, 10), TIMEOUT_S, "values")
    finally:
        group.kill()
    torch.manual_seed(3)  # the learner seeds the fresh value head the same way
    model = models.load_value_model(tiny).eval()
    with torch.no_grad():
        ref = forward.token_values(model, batch["input_ids"], batch["attention_mask"])[:, -11:-1]
    torch.testing.assert_close(values, ref, atol=1e-5, rtol=1e-5)


def test_a_lora_learner_trains_adapters_and_its_base_is_the_reference(ray_session, tiny, batch):
    """ZeRO-3 on 2 ranks with LoRA: after a step the adapters-off log-probs are the untouched model's (a separate
    reference's), the adapters-on ones moved, and the exported weights are peft's own merge of what was trained."""
    cfg = TrainConfig(lr=1e-2, batch_size=B, micro_batch_size=MICRO, zero_stage=3)
    group = ActorGroup(Learner, "lora-learner", args=(tiny, "policy", cfg),
                       kwargs={"dtype": "float32", "total_steps": 4, "lora_cfg": LoraConfig(rank=4, alpha=8)},
                       num_ranks=2, num_cpus=0.5, setup_timeout_s=TIMEOUT_S)
    try:
        shards = group.shard(batch)
        group.call(lambda a, r: a.train_step.remote(shards[r], forward.SFT_LOSS), TIMEOUT_S, "train")
        group.call(lambda a, r: a.train_step.remote(shards[r], forward.SFT_LOSS), TIMEOUT_S, "train")  # B moves off 0
        R = 10
        off = torch.cat(group.call(lambda a, r: a.logprobs.remote(shards[r], R, 1.0, adapters=False), TIMEOUT_S,
                                   "adapters off"))
        on = torch.cat(group.call(lambda a, r: a.logprobs.remote(shards[r], R), TIMEOUT_S, "on"))
        _, exported = _export(group, bucket_bytes=1 << 30)
    finally:
        group.kill()
    with torch.no_grad():
        ref = forward.logprobs(models.load_policy(tiny).eval(), batch["input_ids"], batch["attention_mask"], R)
        merged_lp = forward.logprobs(_load(tiny, exported).eval(), batch["input_ids"], batch["attention_mask"], R)
    torch.testing.assert_close(off, ref, atol=1e-5, rtol=1e-5)
    assert (on - ref).abs().max() > 1e-3
    torch.testing.assert_close(on, merged_lp, atol=1e-5, rtol=1e-5)  # the generators' weights sample the policy
    assert list(exported) == [n for n, _ in models.load_policy(tiny).named_parameters()]
    assert lora.hf_name("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight") == \
        "model.layers.0.self_attn.q_proj.weight"


def _load(tiny, weights):
    model = models.load_policy(tiny)
    model.load_state_dict(weights, strict=False)
    return model
