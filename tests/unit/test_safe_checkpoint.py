"""safe_checkpoint on files alone (no engine, no Ray): what the weights-only reader accepts, what it refuses, and
that a refused file runs nothing. The engine-level tests (a planted file in each file a real learner writes, every
ZeRO stage) are in tests/cpu/test_safe_resume.py."""

import os
import pathlib
import pickle
import shutil
from collections import OrderedDict

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
    if payload.startswith("zip"):  # check and load give one verdict: a bare pickle is not torch.save's archive
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
    inner = TorchCheckpointEngine()
    inner.zipfile_serialization = True  # what an engine's config sets (DeepSpeed's default): torch.save's archive
    wrapped = S._WeightsOnly(inner)  # what `install` puts on a DeepSpeedEngine
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


# -- Files that would exhaust memory or reach outside, each refused in one line, in bounded memory -----------------

class _Storage:
    """Pickled (by _Pickler) as torch.save's persistent id of a float storage: its archive member data/<key> and
    the number of elements it claims."""

    def __init__(self, elements: int, key: str = "0"):
        self.pid = ("storage", torch.FloatStorage, key, "cpu", elements)


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, _Storage) else None


class _Call:
    """Pickled as a call of `func` on `args` (REDUCE), then `state` set on the result (BUILD) if given."""

    def __init__(self, func, *args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


def _archive(path: pathlib.Path, obj=None, raw: bytes = b"", storages: dict = None, deflated: bool = False):
    """A zip laid out as torch.save's: archive/data.pkl (obj pickled as torch.save does, or `raw`), a version, and
    each storage as archive/data/<key>."""
    import io
    import zipfile

    if obj is not None:
        buf = io.BytesIO()
        _Pickler(buf, protocol=2).dump(obj)
        raw = buf.getvalue()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED if deflated else zipfile.ZIP_STORED,
                         compresslevel=1) as z:
        z.writestr("archive/data.pkl", raw)
        z.writestr("archive/byteorder", "little", compress_type=zipfile.ZIP_STORED)
        z.writestr("archive/version", "3\n", compress_type=zipfile.ZIP_STORED)
        for key, data in (storages or {}).items():
            z.writestr(f"archive/data/{key}", data, compress_type=zipfile.ZIP_STORED)
    return path


def _tensor_of(storage: _Storage, size: tuple) -> _Call:
    return _Call(torch._utils._rebuild_tensor_v2, storage, 0, size, (1,) * len(size), False, OrderedDict())


