"""The DeepSpeed learner as plain functions: config, engine, one optimizer step, forward passes, export, save.

The learner actor (`actors/learner.py`) holds one engine and calls these; nothing here imports Ray.

Exact micro-batching. A step's global batch of B sequences is split across W ranks and G micro-batches per rank.
A `Loss` normalises by the *global* count (tokens or sequences, all-reduced before the first forward), so the
micro-batch losses add up to the full-batch loss. DeepSpeed then does two things to gradients that would break
that sum: `engine.backward` divides by G (undone with `scale_wrt_gas=False`) and the gradient reduction across
ranks averages (÷W, undone by multiplying each micro-batch loss by W). The resulting gradient is the full-batch
gradient, so gradient clipping and AdamW see what a single process would (tests/cpu/test_learner.py checks
loss, gradient norm and weights against plain torch).

Departures from stock DeepSpeed use, each for a reason measured on this stack:
  * torch's AdamW (`torch_adam`), never FusedAdam/CPUAdam, which compile for 90-100 s on CPU;
  * DeepSpeed's shared-memory comm op is disabled (a 40-70 s g++ build and a /dev/shm leak per process);
  * the LR schedule is a LambdaLR over `lr_factor`, not DeepSpeed's WarmupLR family: those force at least two
    warm-up steps starting from `warmup_min_lr`, so "no warm-up" would train its first step at LR 0;
  * under ZeRO-3 every rank loads the full model and `deepspeed.initialize` partitions it: loading straight into
    partitions (transformers' HfDeepSpeedConfig) needs `accelerate` in transformers 5, not a dependency here;
  * every training forward goes through `engine(...)`: DeepSpeed 0.19 runs its backward prologue (ZeRO
    accumulation-boundary bookkeeping) from hooks on the engine's outputs, so critics read per-token values
    off `hidden_states` of the engine's forward rather than calling the backbone directly;
  * the engine reads checkpoints with torch's weights-only unpickler (`safe_checkpoint`), not DeepSpeed's
    `weights_only=False`: a file planted in a run directory must not run code on resume;
  * DeepSpeed's checkpoint does not keep the random generators that dropout draws from: each rank saves its own
    beside it (`save_rng_state`) as JSON, which needs no unpickler, so a resumed run draws the unbroken run's masks.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist

from rlhf_ray import lora
from rlhf_ray.algos import packing
from rlhf_ray.algos.forward import Batch, Loss
from rlhf_ray.engines import safe_checkpoint

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

    from rlhf_ray.config import TrainConfig

Tensor = torch.Tensor

DTYPES = ("float32", "bfloat16")


# ---------------------------------------------------------------- config


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Multiplier of the peak LR for optimizer step `step` (0-based).

    Linear warm-up (step + 1) / warmup_steps over the first `warmup_steps` steps (never 0: a zero-LR step is
    wasted), then `constant` 1, `cosine` 0.5 (1 + cos(π p)) or `linear` 1 - p with p = (step - warmup) /
    (total - warmup), the fraction of the post-warm-up steps already taken."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    p = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    if schedule == "linear":
        return 1.0 - p
    raise ValueError(f"unknown lr_schedule {schedule!r}; choose constant, cosine or linear")


def ds_config(train: "TrainConfig", world_size: int, dtype: str = "float32", batch_size: Optional[int] = None,
              betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> dict:
    """The DeepSpeed config for `train` on `world_size` ranks.

    batch_size: sequences per optimizer step across all ranks (default `train.batch_size`; PPO passes its
    mini-batch size). It must split into world_size x micro_batch_size x an integer (gradient accumulation)."""
    batch_size = train.batch_size if batch_size is None else batch_size
    per_step = world_size * train.micro_batch_size
    if batch_size <= 0 or batch_size % per_step:
        raise ValueError(f"batch of {batch_size} sequences does not split into {world_size} rank(s) x "
                         f"micro_batch_size {train.micro_batch_size}")
    if dtype not in DTYPES:
        raise ValueError(f"learner dtype must be one of {DTYPES}, got {dtype!r}")
    zero: dict = {"stage": int(train.zero_stage)}
    pin = torch.cuda.is_available()  # pinned host memory speeds host<->GPU copies; there are none on CPU
    if train.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin}
    if train.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": pin}
    return {
        "train_batch_size": batch_size,
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": batch_size // per_step,
        "gradient_clipping": float(train.grad_clip),
        "zero_optimization": zero,
        # Offload keeps torch's AdamW (on the CPU copies) instead of demanding DeepSpeed's CPUAdam, whose build
        # takes 90-100 s here.
        "zero_force_ds_cpu_optimizer": False,
        "bf16": {"enabled": dtype == "bfloat16"},
        "fp16": {"enabled": False},
        "optimizer": {"type": "AdamW", "params": {"lr": train.lr, "betas": list(betas), "eps": eps,
                                                  "weight_decay": train.weight_decay, "torch_adam": True}},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


# ---------------------------------------------------------------- engine


def _patch_deepspeed() -> None:
    """Disable DeepSpeed's shared-memory comm op (a g++ build per process and a /dev/shm leak).

    `import deepspeed.comm.torch` would bind the torch package (deepspeed.comm imports torch as a name), so the
    submodule must be fetched by its dotted name."""
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)


def init_deepspeed_comm(backend: str) -> None:
    """Let DeepSpeed adopt the already-initialised torch.distributed process group (no env:// store, no MPI)."""
    _patch_deepspeed()
    import deepspeed

    if not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialised: rendezvous first (cluster.actor_group)")
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)


