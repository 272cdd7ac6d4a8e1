"""Resume reads learner checkpoints weights-only, on real learners (DeepSpeed engines in a Ray actor, the tiny model).

One learner actor is the host: its process has joined a one-rank group, and each test builds further learners in it
(`Learner.build_engine`), a second or so each.
  * Every ZeRO stage 0-3, with bf16, LoRA, a critic and CPU offload: save, load into a fresh learner, and two more
    steps on both agree exactly (metrics and weights: the Adam moments, LR schedule and step counters came back).
  * Every ZeRO stage 0-3: a pickle planted in each .pt file the save wrote is refused, naming that file, both by the
    resume path and by DeepSpeed's own loader alone (so every file DeepSpeed reads goes through the weights-only
    reader), and the file its unpickling would create is never created.
Two ranks (a refused file stops every rank at once, one line for the user) are in tests/cpu/test_learner.py.
"""

import os
import pickle
import shutil
import sys
from pathlib import Path

import pytest
import ray
import torch

from actors.learner import Learner
from cluster.actor_group import ActorGroup
from rlhf_ray.algos import forward, ppo_losses
from rlhf_ray.config import LoraConfig, TrainConfig

TIMEOUT_S = 300
B, T, R = 4, 10, 4

# name: (kind, ZeRO stage, dtype, LoRA, memory settings)
CONFIGS = {
    "zero0": ("policy", 0, "float32", False, {}),
    "zero1": ("policy", 1, "float32", False, {}),
    "zero2": ("policy", 2, "float32", False, {}),
    "zero3": ("policy", 3, "float32", False, {}),
    "zero0-bf16": ("policy", 0, "bfloat16", False, {}),
    "zero3-bf16": ("policy", 3, "bfloat16", False, {}),
    "zero2-lora": ("policy", 2, "float32", True, {}),
    "zero3-lora": ("policy", 3, "float32", True, {}),
    "zero2-critic": ("critic", 2, "float32", False, {}),
    "zero3-critic-lora": ("critic", 3, "float32", True, {}),
    "zero2-offload": ("policy", 2, "float32", False, {"offload_optimizer": True}),
    "zero3-offload": ("policy", 3, "float32", False, {"offload_optimizer": True, "offload_params": True}),
}


@pytest.fixture(scope="module")
def host(ray_session, tiny):
    """A one-rank learner group; its actor's process is where the tests' learners live."""
    train = TrainConfig(batch_size=B, micro_batch_size=B)
    group = ActorGroup(Learner, "safe-resume-host", args=(tiny, "policy", train), num_ranks=1, num_cpus=0.5,
                       setup_timeout_s=TIMEOUT_S)
    yield group.actors[0]
    group.kill()


@pytest.fixture(scope="module")
def batch():
    """Rows for either kind: SFT's loss mask, the critic's value-loss targets."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 200, (B, T), generator=g)
    ones = torch.ones(B, T, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": ones, "loss_mask": ones, "response_mask": torch.ones(B, R),
            "old_values": torch.zeros(B, R), "returns": torch.randn(B, R, generator=g)}


def _learner(tiny: str, name: str) -> Learner:
    """A learner of config `name` in the host's process (its one-rank group); warm-up and a cosine schedule, so the
    LR schedule's position matters."""
    kind, stage, dtype, lora, memory = CONFIGS[name]
    train = TrainConfig(lr=1e-3, batch_size=B, micro_batch_size=B, zero_stage=stage, warmup_steps=2,
                        lr_schedule="cosine", **memory)
    learner = Learner(tiny, kind, train, dtype=dtype, total_steps=6,
                      lora_cfg=LoraConfig(rank=4, alpha=8) if lora else None)
    learner.build_engine(world_size=1)
    return learner


def _loss(learner: Learner) -> forward.Loss:
    return forward.SFT_LOSS if learner.kind == "policy" else ppo_losses.make_value_loss(0.2)