def _read_all_in_bounded_memory(paths: list) -> tuple[list, int]:
    """check and load of each path, in a subprocess whose address space may grow 1.5 GiB past what torch and
    DeepSpeed mapped at import: what each raised (or "loaded"), and the process's peak RSS in bytes."""
    import json
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import json, resource, sys
        from rlhf_ray.engines import safe_checkpoint as S
        S.allowed()  # DeepSpeed imported before the limit
        vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + (3 << 29), vm + (3 << 29)))
        out = []
        for path in sys.argv[1:]:
            for read in (S.check, S.load):
                try:
                    read(path)
                    out.append("loaded")
                except BaseException as e:  # MemoryError included: that is what these files did
                    out.append(f"{type(e).__name__}: {e}")
        print(json.dumps([out, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024]))
    """)
    done = subprocess.run([sys.executable, "-c", code, *map(str, paths)], capture_output=True, text=True,
                          timeout=300, cwd=pathlib.Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    out, peak = json.loads(done.stdout.strip().splitlines()[-1])
    return [out[i:i + 2] for i in range(0, len(out), 2)], peak


def test_files_that_would_exhaust_memory_are_refused_from_what_they_claim(tmp_path):
    """Each file claims more memory than it holds: a pickle calling bytearray(2**31) (2 GiB), a storage claiming
    2**40 floats where the archive holds 16 bytes, a tensor claiming 2**31 elements of a 4-element storage, a
    deflated data.pkl (64 MiB from ~65 KB: torch.save never compresses), a data.pkl over the cap, and one tuple
    of 100,000 ints made into a torch.Size 1,300 times (1 GB from 600 KB). Each is refused by check and load
    alike, in one line naming the file and the reason, before it is allocated."""
    S16 = {"0": bytes(16)}
    cases = {
        "bytearray": (_archive(tmp_path / "bytearray.pt", {"x": _Call(bytearray, 2 ** 31)}),
                      "it calls builtins.bytearray with arguments neither torch.save nor DeepSpeed writes"),
        "storage": (_archive(tmp_path / "storage.pt", {"w": _tensor_of(_Storage(2 ** 40), (4,))}, storages=S16),
                    f"a storage claims {4 * 2 ** 40} bytes, and its member data/0 holds 16"),
        "tensor": (_archive(tmp_path / "tensor.pt", {"w": _tensor_of(_Storage(4), (2 ** 31,))}, storages=S16),
                   "a tensor of shape (2147483648,) claims more than its storage's 4 elements"),
        "deflated": (_archive(tmp_path / "deflated.pt", raw=b"\x80\x02X\x00\x00\x00\x04" + bytes(64 << 20) + b".",
                              deflated=True),
                     f"archive/data.pkl is compressed ({(64 << 20) + 8} bytes inflated)"),
        "long pickle": (_archive(tmp_path / "long.pt", raw=b"\x80\x02X\x00\x00\x00\x01" + bytes(S.PICKLE_CAP)
                                 + b"."), f"its data.pkl is {S.PICKLE_CAP + 8} bytes (at most {S.PICKLE_CAP})"),
        "sizes": (_archive(tmp_path / "sizes.pt", raw=b"\x80\x02ctorch\nSize\nq\x00(" + b"K\x07" * 100_000
                           + b"tq\x01](" + b"h\x00h\x01\x85R" * 1_300 + b"e."),
                  f"unpickling it would take more than {S.BUDGET >> 20} MiB of memory"),
    }
    results, peak = _read_all_in_bounded_memory([path for path, _ in cases.values()])
    for (name, (path, reason)), got in zip(cases.items(), results):
        for err in got:
            assert err.startswith(f"UnsafeCheckpoint: refused to unpickle {path}: {reason}"), (name, err[:300])
            assert "\n" not in err and err.endswith("nothing in this file was run")
    assert peak < 2 << 30, peak


def test_a_well_formed_archive_of_its_own_making_loads(tmp_path):
    """The control for the files above: the same layout with claims that hold is read, by check and load."""
    path = _archive(tmp_path / "ok.pt", {"w": _tensor_of(_Storage(4), (2, 2))}, storages={"0": bytes(16)})
    S.check(path)
    assert torch.equal(S.load(path)["w"], torch.zeros(2, 2))


def test_a_build_on_a_deepspeed_enum_member_is_refused_and_changes_nothing(tmp_path):
    """ZeroStageEnum(2) is the process's one `gradients` member: setting attributes on it would change it for
    every later use. Refused by check and load, and the member is as it was."""
    path = _archive(tmp_path / "enum.pt", {"stage": _Call(ZeroStageEnum, 2, state={"planted": 1})})
    for read in (S.check, S.load):
        with pytest.raises(S.UnsafeCheckpoint, match=r"it sets attributes of a enum, which neither torch.save"):
            read(path)
    assert "planted" not in vars(ZeroStageEnum.gradients)


@pytest.mark.parametrize("raw", [b"\x80\x02\xff.", b"\x80\x02}q", b"\x80\x02h\x05."],
                         ids=["unknown-opcode", "cut-short", "unknown-memo"])
def test_a_pickle_torch_cannot_read_is_one_refusal(tmp_path, raw):
    """What made pickle.UnpicklingError (or another error) escape as a traceback is one refusal naming the file."""
    path = _archive(tmp_path / "odd.pt", raw=raw)
    for read in (S.check, S.load):
        with pytest.raises(S.UnsafeCheckpoint, match=rf"^refused to unpickle {path}: its pickle "):
            read(path)


def test_links_and_other_files_are_refused(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(2)}, good)
    link = tmp_path / "link.pt"
    link.symlink_to(good)
    for read in (S.check, S.load):
        with pytest.raises(S.UnsafeCheckpoint, match=rf"refused to unpickle {link}: it is a symbolic link"):
            read(link)


def test_latest_is_read_capped_and_the_tag_folder_must_be_a_folder(tmp_path):
    folder = tmp_path / "deepspeed"
    folder.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (folder / "global_step1").symlink_to(tmp_path / "elsewhere")
    latest = folder / "latest"
    latest.write_text("global_step1")
    with pytest.raises(S.UnsafeCheckpoint, match="global_step1.*is a symbolic link, not a checkpoint folder"):
        S.latest_tag(folder)
    with open(latest, "r+b") as f:
        f.truncate(2 ** 31)  # 2 GiB, sparse: read whole, it would take that much memory
    with pytest.raises(S.UnsafeCheckpoint, match=rf"refused {latest}: it holds more than {S.LATEST_CAP} bytes"):
        S.latest_tag(folder)
    latest.unlink()
    os.mkfifo(latest)  # a read would wait for a writer
    with pytest.raises(S.UnsafeCheckpoint, match=rf"refused {latest}: it is not a regular file"):
        S.latest_tag(folder)
    latest.unlink()
    latest.symlink_to(tmp_path / "elsewhere" / "latest")
    with pytest.raises(S.UnsafeCheckpoint, match=rf"refused {latest}: it is a symbolic link"):
        S.latest_tag(folder)


def test_what_unpickling_would_allocate_is_counted_per_opcode(tmp_path, monkeypatch):
    """Empty sets are 1 byte each in a pickle and 216 bytes each unpickled: the scan counts them before any is
    built (here against a budget of 64 MiB, which 300,000 of them exceed)."""
    monkeypatch.setattr(S, "BUDGET", 64 << 20)
    path = _archive(tmp_path / "sets.pt", raw=b"\x80\x02](" + b"\x8f" * 300_000 + b"e.")
    with pytest.raises(S.UnsafeCheckpoint, match="unpickling it would take more than 64 MiB of memory"):
        S.check(path)
