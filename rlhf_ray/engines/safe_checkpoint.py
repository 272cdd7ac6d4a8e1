"""Resuming a learner without unpickling anything foreign.

DeepSpeed's checkpoint files are torch pickles, and DeepSpeed reads them with `torch.load(weights_only=False)`: a
file planted in a run directory (run directories sit on shared volumes) would run its code on `resume: auto`. Here
every one of them is read by torch's weights-only unpickler, which builds tensors, plain containers and the three
DeepSpeed types of `allowed()`, and refuses any other global before calling anything. DeepSpeed's file format
stays as it is, so a resume continues exactly where the run stopped.

DeepSpeed 0.19's `engine.load_checkpoint` reads the files of a tag folder through `engine.checkpoint_engine.load`
only: the model states (every rank; all files matching its `mp_rank_*` pattern) and the ZeRO optimizer partitions
(each rank its own). `install` replaces that method. The other load paths are for setups we never configure and are
refused (`_check_load_path`): universal checkpoints (read with torch.load directly), MoE expert files and
NVMe-offloaded optimizer state; ZeRO-3 without optimizer states (zero_to_fp32's torch.load) is never asked for.

Before DeepSpeed starts, every rank checks every .pt file of the tag folder (the folder is shared), so a refused
file stops every rank at the same point: none is left waiting in a ZeRO collective for a rank that raised.
"""

from __future__ import annotations

import contextlib
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch

from rlhf_ray.errors import UserError

AFTER = ("only tensors, plain containers and DeepSpeed's own counters are loaded from a checkpoint, and nothing in "
         "this file was run")


class UnsafeCheckpoint(UserError):
    """A checkpoint file that would need more than tensors, plain containers and `allowed()` types to unpickle, or
    a `latest` file pointing outside its folder: refused before anything in it ran. A UserError: raised in a
    learner actor, the command line finds it inside the GroupError and prints one line (errors.py)."""


def refused(path: Path, reason: str) -> UnsafeCheckpoint:
    return UnsafeCheckpoint(f"refused to unpickle {path}: {reason}; {AFTER}")


def allowed() -> list[type]:
    """The types besides tensors and plain containers that DeepSpeed 0.19 pickles into our checkpoints (fp32 or bf16,
    ZeRO 0-3, CPU offload, LoRA), each inert data: the weights-only unpickler may call the class (`__init__`), its
    `__new__`, and set instance attributes to values it may itself build, and nothing more.
      LossScaler        the ZeRO optimizer's static loss scale (1 without fp16): `__init__` stores a number; no
                        `__setstate__` or `__reduce__`.
      ZeroStageEnum     an int Enum (the ZeRO stage): calling it looks a member up by value.
      fragment_address  a dataclass of two ints (ZeRO-1/2's map of parameter slices).
    Not DynamicLossScaler (fp16 only) or any config object: none is saved."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


@contextlib.contextmanager
def _allowing_only(types: list[type]) -> Iterator[None]:
    """torch's built-in weights-only allow-list plus `types`, without what imports registered for the whole process
    (torch.distributed adds DTensor and DeviceMesh, whose constructors form process groups). Restored after."""
    before = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(types)
    try:
        yield
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)


def load(path: str | Path, map_location: Any = None, mmap: bool = False) -> Any:
    """torch.load with the weights-only unpickler and `allowed()`; UnsafeCheckpoint for anything else."""
    try:
        with _allowing_only(allowed()):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise refused(Path(path), _reason(e)) from None  # torch's own text advises weights_only=False


def _reason(err: Exception) -> str:
    """What torch refused (a global's name, an opcode), without its advice to load with weights_only=False."""
    text = " ".join(str(err).split())
    named = re.search(r"GLOBAL ([\w.]+)", text)
    if named:
        return f"it names {named.group(1)}"
    why = re.search(r"WeightsUnpickler error: (.+?)(?: Check the documentation|$)", text)
    return why.group(1) if why else "it holds more than tensors and plain containers"


def check(path: Path) -> None:
    """Raise UnsafeCheckpoint unless `path` is a torch.save archive whose pickle names only allowed globals and loads
    with the weights-only unpickler (tensors memory-mapped, not read)."""
    if not path.is_file():  # a FIFO would block the read forever
        raise refused(path, "it is not a regular file")
    if not zipfile.is_zipfile(path):  # DeepSpeed writes torch's zip format; anything else is foreign
        raise refused(path, "it is not the zip archive torch.save writes")
    try:
        with _allowing_only(allowed()):
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)  # read statically, nothing called
        if names:
            raise refused(path, f"it names {', '.join(sorted(names))}")
        load(path, "cpu", mmap=True)
    except (RuntimeError, ValueError, TypeError, EOFError, OSError) as e:  # truncated, not torch's, odd arguments
        if isinstance(e, UnsafeCheckpoint):
            raise
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise refused(path, f"torch cannot read it ({type(e).__name__}: {first})") from None


class _WeightsOnly:
    """DeepSpeed's checkpoint engine with `load` reading weights-only; saving and the rest stay the engine's own."""

    def __init__(self, inner: Any):
        self._inner = inner

    def load(self, path: str, map_location: Any = None) -> Any:
        return load(path, map_location)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def install(engine) -> None:
    """Make every file DeepSpeed's plain load path reads go through `load` (idempotent)."""
    if not isinstance(engine.checkpoint_engine, _WeightsOnly):
        engine.checkpoint_engine = _WeightsOnly(engine.checkpoint_engine)


def _check_load_path(engine) -> None:
    """The load paths that call torch.load themselves are for setups we never configure: refuse rather than read."""
    if engine.load_universal_checkpoint() or engine.has_moe_layers or engine.zero_nvme_offload_optimizer():
        raise RuntimeError("resume supports DeepSpeed's plain checkpoints only (no universal checkpoint, MoE or "
                           "NVMe offload): their loaders unpickle files without the weights-only check")


def latest_tag(folder: Path) -> str:
    """The tag `folder/latest` names: a folder beside it (never a path that leads elsewhere)."""
    latest = folder / "latest"
    if not latest.is_file():
        raise FileNotFoundError(f"no DeepSpeed checkpoint in {folder} (no `latest` file)")
    tag = latest.read_text().strip()
    if tag in ("", ".", "..") or "/" in tag or "\\" in tag or not (folder / tag).is_dir():
        raise UnsafeCheckpoint(f"refused {latest}: it names {tag[:80]!r}, not a checkpoint folder beside it")
    return tag


def load_checkpoint(engine, folder: Path) -> str:
    """DeepSpeed's load_checkpoint of `folder` (weights, optimizer, LR schedule, step counters) with every file read
    weights-only, after this rank checked every file of the tag. All ranks call it together. Returns the path
    DeepSpeed loaded."""
    _check_load_path(engine)
    install(engine)
    tag = latest_tag(folder)
    for path in sorted((folder / tag).glob("*.pt")):
        check(path)
    path, _ = engine.load_checkpoint(str(folder), tag=tag)
    if path is None:
        raise FileNotFoundError(f"no DeepSpeed checkpoint in {folder / tag}")
    return path