def build_engine(model: torch.nn.Module, config: dict, total_steps: int, warmup_steps: int = 0,
                 schedule: str = "constant") -> "DeepSpeedEngine":
    """`deepspeed.initialize` with the AdamW of `config` and a LambdaLR over `lr_factor`."""
    _patch_deepspeed()
    import deepspeed

    def scheduler(optimizer):
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, warmup_steps, total_steps, schedule))

    # Only what trains (with LoRA: the adapters) gets optimizer state; frozen base weights get none.
    trained = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=model, model_parameters=trained,
                                      config=config, lr_scheduler=scheduler)
    safe_checkpoint.install(engine)  # DeepSpeed's own loader would unpickle anything a run directory holds
    return engine


def _to(mb: Batch, device) -> Batch:
    return {k: v.to(device) for k, v in mb.items()}


def prepare_model(model: torch.nn.Module, train: "TrainConfig") -> torch.nn.Module:
    """Settings that live on the model rather than in DeepSpeed's config: gradient checkpointing."""
    if train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False  # a KV cache is useless in training and conflicts with recomputation
    return model


def micro_batches(batch: Batch, train: "TrainConfig") -> list[Batch]:
    """This rank's micro-batches for one optimizer step: `train.micro_batch_size` rows each, or with
    `train.micro_batch_tokens` as many rows as fit in that many padded tokens (at least one; the last may be
    shorter). Every rank's shard has the same rows and padded length, so every rank gets the same count. Packed
    (`train.packing`), the budget counts real tokens, which differ between shards: the ranks agree on the largest
    count (`packing.budget_cuts`)."""
    if train.micro_batch_tokens and train.packing:
        lengths = packing.real_tokens(batch)
        count = int(_all_reduce_max([len(packing.budget_cuts(lengths, train.micro_batch_tokens)) - 1])[0])
        cuts = packing.budget_cuts(lengths, train.micro_batch_tokens, count)
        return [{k: v[a:b] for k, v in batch.items()} for a, b in zip(cuts, cuts[1:])]
    if train.micro_batch_tokens:
        rows = max(1, train.micro_batch_tokens // batch["input_ids"].shape[1])
        return split_micro_batches(batch, rows, exact=False)
    return split_micro_batches(batch, train.micro_batch_size)


def split_micro_batches(batch: Batch, micro_batch_size: int, exact: bool = True) -> list[Batch]:
    """Cut a batch into consecutive micro-batches of `micro_batch_size` rows. exact: the row count must divide
    (training); otherwise the last micro-batch may be shorter (forward passes)."""
    n = len(next(iter(batch.values())))
    if any(len(v) != n for v in batch.values()):
        raise ValueError(f"batch fields differ in length: { {k: len(v) for k, v in batch.items()} }")
    if exact and n % micro_batch_size:
        raise ValueError(f"{n} rows do not split into micro-batches of {micro_batch_size}")
    return [{k: v[i : i + micro_batch_size] for k, v in batch.items()} for i in range(0, n, micro_batch_size)]


def _all_reduce_sum(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def _all_reduce_max(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def _grad_norm(module: torch.nn.Module) -> float:
    """Global L2 norm of the (already reduced) gradients, for ZeRO-0 where DeepSpeed does not report one."""
    norms = [p.grad.detach().float().norm() for p in module.parameters() if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


def train_step(engine: "DeepSpeedEngine", micro_batches: list[Batch], loss: Loss, packed: bool = False
               ) -> dict[str, float]:
    """One optimizer step over this rank's micro-batches (any count, the same on every rank: the last one is the
    accumulation boundary, set explicitly, so token-budget micro-batches need not match DeepSpeed's configured
    gradient_accumulation_steps).

    Every rank must call it together (collectives). Returns the global batch's metrics, equal on every rank:
    `loss` and the loss's own metrics (summed shares, i.e. full-batch values), `grad_norm` (before clipping),
    `lr` (the LR this step used), `skipped` (1.0 when the update was skipped, else 0.0).

    A non-finite loss on any micro-batch of any rank skips the whole update: the ranks agree on it before each
    backward; the remaining backwards run on a zeroed loss (DeepSpeed's gradient bookkeeping and collectives go
    on as usual), the optimizer step is left out, DeepSpeed counts a skipped step and holds the LR schedule, and
    the gradients are zeroed. Weights and optimizer state are as before the call. packed: the loss's forwards run
    padding-free (`packing.Packed`)."""
    gas = len(micro_batches)
    model = packing.Packed(engine) if packed else engine
    world = dist.get_world_size() if dist.is_initialized() else 1
    (n_global,) = _all_reduce_sum([sum(loss.count(mb) for mb in micro_batches)])
    n_global = max(n_global, 1.0)
    lr = engine.get_lr()[0]
    engine.train()
    totals: dict[str, float] = {}
    own_norm, skip = None, False
    for i, mb in enumerate(micro_batches):
        engine.set_gradient_accumulation_boundary(i == gas - 1)  # before the forward: ZeRO-3 reads it there
        value, metrics = loss.fn(model, _to(mb, engine.device), n_global)
        skip = skip or _all_reduce_sum([0.0 if torch.isfinite(value).all() else 1.0])[0] > 0
        # Undo DeepSpeed's ÷gas (scale_wrt_gas=False) and its mean over ranks (× world): see the module docstring.
        engine.backward((value.nan_to_num(0.0, 0.0, 0.0) * 0.0 if skip else value) * world, scale_wrt_gas=False)
        if i == gas - 1 and engine.zero_optimization_stage() == 0 and not skip:
            own_norm = _grad_norm(engine.module)  # gradients are all-reduced by now; step() clips them
        with _without_update(engine) if skip and i == gas - 1 else contextlib.nullcontext():
            engine.step()
        for k, v in {"loss": value.item(), **metrics}.items():
            totals[k] = totals.get(k, 0.0) + float(v)
    keys = sorted(totals)
    out = dict(zip(keys, _all_reduce_sum([totals[k] for k in keys])))
    grad_norm = engine.get_global_grad_norm()  # ZeRO optimizers (and bf16) report it; torch AdamW at ZeRO-0 not
    grad_norm = own_norm if grad_norm is None else grad_norm
    out["grad_norm"] = float(grad_norm) if grad_norm is not None and not skip else float("nan")
    out["lr"] = float(lr)
    out["skipped"] = float(skip)
    return out


@contextlib.contextmanager
def _without_update(engine: "DeepSpeedEngine"):
    """engine.step() without the optimizer step: DeepSpeed reads `optimizer.overflow` as "skip" (it counts a
    skipped step, does not advance the LR schedule) and zeroes the gradients afterwards as usual."""
    opt = engine.optimizer
    saved = {k: opt.__dict__[k] for k in ("step", "overflow") if k in opt.__dict__}
    opt.step, opt.overflow = (lambda *a, **k: None), True  # instance attributes shadow the class's
    try:
        yield
    finally:
        for k in ("step", "overflow"):
            if k in saved:
                setattr(opt, k, saved[k])
            else:
                delattr(opt, k)


@torch.no_grad()
def eval_step(engine: "DeepSpeedEngine", micro_batches: list[Batch], loss: Loss, packed: bool = False
              ) -> dict[str, float]:
    """`loss` and its metrics over this rank's micro-batches without gradients, normalised over every rank's
    rows like `train_step` (held-out evaluation). All ranks call it together, with the same number of
    micro-batches (ZeRO-3 forwards are collective)."""
    (n_global,) = _all_reduce_sum([sum(loss.count(mb) for mb in micro_batches)])
    n_global = max(n_global, 1.0)
    engine.eval()
    totals: dict[str, float] = {}
    model = packing.Packed(engine) if packed else engine
    try:
        for mb in micro_batches:
            value, metrics = loss.fn(model, _to(mb, engine.device), n_global)
            for k, v in {"loss": value.item(), **metrics}.items():
                totals[k] = totals.get(k, 0.0) + float(v)
    finally:
        engine.train()
    keys = sorted(totals)
    return dict(zip(keys, _all_reduce_sum([totals[k] for k in keys])))


@torch.no_grad()
def eval_forward(engine: "DeepSpeedEngine", fn: Callable[[Any], Tensor]) -> Tensor:
    """`fn(engine)` in eval mode without gradients, then back to train mode. Under ZeRO-3 a collective."""
    engine.eval()
    try:
        return fn(engine)
    finally:
        engine.train()


# ---------------------------------------------------------------- export and save


def _persistent_buffers(module: torch.nn.Module) -> Iterator[tuple[str, Tensor]]:
    """Buffers that belong in a state dict (e.g. not RoPE's inv_freq, which the model recomputes)."""
    for prefix, mod in module.named_modules():
        for name, buf in mod.named_buffers(recurse=False):
            if buf is not None and name not in mod._non_persistent_buffers_set:
                yield (f"{prefix}.{name}" if prefix else name), buf


def hf_name(name: str) -> str:
    """An engine parameter name in HF naming (wrappers add `module.` in front)."""
    while name.startswith("module."):
        name = name[len("module."):]
    return name


def weight_specs(engine: "DeepSpeedEngine") -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """(HF name, full shape, dtype) of what `named_full_weights` yields, in its order, without gathering anything
    (ZeRO-3 keeps each partitioned parameter's full shape as `ds_shape`): a weight-sync plan is made from it."""
    module = engine.module
    params = [(hf_name(n), tuple(getattr(p, "ds_shape", p.shape)), p.dtype)
              for n, p, _, _ in lora.export_plan(module)]
    return params + [(hf_name(n), tuple(b.shape), b.dtype) for n, b in _persistent_buffers(module)]


def named_full_weights(engine: "DeepSpeedEngine", on_all_ranks: bool = False, copy: bool = True
                       ) -> Iterator[tuple[str, Optional[Tensor]]]:
    """(HF name, full tensor) of every parameter (tied ones once) and persistent buffer, in module order; with LoRA
    the merged model's (each adapted weight with its adapter merged in, on a copy: lora.py).

    Under ZeRO-3 each parameter (with its adapter) is all-gathered in turn, so every rank must consume the iterator
    to the end in step. Ranks other than 0 get None for the tensor unless `on_all_ranks`. With `copy` each tensor is
    a CPU copy; without, it may be the engine's own (gathered) tensor on its device, valid only until the next one
    is taken: the weight sync packs it into a bucket straight away."""
    import deepspeed

    keep = on_all_ranks or not dist.is_initialized() or dist.get_rank() == 0
    module = engine.module
    out = (lambda t: t.detach().to("cpu", copy=True)) if copy else (lambda t: t.detach())
    for name, param, gather, layer in lora.export_plan(module):
        with deepspeed.zero.GatheredParameters(gather, modifier_rank=None), torch.no_grad():
            yield hf_name(name), (out(lora.merged(param.data, layer)) if keep else None)
    for name, buf in _persistent_buffers(module):
        yield hf_name(name), (out(buf) if keep else None)


def adapter_specs(engine: "DeepSpeedEngine") -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """What `named_adapter_weights` yields, without gathering (as `weight_specs`)."""
    return [(n, tuple(getattr(p, "ds_shape", p.shape)), p.dtype) for n, p in lora.adapter_plan(engine.module)]


def named_adapter_weights(engine: "DeepSpeedEngine", copy: bool = True) -> Iterator[tuple[str, Optional[Tensor]]]:
    """(name in peft's adapter file, full tensor) of every LoRA adapter weight (as `named_full_weights`: gathered
    one by one under ZeRO-3, None on ranks other than 0)."""
    import deepspeed

    keep = not dist.is_initialized() or dist.get_rank() == 0
    for name, p in lora.adapter_plan(engine.module):
        with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
            yield name, ((p.data.detach().to("cpu", copy=True) if copy else p.data.detach()) if keep else None)


def save_hf(engine: "DeepSpeedEngine", out_dir: str | Path, tokenizer_from: Optional[str] = None,
            trust_remote_code: bool = False) -> Optional[Path]:
    """Write the full weights as an HF folder (config, safetensors, generation config, tokenizer) that
    transformers and vLLM load; with LoRA the merged model, and the adapters alone (peft's folder) in
    out_dir/adapter. Every rank must call it (ZeRO-3 gathers); rank 0 writes. Returns the folder on rank 0, None
    elsewhere."""
    state = {name: t for name, t in named_full_weights(engine)}
    adapters = _adapter_state(engine.module) if lora.is_lora(engine.module) else None
    if dist.is_initialized() and dist.get_rank() != 0:
        return None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    module = engine.module
    if adapters is not None:
        module.save_pretrained(out / "adapter", state_dict=adapters)
        module = module.get_base_model()
    module.save_pretrained(out, state_dict=state)
    if tokenizer_from is not None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(tokenizer_from, trust_remote_code=trust_remote_code).save_pretrained(out)
    return out


def _adapter_state(module: torch.nn.Module) -> dict[str, Tensor]:
    """The trainable parameters (adapters, a value model's head) under peft's names, gathered (ZeRO-3)."""
    import deepspeed

    state = {}
    for name, p in module.named_parameters():
        if p.requires_grad:
            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                state[name] = p.data.detach().to("cpu", copy=True)
    return state


# ---------------------------------------------------------------- random state

RNG_FILE_MAX_BYTES = 1 << 20  # a rank's state is ~25 KB of JSON (torch's CPU generator: 5,056 bytes)


def rng_file(folder: str | Path, rank: int) -> Path:
    return Path(folder) / f"rng_rank{rank}.json"


def rng_state() -> dict:
    """This process's random generators as plain JSON types: python's `random`, numpy's global one, torch's CPU
    generator and, where CUDA is available, every device's (torch.cuda.get_rng_state_all)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    """Put back what `rng_state` returned (ValueError, TypeError, KeyError or IndexError for anything else)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def save_rng_state(folder: str | Path) -> Path:
    """This rank's random generators into folder/rng_rank{R}.json (every rank its own: ranks may differ)."""
    path = rng_file(folder, dist.get_rank() if dist.is_initialized() else 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rng_state()))
    return path


def load_rng_state(folder: str | Path) -> Optional[Path]:
    """Restore this rank's generators from `save_rng_state`'s file; None when the checkpoint has none (written
    before they were saved). A file that is not a small regular file holding such a state is refused
    (safe_checkpoint.UnsafeCheckpoint, naming it) before anything is read or restored."""
    path = rng_file(folder, dist.get_rank() if dist.is_initialized() else 0)

    def refuse(why: str) -> safe_checkpoint.UnsafeCheckpoint:
        return safe_checkpoint.UnsafeCheckpoint(f"refused {path}: {why}")

    try:
        text = safe_checkpoint.read_capped(path, RNG_FILE_MAX_BYTES, refuse)  # no FIFO wait, no link followed
    except FileNotFoundError:
        return None
    except OSError as e:
        raise refuse(f"cannot open it ({e.strerror})") from None
    try:
        set_rng_state(json.loads(text))
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise refuse(f"not a random state this version writes ({type(e).__name__}: {first})") from None
    return path
