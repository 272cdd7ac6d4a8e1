"""models.py on the tiny model and the packaged MiniLM encoder: building, resolving, value heads, padding."""

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub, even by mistake

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from rlhf_ray import models as M
from rlhf_ray.algos import forward

MESSAGES = [{"role": "user", "content": "Hello, can you help the cat?"}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny model built into an existing empty folder (as tmp_path_factory hands out)."""
    folder = tmp_path_factory.mktemp("tiny")
    M.make_tiny_model(folder, seed=0)
    return str(folder)


@pytest.fixture(scope="module")
def tok(tiny):
    return AutoTokenizer.from_pretrained(tiny)


def _chat_ids(tok, messages, **kw) -> list[int]:
    # transformers 5: tokenize=True returns a BatchEncoding unless return_dict=False.
    return list(tok.apply_chat_template(messages, tokenize=True, return_dict=True, **kw)["input_ids"])


# ---------------------------------------------------------------- the tiny model


def test_tiny_loads_with_auto_classes(tiny, tok):
    model = AutoModelForCausalLM.from_pretrained(tiny)
    assert isinstance(model, LlamaForCausalLM)
    cfg = model.config
    assert cfg.head_dim == 32 and cfg.num_attention_heads == 2 and cfg.num_hidden_layers == 2
    assert cfg.vocab_size == len(tok) and 500 < len(tok) <= 1000
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<|pad|>", "<|im_start|>", "<|im_end|>")
    assert cfg.pad_token_id == tok.pad_token_id != tok.eos_token_id == cfg.eos_token_id
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert tok.decode(tok.encode("The quick robot writes a letter.")) == "The quick robot writes a letter."


def test_chat_template_ends_with_generation_prompt(tok):
    ids = _chat_ids(tok, MESSAGES, add_generation_prompt=True)
    prompt = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
    assert ids[0] == tok.bos_token_id and ids[-len(prompt):] == prompt
    assert tok.decode(ids) == "<|im_start|>user\nHello, can you help the cat?<|im_end|>\n<|im_start|>assistant\n"
    closed = _chat_ids(tok, MESSAGES, add_generation_prompt=False)
    assert closed == ids[: len(closed)] and closed[-2] == tok.eos_token_id


def test_same_seed_same_weights(tiny, tmp_path):
    M.make_tiny_model(tmp_path / "again", seed=0)
    M.make_tiny_model(tmp_path / "other", seed=1)
    a, b, c = (load_file(os.path.join(d, "model.safetensors")) for d in (tiny, tmp_path / "again", tmp_path / "other"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])
    # One tokenizer for every seed, so tiny policies and reward models share token ids.
    assert (tmp_path / "other" / "tokenizer.json").read_bytes() == open(os.path.join(tiny, "tokenizer.json"), "rb").read()


def test_make_refuses_to_overwrite_a_model(tiny):
    with pytest.raises(FileExistsError):
        M.make_tiny_model(tiny)


def test_atomic_dir_keeps_a_racing_winner(tmp_path):
    out = tmp_path / "m"
    with M._atomic_dir(out) as tmp:
        (tmp / "config.json").write_text("ours")
        out.mkdir()  # another process finished first
        (out / "config.json").write_text("theirs")
    assert (out / "config.json").read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # our temp folder is gone


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with M._atomic_dir(tmp_path / "m") as tmp:
            (tmp / "config.json").write_text("half")
            raise RuntimeError("build failed")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- resolve_model


def test_resolve_tiny_builds_once(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_RAY_CACHE", str(tmp_path))
    assert M.cache_dir() == tmp_path
    first = M.resolve_model("tiny")
    assert first == str(tmp_path / "models" / "tiny-llama")
    mtime = os.stat(os.path.join(first, "model.safetensors")).st_mtime_ns
    assert M.resolve_model("tiny") == first
    assert os.stat(os.path.join(first, "model.safetensors")).st_mtime_ns == mtime
    assert not [p for p in (tmp_path / "models").iterdir() if ".tmp-" in p.name]


def test_resolve_paths_and_hub_names(tiny, tmp_path):
    assert M.resolve_model(tiny) == tiny
    missing = str(tmp_path / "nope")
    with pytest.raises(ValueError, match="no such model folder.*nope"):
        M.resolve_model(missing)
    with pytest.raises(ValueError, match="no such model folder"):
        M.resolve_model("./also-missing")
    with pytest.raises(ValueError, match="no config.json"):
        M.resolve_model(str(tmp_path))  # exists, but is not a model
    assert M.resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_dtype_names():
    assert M._dtype("bfloat16") is torch.bfloat16 and M._dtype("auto") == "auto"
    with pytest.raises(ValueError, match="unknown dtype"):
        M._dtype("float33")


# ---------------------------------------------------------------- value heads


def _pad(seqs, pad_id, side):
    """(B, T) ids and mask, padded on `side`."""
    T = max(len(s) for s in seqs)
    ids, mask = [], []
    for s in seqs:
        fill = [pad_id] * (T - len(s))
        ids.append(s + fill if side == "right" else fill + s)
        mask.append([1] * len(s) + [0] * len(fill) if side == "right" else [0] * len(fill) + [1] * len(s))
    return torch.tensor(ids), torch.tensor(mask)


def test_tiny_value_model_shapes_and_padding(tiny, tok):
    torch.manual_seed(0)
    model = M.load_value_model(tiny).eval()
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert model.config.pad_token_id == tok.pad_token_id
    seqs = [tok.encode("The cat likes the red book."), tok.encode("Hello"), _chat_ids(tok, MESSAGES)]
    with torch.no_grad():
        ids, mask = _pad(seqs, tok.pad_token_id, "right")
        right, values = forward.sequence_rewards(model, ids, mask), forward.token_values(model, ids, mask)
        left = forward.sequence_rewards(model, *_pad(seqs, tok.pad_token_id, "left"))
        alone = torch.cat([forward.sequence_rewards(model, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))
                           for s in seqs])
    assert right.shape == (3,) and values.shape == ids.shape and right.dtype == torch.float32
    # The score is the value at each row's last real token, whichever side the padding is on.
    assert torch.allclose(right, values[torch.arange(3), mask.sum(-1) - 1])
    assert torch.allclose(left, right, atol=1e-5) and torch.allclose(alone, right, atol=1e-5)


def test_value_model_is_trainable(tiny, tok):
    model = M.load_value_model(tiny)
    ids, mask = _pad([tok.encode("A dog sees a song."), tok.encode("Yes")], tok.pad_token_id, "right")
    forward.token_values(model, ids, mask).sum().backward()
    assert model.score.weight.grad is not None and model.model.embed_tokens.weight.grad.abs().sum() > 0


def test_policy_loads_in_bfloat16(tiny):
    assert M.load_policy(tiny, "bfloat16").dtype == torch.bfloat16


def test_load_tokenizer_keeps_pad(tiny):
    assert M.load_tokenizer(tiny).pad_token == "<|pad|>"


# ---------------------------------------------------------------- MiniLM encoder


def test_minilm_reward_model():
    folder = M.resolve_model("minilm-l6")
    assert os.path.isfile(os.path.join(folder, "config.json"))
    tok = M.load_tokenizer("minilm-l6")
    model = M.load_value_model("minilm-l6").eval()
    assert type(model).__name__ == "BertForSequenceClassification" and model.config.num_labels == 1
    enc = tok(["a kind and helpful answer", "no"], padding=True, return_tensors="pt")
    with torch.no_grad():
        scores = forward.sequence_rewards(model, enc["input_ids"], enc["attention_mask"])
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    with pytest.raises(ValueError, match="critic needs a decoder backbone"):
        forward.token_values(model, enc["input_ids"], enc["attention_mask"])


def test_critic_starts_from_the_reward_model_only_when_it_reads_the_policy_tokens(tiny, tmp_path):
    """PPO's critic values each policy token (GAE): a reward model on the policy's vocabulary starts it (as in
    InstructGPT); an encoder with its own vocabulary (minilm-l6) cannot, so the critic starts from the policy."""
    rm = tmp_path / "rm"
    M.load_value_model(tiny).save_pretrained(rm)
    M.load_tokenizer(tiny).save_pretrained(rm)
    assert M.critic_start(None, str(rm), tiny) == str(rm)
    assert M.critic_start(None, "minilm-l6", tiny) == tiny
    assert M.critic_start(None, None, tiny) == tiny
    assert M.critic_start(str(rm), "minilm-l6", tiny) == str(rm)
    with pytest.raises(M.ConfigError, match="model.critic: .* does not read the policy's tokens"):
        M.critic_start("minilm-l6", None, tiny)


# ---------------------------------------------------------------- a folder that ships its own code

CUSTOM_CODE = '''import pathlib
pathlib.Path(MARKER).write_text("ran")  # transformers imported this file (from a copy in its modules cache)
from transformers import LlamaConfig, LlamaForCausalLM

class EvilConfig(LlamaConfig):
    model_type = "rlhf_ray_evil"

class EvilModel(LlamaForCausalLM):
    config_class = EvilConfig
'''

# Each way the driver reads a model folder before Ray: the tokenizer, its config (weight_bytes), the input checks.
LOADS = '''
import sys
from pathlib import Path
from rlhf_ray import models
from rlhf_ray.config import load_config
from rlhf_ray.stages import inputs

folder, demos, marker = sys.argv[1:4]
only_sft = ["stages=[sft]", f"data.demonstrations.path={demos}", f"model.policy={folder}"]
for name, load in [("tokenizer", lambda: models.load_tokenizer(folder)),
                   ("weight_bytes", lambda: models.weight_bytes(folder)),
                   ("inputs", lambda: inputs.check(load_config(None, only_sft)))]:
    try:
        load()
        print(name, "loaded")
    except models.ConfigError as e:
        print(name, "refused:", e)
print("ran before trust:", Path(marker).exists())
if sys.argv[4:] == ["trust"]:
    inputs.check(load_config(None, [*only_sft, "model.trust_remote_code=true"]))
    models.meta_model(folder, trust_remote_code=True)
    print("ran with trust:", Path(marker).exists())
'''


@pytest.mark.parametrize("stdin", ["", "y\n"], ids=["stdin-closed", "stdin-says-yes"])
def test_a_folder_with_its_own_code_is_refused_and_never_prompts(tiny, tmp_path, stdin):
    """A config.json with an `auto_map` and a model_type transformers does not know makes transformers ask on the
    terminal whether to run the folder's Python; one "y" ran it. Every load refuses with one message instead, the
    answer never read; model.trust_remote_code=true (and only it) lets the code run."""
    folder = tmp_path / "custom"
    folder.mkdir()
    marker = tmp_path / "ran.txt"
    (folder / "evil.py").write_text(CUSTOM_CODE.replace("MARKER", repr(str(marker))))
    config = json.loads((Path(tiny) / "config.json").read_text())
    config.update(model_type="rlhf_ray_evil", architectures=["EvilModel"],
                  auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"})
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((Path(tiny) / name).read_bytes())
    demos = tmp_path / "demos.jsonl"
    demos.write_text('{"prompt": "hi", "response": "hello"}\n')
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf-modules")}  # where transformers copies the code
    args = [sys.executable, "-c", LOADS, str(folder), str(demos), str(marker)] + (["trust"] if stdin else [])
    out = subprocess.run(args, input=stdin, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    refusal = (f"{folder} asks to run its own code (auto_map AutoConfig, AutoModelForCausalLM; model_type "
               f"'rlhf_ray_evil'); set model.trust_remote_code=true if you trust it")
    lines = out.stdout.splitlines()
    assert lines[:4] == [f"tokenizer refused: invalid config: {refusal}",
                         f"weight_bytes refused: invalid config: {refusal}",
                         f"inputs refused: invalid config: model.policy: {refusal}",
                         "ran before trust: False"], out.stdout + out.stderr
    assert "[y/N]" not in out.stdout + out.stderr
    if stdin:
        assert lines[4:] == ["ran with trust: True"], out.stdout + out.stderr
