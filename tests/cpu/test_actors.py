"""Generator, reference, reward-model and reward-function actors on a real local Ray, real vLLM, tiny models.

One Ray session and one generator for the module; weight syncs go through both transports (object store, and a
gloo broadcast group, the CPU twin of the NCCL path). At a sampling temperature of 0.7, a policy learner and the
reference score the generator's samples as the generator did."""

import sys

import pytest
import ray
import torch

from actors.generator import Generator
from actors.learner import Learner
from actors.reference import Reference
from actors.reward_function import RewardFunction
from actors.reward_model import RewardModel
from cluster import weight_sync
from cluster.actor_group import ActorGroup
from cluster.local import listening_socket
from rlhf_ray import data, models, rollout
from rlhf_ray.algos import forward, rl_math
from rlhf_ray.config import TrainConfig
from rlhf_ray.engines import scoring, vllm_engine
from tests.oracles import make_buckets, merged_weights

# Test-local actors and helpers travel to the workers by value (this module is not importable there).
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

PROMPTS = ["how do I cook rice", "tell me about the sea", "hello"]


@pytest.fixture(scope="module")
def generator(ray_session, tiny):
    actor = ray.remote(Generator).options(name="generator-0", num_cpus=0.5).remote(
        tiny, "float32", kv_cache_mb=64, max_model_len=256)
    yield actor
    ray.kill(actor)


@pytest.fixture(scope="module")
def pairs(tiny):
    tok = models.load_tokenizer(tiny)
    prompt_ids = [data.prompt_ids(tok, p) for p in PROMPTS]
    response_ids = [tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                    for r in ["the cat likes the red book", "a quiet river", "hello there friend"]]
    return prompt_ids, response_ids


def _perturbed(tiny, seed):
    """The tiny policy with every weight nudged: a stand-in for an updated policy."""
    model = models.load_policy(tiny)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def _hf_logprobs(model, prompt_ids, response_ids):
    out = []
    with torch.no_grad():
        for p, r in zip(prompt_ids, response_ids):
            logits = model(torch.tensor([p + r])).logits[0, len(p) - 1 : -1]
            out.append(rl_math.logprobs_from_logits(logits[None], torch.tensor([r]))[0])
    return out


def _max_gap(a, b):
    return max((torch.tensor(x) - torch.as_tensor(y)).abs().max().item() for x, y in zip(a, b))