def _round_trip(_host, tiny: str, name: str, folder: str, batch: dict) -> dict:
    """Step, save, load into a fresh learner; then two steps on each."""
    a = _learner(tiny, name)
    a.train_step(batch, _loss(a))
    a.save(folder)
    b = _learner(tiny, name)
    b.load_checkpoint(folder)
    steps = [(a.train_step(batch, _loss(a)), b.train_step(batch, _loss(b))) for _ in range(2)]
    return {"steps": steps, "digests": (a.state_digest(), b.state_digest()),
            "global_steps": (a.engine.global_steps, b.engine.global_steps),
            "reader": type(b.engine.checkpoint_engine).__name__}


def _save(_host, tiny: str, name: str, folder: str, batch: dict) -> list[str]:
    a = _learner(tiny, name)
    a.train_step(batch, _loss(a))
    a.save(folder)
    return sorted(p.name for p in Path(folder, "deepspeed", "global_step1").glob("*.pt"))


def _refusals(_host, tiny: str, name: str, folders: list[str]) -> list[tuple[str, str]]:
    """For each tampered copy: (the resume path's error, DeepSpeed's own loader's error), into one fresh learner."""
    b = _learner(tiny, name)
    out = []
    for folder in folders:
        errors = []
        for load in (lambda: b.load_checkpoint(folder),
                     lambda: b.engine.load_checkpoint(str(Path(folder) / "deepspeed"))):
            try:
                load()
                errors.append("loaded")
            except Exception as e:  # noqa: BLE001 (reported to the driver, which checks the type)
                errors.append(f"{type(e).__name__}: {e}")
        out.append(tuple(errors))
    return out


ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the host runs this module's functions by value


