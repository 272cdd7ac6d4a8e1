"""safe_checkpoint on files alone (no engine, no Ray): what the weights-only reader accepts, what it refuses, and
that a refused file runs nothing. The engine-level tests (a planted file in each file a real learner writes, every
ZeRO stage) are in tests/cpu/test_safe_resume.py."""

import os
import pathlib
import pickle
import shutil

import pytest
import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address

from rlhf_ray.engines import safe_checkpoint as S


class _Touch:
    """Unpickling this creates `path`: what a planted checkpoint would do with pickle's full power."""

    def __init__(self, path: pathlib.Path):
        self.path = path

    def __reduce__(self):
        return pathlib.Path.touch, (self.path,)


class _System:
    def __init__(self, path: pathlib.Path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def _deepspeed_like(path: pathlib.Path) -> dict:
    """What DeepSpeed's ZeRO optimizer state holds besides tensors."""
    state = {"loss_scaler": LossScaler(1), "zero_stage": ZeroStageEnum.gradients, "ds_version": "0.19.8",
             "param_slice_mappings": [{"w": fragment_address(numel=4, start=8)}], "exp_avg": torch.arange(6.0)}
    torch.save(state, path)
    return state


def test_tensors_containers_and_deepspeeds_own_types_load(tmp_path):
    path = tmp_path / "optim_states.pt"
    saved = _deepspeed_like(path)
    registered = set(torch.serialization.get_safe_globals())  # torch.distributed's, for the whole process
    S.check(path)
    got = S.load(path, map_location="cpu")
    assert torch.equal(got["exp_avg"], saved["exp_avg"]) and got["zero_stage"] is ZeroStageEnum.gradients
    assert type(got["loss_scaler"]) is LossScaler and vars(got["loss_scaler"]) == vars(saved["loss_scaler"])
    assert got["param_slice_mappings"] == saved["param_slice_mappings"]
    assert set(torch.serialization.get_safe_globals()) == registered  # ours held for each load only


@pytest.mark.parametrize("payload", ["zip-system", "zip-touch", "raw-touch", "raw-system"])
@pytest.mark.parametrize("reader", ["check", "load"])
def test_a_planted_pickle_is_refused_naming_the_file_and_runs_nothing(tmp_path, payload, reader):
    marker = tmp_path / "pwned"
    evil = (_System if payload.endswith("system") else _Touch)(marker)
    path = tmp_path / "mp_rank_00_model_states.pt"
    if payload.startswith("zip"):
        torch.save({"module": {"w": torch.ones(2)}, "x": evil}, path)
    else:
        path.write_bytes(pickle.dumps(evil, protocol=2))  # torch.load's own protocol
    with pytest.raises(S.UnsafeCheckpoint) as err:
        getattr(S, reader)(path)
    msg = str(err.value)
    assert msg.startswith(f"refused to unpickle {path}: ") and "\n" not in msg and "nothing in this file was run" in msg
    assert "weights_only=False" not in msg  # torch's advice is the one thing not to follow
    if payload.startswith("zip") or reader == "load":
        assert "it names " in msg and ("posix.system" if payload.endswith("system") else "getattr") in msg
    else:
        assert "not the zip archive torch.save writes" in msg
    assert not marker.exists()


def test_a_planted_fifo_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "mp_rank_01_model_states.pt"
    os.mkfifo(path)
    with pytest.raises(S.UnsafeCheckpoint, match="it is not a regular file"):
        S.check(path)


def test_a_deepspeed_class_outside_the_allow_list_is_refused(tmp_path):
    path = tmp_path / "optim_states.pt"
    torch.save({"loss_scaler": DynamicLossScaler(2.0**16, 1000, 1.0, 2, False)}, path)
    for read in (S.check, S.load):
        with pytest.raises(S.UnsafeCheckpoint, match="DynamicLossScaler"):
            read(path)


def test_deepspeeds_own_checkpoint_engine_loads_through_the_weights_only_reader(tmp_path):
    wrapped = S._WeightsOnly(TorchCheckpointEngine())  # what `install` puts on a DeepSpeedEngine
    good, bad = tmp_path / "good.pt", tmp_path / "bad.pt"
    wrapped.save({"w": torch.ones(3)}, str(good))  # saving stays DeepSpeed's
    assert torch.equal(wrapped.load(str(good), map_location=lambda storage, loc: storage)["w"], torch.ones(3))
    assert wrapped.is_data_parallel_writer(0) and not wrapped.is_decoupled()
    torch.save({"x": _Touch(tmp_path / "pwned")}, bad)
    with pytest.raises(S.UnsafeCheckpoint, match="bad.pt"):
        wrapped.load(str(bad), map_location="cpu")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("tag", ["../elsewhere", "global_step1/../../x", "/abs", "..", "", "missing"])
def test_latest_must_name_a_folder_beside_it(tmp_path, tag):
    (tmp_path / "elsewhere").mkdir()
    folder = tmp_path / "deepspeed"
    (folder / "global_step1").mkdir(parents=True)
    (folder / "latest").write_text(tag)
    with pytest.raises(S.UnsafeCheckpoint, match="not a checkpoint folder beside it"):
        S.latest_tag(folder)
    (folder / "latest").write_text("global_step1\n")
    assert S.latest_tag(folder) == "global_step1"
    (folder / "latest").unlink()
    with pytest.raises(FileNotFoundError, match="no `latest` file"):
        S.latest_tag(folder)


@pytest.mark.parametrize("load", ["load_policy", "load_value_model"])
def test_a_planted_pytorch_model_bin_runs_nothing(tiny, tmp_path, load):
    """A run's final/<stage>/ folder with its safetensors swapped for a planted pytorch_model.bin: transformers reads
    .bin files with torch's weights-only unpickler, so the load fails and nothing in the file runs."""
    from rlhf_ray import models

    folder = tmp_path / "final"
    shutil.copytree(tiny, folder)
    (folder / "model.safetensors").unlink()
    torch.save({"model.embed_tokens.weight": _System(tmp_path / "pwned")}, folder / "pytorch_model.bin")
    with pytest.raises(Exception, match="Weights only load failed"):
        getattr(models, load)(str(folder))
    assert not (tmp_path / "pwned").exists()


def test_a_corrupt_or_odd_checkpoint_file_is_one_refusal(tmp_path):
    """Not code, but not a checkpoint either: a truncated archive, a zip torch did not write, an allowed type
    called with arguments it rejects. Each is refused naming the file, not a traceback from inside torch."""
    import zipfile

    from deepspeed.runtime.zero.config import ZeroStageEnum

    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(4)}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:-40])
    foreign = tmp_path / "foreign.pt"
    with zipfile.ZipFile(foreign, "w") as z:
        z.writestr("data.pkl", b"not a pickle")

    class Stage99:
        def __reduce__(self):
            return ZeroStageEnum, (99,)

    odd = tmp_path / "odd.pt"
    torch.save({"stage": Stage99()}, odd)
    for path in (truncated, foreign, odd):
        with pytest.raises(S.UnsafeCheckpoint, match=rf"refused to unpickle {path}: ") as e:
            S.check(path)
        assert "\n" not in str(e.value)
    S.check(good)