def test_generate_rows_tagged_and_their_logprobs_match_transformers(generator, tiny, pairs):
    table = ray.get(generator.generate.remote(pairs[0], vllm_engine.Sampling(max_tokens=12, n=2, seed=1), PROMPTS))
    assert table.schema.equals(rollout.ROLLOUT_SCHEMA) and table.num_rows == 6
    assert table.column("group").to_pylist() == [0, 0, 1, 1, 2, 2]
    assert set(table.column("policy_version").to_pylist()) == {0}
    for r in table.to_pylist():
        assert 0 < len(r["response_ids"]) == len(r["logprobs"]) <= 12
        assert r["finish_reason"] == "stop" or len(r["response_ids"]) == 12
    # The engine's sampling log-probs are those of the same weights in transformers (fp32).
    batch = rollout.collate(table, models.load_tokenizer(tiny).pad_token_id)
    with torch.no_grad():
        logits = models.load_policy(tiny).eval()(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    P = batch.prompt_len
    hf = rl_math.logprobs_from_logits(logits[:, P - 1 : -1], batch.input_ids[:, P:])
    assert ((hf - batch.logprobs) * batch.response_mask).abs().max().item() < 1e-4
    # Same seed, same samples.
    again = ray.get(generator.generate.remote(pairs[0], vllm_engine.Sampling(max_tokens=12, n=2, seed=1), PROMPTS))
    assert again.column("response_ids").to_pylist() == table.column("response_ids").to_pylist()
    assert ray.get(generator.weight_version.remote()) == 0


def test_at_temperature_0_7_learner_and_reference_score_what_the_generator_sampled(generator, tiny, pairs):
    """rollout.temperature = 0.7: the generator records each sampled token's log-prob under softmax(z / 0.7), the
    distribution it drew from (processed log-probs); the policy learner and the reference, given the temperature,
    compute the same within today's fp32 tolerance, so the KL to an identical reference is ~0 and the on-policy
    ratio 1. At T = 1 (the learner before temperature reached it) they are far apart: the test can fail."""
    assert ray.get(generator.weight_version.remote()) == 0, "needs the tiny weights: runs before the sync tests"
    sampling = vllm_engine.Sampling(max_tokens=12, n=2, temperature=0.7)
    table = ray.get(generator.generate.remote(pairs[0], sampling, PROMPTS))
    batch = rollout.collate(table, models.load_tokenizer(tiny).pad_token_id)
    mask, T = batch.response_mask, batch.response_mask.shape[1]
    ids = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    learner = ActorGroup(Learner, "t07-policy-learner", args=(tiny, "policy", TrainConfig(batch_size=2,
                                                                                          micro_batch_size=2)),
                         kwargs={"dtype": "float32"}, num_ranks=1, num_cpus=0.25, setup_timeout_s=300)
    ref = ray.remote(Reference).options(name="reference-t07", num_cpus=0.25).remote(tiny, micro_batch_size=4)
    try:
        (cold,) = learner.call(lambda a, r: a.logprobs.remote(ids, T, 0.7), 300, "logprobs at T = 0.7")
        (plain,) = learner.call(lambda a, r: a.logprobs.remote(ids, T), 300, "logprobs at T = 1")
        ref_rows = ray.get(ref.logprobs.remote(table, 0.7))
    finally:
        learner.kill()
        ray.kill(ref)
    ref_lp = torch.zeros_like(mask)
    for i, row in enumerate(ref_rows):
        ref_lp[i, : len(row)] = torch.tensor(row)
    assert mask.sum() > 12 and (batch.logprobs * mask).min() < -0.5  # real samples, not all near-certain tokens
    assert ((cold - batch.logprobs) * mask).abs().max().item() < 1e-4
    assert ((ref_lp - batch.logprobs) * mask).abs().max().item() < 1e-4
    kl = rl_math.masked_sum(rl_math.kl_estimate(cold, ref_lp, "k3") * mask, mask, dim=1)  # per response
    assert kl.abs().max().item() < 1e-6
    assert ((plain - batch.logprobs) * mask).abs().max().item() > 0.05


def test_top_k_samples_among_the_k_likeliest_and_records_the_truncated_distributions_logprobs(generator, tiny, pairs):
    """rollout.top_k = 5: every sampled token is among the 5 likeliest of the same weights in transformers, and the
    recorded log-prob is the token's under the 5 renormalised (processed log-probs, as with top_p), not under the
    whole vocabulary, which is what the learner computes: the truncation's gap to the ratio (docs/algorithms.md)."""
    assert ray.get(generator.weight_version.remote()) == 0, "needs the tiny weights: runs before the sync tests"
    table = ray.get(generator.generate.remote(pairs[0], vllm_engine.Sampling(max_tokens=12, n=2, top_k=5), PROMPTS))
    batch = rollout.collate(table, models.load_tokenizer(tiny).pad_token_id)
    with torch.no_grad():
        logits = models.load_policy(tiny).eval()(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    P, mask = batch.prompt_len, batch.response_mask.bool()
    z, ids = logits[:, P - 1 : -1], batch.input_ids[:, P:]
    top = z.topk(5, dim=-1)
    assert (top.indices == ids[..., None]).any(-1)[mask].all()  # sampled among the 5 likeliest
    truncated = torch.full_like(z, float("-inf")).scatter(-1, top.indices, top.values)
    expected = rl_math.logprobs_from_logits(truncated, ids)
    assert (expected - batch.logprobs)[mask].abs().max().item() < 1e-4
    full = rl_math.logprobs_from_logits(z, ids)  # what the learner computes: lower by log of the top-5 mass
    gap = (batch.logprobs - full)[mask]
    assert gap.min().item() > -1e-4 and gap.mean().item() > 0.01, gap


def _push(actor, named, version: int, bucket_bytes: int, timeout_s: float = 60.0, refs=None) -> dict:
    """Policy rank 0's object-store push, by hand: the buckets in the store, then vLLM's phases on the actor."""
    buckets = make_buckets(named, version, bucket_bytes)
    ray.get(actor.open_weight_transfer.remote({"transport": "object_store", "timeout_s": timeout_s}))
    refs = [ray.put(b) for b in buckets] if refs is None else refs
    return ray.get(actor.update_weights.remote(version, weight_sync.layout([b.entries for b in buckets]), refs))


def test_object_store_sync_matches_new_weights(generator, tiny, pairs):
    before = ray.get(generator.score.remote(*pairs))
    assert _max_gap(before, _hf_logprobs(models.load_policy(tiny), *pairs)) < 1e-4
    model = _perturbed(tiny, seed=1)
    info = _push(generator, model.named_parameters(), 1, bucket_bytes=64 << 10)
    assert info["version"] == 1 and info["missed"] == [] and info["bytes"] > 0
    after = ray.get(generator.score.remote(*pairs))
    # fp32 on both sides: the same weights give the same log-probs to ~1e-6; we allow 1e-4.
    assert _max_gap(after, _hf_logprobs(model, *pairs)) < 1e-4
    assert _max_gap(after, before) > 0.05  # and the sync really changed the engine


def _spy_on_loads(generator_self):
    """In the engine's worker (in this process): record where each bucket the worker fetched lives and where the
    tensors handed to vLLM's reload point, then load as usual."""

    def install(worker):
        engine = worker.weight_transfer_engine
        seen = engine.spy_seen = {"buckets": [], "tensors": []}
        fetch, load = engine._fetch, engine.model.load_weights

        def spy_fetch(update):
            for b in fetch(update):
                seen["buckets"].append((b.data.ctypes.data, b.data.nbytes, b.data.flags.writeable,
                                        b.data.flags.owndata))
                yield b

        def spy_load(named):
            named = list(named)
            seen["tensors"] += [(t.data_ptr(), t.numel() * t.element_size()) for _, t in named]
            return load(named)

        engine._fetch, engine.model.load_weights = spy_fetch, spy_load

    generator_self.llm.collective_rpc(install)


def _seen_and_maps(generator_self):
    """What the spy recorded, and the process's shared mappings ((start, end, path) from /proc/self/maps: Ray's
    object store is a shared mapping of a file in /dev/shm or a memfd)."""
    def take(worker):  # and remove the spies
        engine = worker.weight_transfer_engine
        del engine._fetch, engine.model.load_weights
        return engine.spy_seen

    seen = generator_self.llm.collective_rpc(take)[0]
    shared = []
    for line in open("/proc/self/maps"):
        fields = line.split()
        if fields[1].endswith("s"):  # rw-s: a MAP_SHARED mapping
            start, end = (int(x, 16) for x in fields[0].split("-"))
            shared.append((start, end, fields[5] if len(fields) > 5 else ""))
    return seen, shared


def test_object_store_buckets_are_read_zero_copy_by_the_engine_worker(generator, tiny):
    """On the receiving side: the engine's worker (vLLM's weight-transfer engine, rlhf_buckets) reads each bucket
    as a view of the object store's shared memory (read-only, not owned by the array, inside a shared mapping of
    the process), and the tensors handed to vLLM's reload are views of those same bytes, not copies."""
    version = ray.get(generator.weight_version.remote()) + 1
    model = _perturbed(tiny, seed=4)
    buckets = make_buckets(model.named_parameters(), version, bucket_bytes=256 << 10)
    assert len(buckets) > 3
    ray.get(generator.__ray_call__.remote(_spy_on_loads))
    info = _push(generator, model.named_parameters(), version, bucket_bytes=256 << 10)
    seen, shared = ray.get(generator.__ray_call__.remote(_seen_and_maps))
    assert info["version"] == version and len(seen["buckets"]) == len(buckets)

    def mapping(ptr, n):
        return next((m for m in shared if m[0] <= ptr and ptr + n <= m[1]), None)

    for (ptr, n, writeable, owndata), b in zip(seen["buckets"], buckets):
        assert n == b.nbytes and not writeable and not owndata
        assert mapping(ptr, n) is not None, (hex(ptr), shared)  # in the object store's shared memory
    inside = [any(p <= t < p + n for p, n, _, _ in seen["buckets"]) for t, _ in seen["tensors"]]
    assert len(inside) == sum(len(b.entries) for b in buckets) and all(inside)  # vLLM reads the store's bytes
    print(f"\n{len(buckets)} buckets read in place from {sorted({mapping(p, n)[2] for p, n, _, _ in seen['buckets']})}")


def test_pushed_lora_adapters_are_served_as_the_merged_policy(ray_session, tiny, pairs):
    """`model.lora.sync: adapters`: the generator's worker gets the adapters alone (a few KB here, not the model)
    and writes them as an adapter folder that vLLM's LoRA support serves, replaced in place push after push; its
    log-probs are those of the merged policy in transformers (fp32, 1e-4)."""
    from rlhf_ray import lora
    from rlhf_ray.config import LoraConfig

    cfg = LoraConfig(rank=8, alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                       "up_proj", "down_proj"], sync="adapters")
    actor = ray.remote(Generator).options(name="generator-lora", num_cpus=0.1).remote(
        tiny, "float32", kv_cache_mb=32, max_model_len=256, lora=cfg)
    try:
        base = ray.get(actor.score.remote(*pairs))
        assert _max_gap(base, _hf_logprobs(models.load_policy(tiny), *pairs)) < 1e-4  # no adapter yet
        for version in (1, 2):
            model = lora.wrap(models.load_policy(tiny), cfg, "policy")
            g = torch.Generator().manual_seed(version)
            with torch.no_grad():
                for p in model.parameters():
                    if p.requires_grad:
                        p.add_(torch.randn(p.shape, generator=g) * 0.1)
            named = [(n, p.detach()) for n, p in lora.adapter_plan(model)]
            info = _push(actor, named, version, bucket_bytes=64 << 10)
            merged = models.load_policy(tiny)
            merged.load_state_dict(dict(merged_weights(model)))
            got = ray.get(actor.score.remote(*pairs))
            assert _max_gap(got, _hf_logprobs(merged, *pairs)) < 1e-4, version
            assert _max_gap(got, base) > 0.05 and info["bytes"] < sum(p.numel() * 4 for p in merged.parameters()) / 5
    finally:
        ray.kill(actor)


def test_sync_of_a_model_with_tied_embeddings(ray_session, pairs, tmp_path):
    """Tied models send the embedding once (as named_parameters and the learner's export do); the engine's LM head
    must follow it, sync after sync (vLLM's reload alone keeps the old head: logprob gaps of ~0.07 here)."""
    tied = str(models.make_tiny_model(tmp_path / "tied", seed=3, tie_word_embeddings=True))
    actor = ray.remote(Generator).options(name="generator-tied", num_cpus=0.1).remote(
        tied, "float32", kv_cache_mb=32, max_model_len=256)
    try:
        for version in (1, 2):
            model = _perturbed(tied, seed=version)
            assert model.lm_head.weight is model.model.embed_tokens.weight
            named = list(model.named_parameters())
            assert "lm_head.weight" not in dict(named)
            _push(actor, named, version, bucket_bytes=1 << 20)
            assert _max_gap(ray.get(actor.score.remote(*pairs)), _hf_logprobs(model, *pairs)) < 1e-4
    finally:
        ray.kill(actor)


def test_bad_syncs_fail_loudly_and_a_half_loaded_engine_serves_nothing(generator, tiny, pairs):
    """Each bucket is loaded once it passes its check: a sync refused at its first bucket leaves the old weights
    served; one that fails after loading some leaves parts of two versions, and the generator refuses to serve
    until a whole version lands."""
    version = ray.get(generator.weight_version.remote())
    model = _perturbed(tiny, seed=2)
    _push(generator, model.named_parameters(), version + 1, bucket_bytes=1 << 20)
    before = ray.get(generator.score.remote(*pairs))
    with pytest.raises(weight_sync.WeightSyncError, match=f"generator-0: offered version {version}, already at"):
        _push(generator, model.named_parameters(), version, bucket_bytes=1 << 20)
    other = _perturbed(tiny, seed=7)
    good = make_buckets(other.named_parameters(), version=version + 2, bucket_bytes=64 << 10)
    broken = good[0].data.copy()
    broken[5] ^= 1
    bad = [weight_sync.Bucket(**{**good[0].__dict__, "data": broken})] + good[1:]
    with pytest.raises(weight_sync.WeightSyncError, match="generator-0: update_weights: .*bucket 0 fails its checksum"):
        _push(generator, other.named_parameters(), version + 2, 64 << 10, refs=[ray.put(b) for b in bad])

    @ray.remote
    def never(seconds):
        import time

        time.sleep(seconds)

    with pytest.raises(weight_sync.WeightSyncError, match="generator-0: update_weights: version .*: bucket 0 of 1 "
                                                          "not received in 1"):
        _push(generator, other.named_parameters(), version + 2, 64 << 10, timeout_s=1.0, refs=[never.remote(30)])
    # refused before any bucket was loaded: the engine serves version + 1 as before
    assert ray.get(generator.weight_version.remote()) == version + 1
    assert _max_gap(ray.get(generator.score.remote(*pairs)), before) == 0.0

    with pytest.raises(weight_sync.WeightSyncError, match="generator-0: update_weights: .*received 1 of"):
        _push(generator, other.named_parameters(), version + 2, 64 << 10, refs=[ray.put(good[0])])
    with pytest.raises(weight_sync.WeightSyncError, match=f"generator-0 holds parts of versions {version + 1} and "
                                                          f"{version + 2}: a sync failed after loading 1 of "
                                                          rf"{len(good)} buckets \(.*received 1 of .*\); it serves "
                                                          "nothing until a whole version is pushed"):
        ray.get(generator.score.remote(*pairs))
    _push(generator, other.named_parameters(), version + 2, 64 << 10)  # the whole version: served again
    assert _max_gap(ray.get(generator.score.remote(*pairs)), _hf_logprobs(other, *pairs)) < 1e-4


@ray.remote(num_cpus=0.25)
class _Source:
    """Learner rank 0's side of the broadcast transport, with a plain HF model (the learner actor has the same)."""

    def __init__(self, tiny, seed):
        self.model = _perturbed(tiny, seed)

    def listen(self):
        self.sock = listening_socket("127.0.0.1")
        return self.sock.getsockname()[1]

    def join(self, port, world_size):
        self.group = weight_sync.BroadcastGroup("127.0.0.1", port, 0, world_size, "gloo", 30.0, self.sock)

    def layout(self, bucket_bytes):
        return weight_sync.layout([b.entries for b in make_buckets(self.model.named_parameters(), 0, bucket_bytes)])

    def send(self, version, bucket_bytes):
        self.group.send(make_buckets(self.model.named_parameters(), version, bucket_bytes))


def _broadcast(actor, version: int, seed: int, tiny, workers: int = 1) -> dict:
    """A broadcast push from a _Source to the actor's `workers` engine workers (ranks 1..workers)."""
    source = _Source.remote(tiny, seed=seed)
    try:
        port = ray.get(source.listen.remote())
        info = {"transport": "broadcast", "timeout_s": 30.0, "host": "127.0.0.1", "port": port, "rank_offset": 1,
                "world_size": 1 + workers, "backend": "gloo"}
        ray.get([source.join.remote(port, 1 + workers), actor.open_weight_transfer.remote(info)], timeout=60)
        layout = ray.get(source.layout.remote(64 << 10))
        assert len(layout) > 3
        _, report = ray.get([source.send.remote(version, 64 << 10), actor.update_weights.remote(version, layout)],
                            timeout=120)
        return report
    finally:
        ray.kill(source)


def test_broadcast_sync_matches_new_weights(generator, tiny, pairs):
    version = ray.get(generator.weight_version.remote()) + 2  # skipping one: the generator must say so
    info = _broadcast(generator, version, 3, tiny)
    assert info["version"] == version and info["missed"] == [version - 1]
    after = ray.get(generator.score.remote(*pairs))
    assert _max_gap(after, _hf_logprobs(_perturbed(tiny, seed=3), *pairs)) < 1e-4


def test_engine_with_worker_processes_takes_new_weights_by_broadcast(ray_session, tiny, pairs):
    """vLLM with its engine core and worker in processes of their own (VLLM_ENABLE_V1_MULTIPROCESSING=1, as on
    GPU): the worker joins the broadcast group itself (the phases travel by name and plain arguments), and the
    object store, which that worker cannot read, is refused with the reason."""
    actor = ray.remote(Generator).options(
        name="generator-mp", num_cpus=0.1,
        runtime_env={"env_vars": {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}}).remote(
        tiny, "float32", kv_cache_mb=32, max_model_len=256)
    try:
        me, workers = ray.get(actor.worker_pids.remote())
        assert len(workers) == 1 and workers[0] != me
        _broadcast(actor, 1, 5, tiny)
        assert _max_gap(ray.get(actor.score.remote(*pairs)), _hf_logprobs(_perturbed(tiny, seed=5), *pairs)) < 1e-4
        with pytest.raises(weight_sync.WeightSyncError, match="cannot read Ray's object store"):
            _push(actor, _perturbed(tiny, seed=6).named_parameters(), 2, 64 << 10)
    finally:
        ray.kill(actor)


def test_reference_logprobs_match_transformers(ray_session, tiny, pairs):
    ref = ray.remote(Reference).options(name="reference-0", num_cpus=0.25).remote(tiny, micro_batch_size=2)
    rows = [{"prompt": p, "response": "", "prompt_ids": pi, "response_ids": ri, "logprobs": [0.0] * len(ri),
             "finish_reason": "stop", "policy_version": 0, "group": i}
            for i, (p, pi, ri) in enumerate(zip(PROMPTS, *pairs))]
    got = ray.get(ref.logprobs.remote(rollout.to_table(rows)))
    assert [len(g) for g in got] == [len(r) for r in pairs[1]]
    assert _max_gap(got, _hf_logprobs(models.load_policy(tiny), *pairs)) < 1e-4
    ray.kill(ref)


def _saved_reward_model(base, folder):
    """A reward-model folder with a fixed (saved) score head, so the actor and this test load the same one."""
    torch.manual_seed(0)
    models.load_value_model(base).save_pretrained(folder)
    models.load_tokenizer(base).save_pretrained(folder)
    return str(folder)


def test_reward_models_same_vocab_and_own_tokenizer(ray_session, tiny, pairs, tmp_path):
    rows = [{"prompt": p, "response": r, "prompt_ids": pi, "response_ids": ri, "logprobs": [0.0] * len(ri),
             "finish_reason": "stop", "policy_version": 0, "group": i}
            for i, (p, r, pi, ri) in enumerate(zip(PROMPTS, ["the cat", "a river", "hello friend"], *pairs))]
    table = rollout.to_table(rows)
    for base in (tiny, "minilm-l6"):
        folder = _saved_reward_model(base, tmp_path / base.replace("/", "_"))
        rm = ray.remote(RewardModel).options(num_cpus=0.25).remote(folder, tiny, micro_batch_size=2)
        got = ray.get(rm.scores.remote(table))
        ray.kill(rm)
        local = models.load_value_model(folder).eval()
        if base == tiny:  # same vocabulary: the rollout's own token ids are scored
            batch = rollout.collate(table, models.load_tokenizer(tiny).pad_token_id)
            ids, mask = batch.input_ids, batch.attention_mask
        else:  # its own tokenizer: (prompt, response) text pairs
            enc = models.load_tokenizer(folder)(PROMPTS, ["the cat", "a river", "hello friend"], padding=True,
                                                return_tensors="pt")
            ids, mask = enc["input_ids"], enc["attention_mask"]
        with torch.no_grad():
            want = forward.sequence_rewards(local, ids, mask)
        assert got == pytest.approx(want.tolist(), abs=1e-5), base


def test_reward_function_from_a_user_file(ray_session, tmp_path):
    user = tmp_path / "user_reward.py"
    user.write_text("def polite(prompts, responses, finish_reason):\n"
                    "    return [1.0 if 'please' in r else 0.0 for r in responses]\n")
    actor = ray.remote(RewardFunction).options(name="reward-fn-0", num_cpus=0.25).remote(
        [scoring.resolve(f"{user}:polite")])
    rows = [{"prompt": "p", "response": r, "prompt_ids": [1], "response_ids": [2], "logprobs": [0.0],
             "finish_reason": "stop", "policy_version": 0, "group": 0} for r in ["yes please", "no"]]
    assert ray.get(actor.scores.remote(rollout.to_table(rows))) == {f"{user}:polite": [1.0, 0.0]}
    ray.kill(actor)
    with pytest.raises(Exception, match="has no function 'rude'"):
        ray.get(ray.remote(RewardFunction).options(num_cpus=0.25).remote(
            [scoring.resolve(f"{user}:rude")]).scores.remote(rollout.to_table(rows)))


def test_the_reward_actor_runs_the_file_the_driver_read_not_the_one_on_its_node(ray_session, tmp_path):
    """The driver reads a `file.py:function` spec once; the actor runs those bytes. Here the file is rewritten
    and then removed before the actor starts (another node's copy, or none): the actor still scores with the
    driver's version."""
    user = tmp_path / "judge.py"
    user.write_text("def judge(prompts, responses):\n    return [1.0] * len(responses)\n")
    code = scoring.resolve(f"{user}:judge")
    user.write_text("def judge(prompts, responses):\n    return [-1.0] * len(responses)\n")
    user.unlink()
    actor = ray.remote(RewardFunction).options(num_cpus=0.25).remote([code])
    rows = [{"prompt": "p", "response": "r", "prompt_ids": [1], "response_ids": [2], "logprobs": [0.0],
             "finish_reason": "stop", "policy_version": 0, "group": 0}]
    assert ray.get(actor.scores.remote(rollout.to_table(rows))) == {f"{user}:judge": [1.0]}
    ray.kill(actor)