class _Touch:
    """Unpickling this runs `touch marker`: what pickle's full power lets a planted file do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_resumed_learner_continues_exactly(host, tiny, batch, tmp_path, name):
    got = ray.get(host.__ray_call__.remote(_round_trip, tiny, name, str(tmp_path / "ck"), batch), timeout=TIMEOUT_S)
    assert got["reader"] == "_WeightsOnly"
    (a1, b1), (a2, b2) = got["steps"]
    assert a1 == b1 and a2 == b2, got["steps"]  # loss, grad norm and LR: Adam moments and schedule came back
    assert got["digests"][0] == got["digests"][1]
    assert got["global_steps"] == (3, 3)


@pytest.mark.parametrize("name", ["zero0", "zero1", "zero2", "zero3"])
def test_a_pickle_planted_in_any_checkpoint_file_is_refused_and_runs_nothing(host, tiny, batch, tmp_path, name):
    clean = tmp_path / "clean"
    files = ray.get(host.__ray_call__.remote(_save, tiny, name, str(clean), batch), timeout=TIMEOUT_S)
    assert len(files) == (1 if name == "zero0" else 2)  # model states (+ the ZeRO optimizer partition)
    marker = tmp_path / "pwned"
    copies = []
    for i, file in enumerate(files):
        for j, zipped in enumerate((True, False)):  # torch.save's archive, and a bare pickle
            copy = tmp_path / f"tampered_{i}_{j}"
            shutil.copytree(clean, copy)
            target = copy / "deepspeed" / "global_step1" / file
            if zipped:
                torch.save({"module": {}, "x": _Touch(marker)}, target)
            else:
                target.write_bytes(pickle.dumps(_Touch(marker), protocol=2))
            copies.append((target, copy))
    errors = ray.get(host.__ray_call__.remote(_refusals, tiny, name, [str(c) for _, c in copies]), timeout=TIMEOUT_S)
    for (target, _), (resume, deepspeed_alone) in zip(copies, errors):
        for err in (resume, deepspeed_alone):
            assert err.startswith(f"UnsafeCheckpoint: refused to unpickle {target}: "), err
            assert "\n" not in err and "nothing in this file was run" in err
    assert not marker.exists()


def _dropout_learner(tiny: str) -> Learner:
    """A LoRA policy whose adapters see their input through dropout 0.5: every training forward draws masks."""
    train = TrainConfig(lr=1e-3, batch_size=B, micro_batch_size=B, zero_stage=2)
    learner = Learner(tiny, "policy", train, total_steps=6, lora_cfg=LoraConfig(rank=4, alpha=8, dropout=0.5))
    learner.build_engine(world_size=1)
    return learner


def _dropout_round_trip(_host, tiny: str, folder: str, batch: dict) -> dict:
    """Two steps, save, two more (the unbroken run); a fresh learner resumed from the save, two steps; another
    resumed and then reseeded (the randoms a resume without the saved ones would draw), two steps; and one from a
    copy of the save without its random state (an older checkpoint)."""
    import contextlib
    import io

    def steps(learner, k=2):
        return [learner.train_step(batch, forward.SFT_LOSS) for _ in range(k)]

    a = _dropout_learner(tiny)
    steps(a)
    a.save(folder)
    unbroken = steps(a)
    b = _dropout_learner(tiny)
    b.load_checkpoint(folder)
    resumed = steps(b)
    c = _dropout_learner(tiny)
    c.load_checkpoint(folder)
    torch.manual_seed(1)
    reseeded = steps(c, 1)
    old = Path(folder).with_name("old")
    shutil.copytree(folder, old)
    (old / "deepspeed" / "rng_rank0.json").unlink()
    d = _dropout_learner(tiny)
    with contextlib.redirect_stdout(io.StringIO()) as said:
        d.load_checkpoint(str(old))  # goes on, saying so
    return {"unbroken": unbroken, "resumed": resumed, "reseeded": reseeded, "old": said.getvalue(),
            "digests": (a.state_digest(), b.state_digest()),
            "files": sorted(p.name for p in Path(folder, "deepspeed").glob("rng_*"))}


def test_a_resumed_learner_draws_the_same_dropout_masks(host, tiny, batch, tmp_path):
    """Dropout on (LoRA's, 0.5): the learner's random generators (torch, python, numpy; CUDA's where present) are
    saved beside the DeepSpeed checkpoint and restored, so two steps after a resume equal the unbroken run's two,
    loss for loss and weight for weight. Reseeded instead, the first step's loss already differs: the test can
    fail."""
    got = ray.get(host.__ray_call__.remote(_dropout_round_trip, tiny, str(tmp_path / "ck"), batch), timeout=TIMEOUT_S)
    assert got["files"] == ["rng_rank0.json"]
    assert got["resumed"] == got["unbroken"], (got["resumed"], got["unbroken"])
    assert got["digests"][0] == got["digests"][1]
    assert got["reseeded"][0]["loss"] != got["unbroken"][0]["loss"]
    assert got["old"].count("holds no random state") == 1, got["old"]


def _load_rng(_host, folder: str) -> str:
    from rlhf_ray.engines import ds_engine

    try:
        return str(ds_engine.load_rng_state(folder))
    except Exception as e:  # noqa: BLE001 (reported to the driver, which checks the type)
        return f"{type(e).__name__}: {e}"


@pytest.mark.parametrize("content", ["[1, 2", '{"python": [3, [1], null]}', "x" * (2 << 20), "fifo", "link"])
def test_a_planted_random_state_is_refused_naming_its_file(host, tmp_path, content):
    path = tmp_path / "rng_rank0.json"
    if content == "fifo":
        os.mkfifo(path)
    elif content == "link":
        (tmp_path / "elsewhere.json").write_text("{}")
        path.symlink_to(tmp_path / "elsewhere.json")
    else:
        path.write_text(content)
    err = ray.get(host.__ray_call__.remote(_load_rng, str(tmp_path)), timeout=TIMEOUT_S)
    assert err.startswith(f"UnsafeCheckpoint: refused {path}: ") and "\n" not in err, err
