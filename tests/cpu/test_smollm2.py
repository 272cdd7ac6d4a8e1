"""SmolLM2-135M-Instruct from the packaged GGUF: a plain float HF folder that chats in English (~1 min)."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub, even by mistake

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from rlhf_ray import models as M
from rlhf_ray.algos import forward

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh cache with SmolLM2 converted where resolve_model looks for it."""
    root = tmp_path_factory.mktemp("cache")
    M.convert_smollm2(root / "models" / "smollm2-135m-instruct")
    return root


def test_converted_is_a_plain_float_llama(cache):
    folder = cache / "models" / "smollm2-135m-instruct"
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert isinstance(model, LlamaForCausalLM) and getattr(model.config, "quantization_config", None) is None
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert model.config.head_dim == 64 and model.config.vocab_size == 49152
    assert model.generation_config.eos_token_id == model.config.eos_token_id == 2


def test_greedy_chat_reply_is_english(cache):
    folder = cache / "models" / "smollm2-135m-instruct"
    tok, model = AutoTokenizer.from_pretrained(folder), M.load_policy(str(folder)).eval()
    assert "<|im_start|>" in tok.chat_template
    enc = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=20, do_sample=False)
    text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    chars = [c for c in text if not c.isspace()]
    assert chars and sum(c.isascii() and c.isalpha() for c in chars) / len(chars) > 0.7, text
    assert "Paris" in text, text


def test_resolve_finds_the_converted_folder(cache, monkeypatch):
    monkeypatch.setenv("RLHF_RAY_CACHE", str(cache))
    assert M.resolve_model("smollm2-135m-instruct") == str(cache / "models" / "smollm2-135m-instruct")


def test_value_model_on_smollm2_indexes_by_mask(cache):
    """SmolLM2's pad token is its eos, so a score must come from the mask, not from pad_token_id."""
    folder = str(cache / "models" / "smollm2-135m-instruct")
    tok = M.load_tokenizer(folder)
    assert tok.pad_token_id == tok.eos_token_id
    model = M.load_value_model(folder).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
                                  return_tensors="pt", return_dict=True)["input_ids"]
    mask = torch.ones_like(ids)
    padded = torch.cat([ids, torch.full((1, 3), tok.pad_token_id)], 1)
    with torch.no_grad():
        plain = forward.sequence_rewards(model, ids, mask)
        right = forward.sequence_rewards(model, padded, torch.cat([mask, torch.zeros(1, 3, dtype=mask.dtype)], 1))
    assert torch.allclose(plain, right, atol=1e-4)
