"""Resuming a learner without unpickling anything foreign, and without a file's say over how much memory it takes.

DeepSpeed's checkpoint files are torch pickles, and DeepSpeed reads them with `torch.load(weights_only=False)`: a
file planted in a run directory (run directories sit on shared volumes) would run its code on `resume: auto`. Here
every one of them is read by torch's weights-only unpickler, which builds tensors, plain containers and the three
DeepSpeed types of `allowed()`, and refuses any other global before calling anything. DeepSpeed's file format
stays as it is, so a resume continues exactly where the run stopped.

The weights-only unpickler still does what a file tells it within those types: `bytearray(2**31)`, a million
empty sets, a storage that claims more bytes than the file holds, a deflated `data.pkl` that inflates to gigabytes,
a BUILD that sets attributes on a shared DeepSpeed enum member. So before torch reads anything, `_verified` checks
the file on its own terms (`verdict`, one function whose answer `check` and `load` share): a regular file (no
link), a zip directory of stored (uncompressed), non-overlapping members within the file, and a `data.pkl` read by
`_Scan`, which walks its opcodes as the unpickler would without building anything, adds up what each would
allocate against BUDGET, and lets through only the calls torch.save and DeepSpeed write, with arguments of the
shapes they write (each tensor within its storage, each storage within its member of the archive). Then torch
loads the file once with its storages memory-mapped, which catches what only torch knows (a dtype it rejects, an
enum value that does not exist). Every refusal is one UnsafeCheckpoint naming the file.

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
import enum
import errno
import io
import math
import os
import pickle
import re
import stat
import struct
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from torch import _weights_only_unpickler as _wou

from rlhf_ray.errors import UserError

AFTER = ("only tensors, plain containers and DeepSpeed's own counters are loaded from a checkpoint, and nothing in "
         "this file was run")
BUDGET = 512 << 20  # bytes unpickling may allocate for a file's objects (DeepSpeed's take ~30 per byte of data.pkl);
# its tensors' storages are the file's own bytes, mapped or read once
PICKLE_CAP = 16 << 20  # bytes of data.pkl (a 7B model's optimizer state holds well under 1 MB of it)
DIRECTORY_CAP = 16 << 20  # bytes of the zip directory (about 60 per member; one member per tensor storage)
LATEST_CAP = 256  # bytes of `latest` (a tag such as global_step1200)


class UnsafeCheckpoint(UserError):
    """A checkpoint file that would need more than tensors, plain containers and `allowed()` types to unpickle, or
    more memory than BUDGET, or a `latest` file or tag folder that leads elsewhere: refused before anything in it
    ran. A UserError: raised in a learner actor, the command line finds it inside the GroupError and prints one
    line (errors.py)."""


def refused(path: Path, reason: str) -> UnsafeCheckpoint:
    return UnsafeCheckpoint(f"refused to unpickle {path}: {reason}; {AFTER}")


def allowed() -> list[type]:
    """The types besides tensors and plain containers that DeepSpeed 0.19 pickles into our checkpoints (fp32 or bf16,
    ZeRO 0-3, CPU offload, LoRA), each inert data. How each is pickled is all `_Scan` lets through:
      LossScaler        the ZeRO optimizer's static loss scale (1 without fp16): a new instance (NEWOBJ, no
                        arguments) whose attributes BUILD sets from a dict.
      ZeroStageEnum     an int Enum (the ZeRO stage): called with its value, which looks a member up. Members are
                        shared by the whole process, so nothing may set attributes on one (no BUILD).
      fragment_address  a dataclass of two ints (ZeRO-1/2's map of parameter slices): as LossScaler.
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


def check(path: str | Path) -> None:
    """Raise UnsafeCheckpoint unless `verdict` lets torch's weights-only reader load `path`."""
    with _verified(Path(path)):
        pass


def load(path: str | Path, map_location: Any = None) -> Any:
    """torch.load with the weights-only unpickler and `allowed()`, of the very file `verdict` passed (read through
    the descriptor it checked); UnsafeCheckpoint for anything else, or for anything torch then fails on."""
    with _verified(Path(path)) as opened:
        return _torch_load(opened, map_location)


@contextlib.contextmanager
def _verified(path: Path) -> Iterator[str]:
    """Open `path`, pass `verdict` on it, and yield a name of the open file for torch to read: what was checked is
    what is loaded, even if `path` is replaced meanwhile. Whatever fails inside is one refusal naming `path`."""
    with _refusing(path), _open(path, lambda why: refused(path, why)) as f:
        verdict(path, f)
        yield f"/proc/self/fd/{f.fileno()}"


def verdict(path: Path, f: io.BufferedReader) -> None:
    """The one decision on a checkpoint file, open as `f` (a regular file): return if torch may load it, raise
    UnsafeCheckpoint naming `path` if not. Nothing is allocated beyond the caps before it is refused."""
    _Scan(path, *_archive(path, f)).run()
    _torch_load(f"/proc/self/fd/{f.fileno()}", "cpu", mmap=True)  # what only torch knows; storages mapped, not read


def _torch_load(name: str, map_location: Any, mmap: bool = False) -> Any:
    with _allowing_only(allowed()):
        return torch.load(name, map_location=map_location, weights_only=True, mmap=mmap)


@contextlib.contextmanager
def _refusing(path: Path) -> Iterator[None]:
    """Whatever a crafted file makes the checks or torch raise becomes one UnsafeCheckpoint naming it, not a
    traceback from inside torch (a missing file stays FileNotFoundError: nothing was planted)."""
    try:
        yield
    except (UnsafeCheckpoint, FileNotFoundError):
        raise
    except pickle.UnpicklingError as e:
        raise refused(path, _reason(e)) from None  # torch's own text advises weights_only=False
    except Exception as e:  # noqa: BLE001 (truncated, not torch's, odd arguments, out of memory: all one refusal)
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise refused(path, f"torch cannot read it ({type(e).__name__}: {first})") from None


def _reason(err: Exception) -> str:
    """What torch refused (a global's name, an opcode), without its advice to load with weights_only=False."""
    text = " ".join(str(err).split())
    named = re.search(r"GLOBAL ([\w.]+)", text)
    if named:
        return f"it names {named.group(1)}"
    why = re.search(r"WeightsUnpickler error: (.+?)(?: Check the documentation|$)", text)
    return why.group(1) if why else "it holds more than tensors and plain containers"


def _open(path: Path, refuse: Callable[[str], UnsafeCheckpoint]) -> io.BufferedReader:
    """`path` opened for reading if it is a regular file reached without following a link at its last component
    (a FIFO opens without waiting for a writer, and is refused)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise refuse("it is a symbolic link") from None
        raise
    f = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        f.close()
        raise refuse("it is not a regular file")
    return f


def read_capped(path: Path, cap: int, refuse: Callable[[str], UnsafeCheckpoint]) -> bytes:
    """The bytes of a small file beside the checkpoint's pickles (`latest`, a rank's random state), opened as `_open`
    opens them and read to `cap` at most; `refuse(why)` for a link, anything but a regular file, or more bytes."""
    with _open(path, refuse) as f:
        data = f.read(cap + 1)
    if len(data) > cap:
        raise refuse(f"it holds more than {cap} bytes")
    return data


def _archive(path: Path, f: io.BufferedReader) -> tuple[bytes, dict[str, int]]:
    """data.pkl's bytes and each member's size (by name inside the archive folder), once the zip directory shows
    what torch.save writes: one folder of stored members (never compressed), each within the file and none
    overlapping another, a directory and a data.pkl under their caps. Only then is anything read beyond the end
    record: a member's claimed sizes are checked before torch would allocate them."""
    size = os.fstat(f.fileno()).st_size
    end = zipfile._EndRecData(f)  # the end record, as ZipFile and torch's reader find it (the last one)
    if end is None:
        raise refused(path, "it is not the zip archive torch.save writes")
    if end[zipfile._ECD_SIZE] > DIRECTORY_CAP:
        raise refused(path, f"its zip directory claims {end[zipfile._ECD_SIZE]} bytes, over {DIRECTORY_CAP}")
    with zipfile.ZipFile(f) as z:
        # Bytes before the archive shift where ZipFile looks, not where torch's reader looks: the two would read
        # different members. torch.save writes none.
        if z.start_dir != end[zipfile._ECD_OFFSET]:
            raise refused(path, "it has bytes before its zip archive")
        infos = sorted(z.infolist(), key=lambda i: i.header_offset)
        members = {i.filename.partition("/")[2]: i for i in infos}
        if len(members) != len(infos) or len({i.filename.partition("/")[0] for i in infos}) != 1:
            raise refused(path, "its archive lists a member twice, or members outside one folder")
        for i, after in zip(infos, [*infos[1:], None]):
            if i.compress_type != zipfile.ZIP_STORED:  # a 1 MB member may inflate to gigabytes
                raise refused(path, f"{i.filename} is compressed ({i.file_size} bytes inflated), and torch.save "
                                    "stores its members as they are")
            end_at = i.header_offset + i.file_size
            if i.file_size != i.compress_size or end_at > (after.header_offset if after else size):
                raise refused(path, f"{i.filename} claims {i.file_size} bytes, more than the file holds there")
        pkl = members.get("data.pkl")
        if pkl is None or pkl.file_size > PICKLE_CAP:
            raise refused(path, f"its data.pkl is {'missing' if pkl is None else f'{pkl.file_size} bytes'} "
                                f"(at most {PICKLE_CAP})")
        return z.read(pkl), {name: i.file_size for name, i in members.items()}


_DICTS = ("dict", "odict")  # {} and OrderedDict()


class _Global(str):
    """A global as the unpickler resolves it ("torch.Size")."""


class _Obj:
    """A value the unpickler would build, as `_Scan` sees it: its kind ("list", "dict", "tensor", ...) and `n`, its
    items (a storage: its elements; bytes: their number)."""

    __slots__ = ("kind", "n")

    def __init__(self, kind: str, n: int = 0):
        self.kind, self.n = kind, n


def _is(value: Any, *kinds: str) -> bool:
    return isinstance(value, _Obj) and value.kind in kinds


def _ints(value: Any) -> bool:
    return type(value) is tuple and all(type(v) is int and v >= 0 for v in value)


class _Scan:
    """Walk `data` (a pickle) as torch's weights-only unpickler would: the same opcodes, each argument read the same
    way, globals resolved by torch's own function, building nothing. Literals stay themselves (numbers, strings,
    tuples of values), globals become `_Global`, anything else an `_Obj`. Each step adds to `cost` what the
    unpickler would allocate for it (a generous bound: an empty set is 216 bytes, a dict entry up to ~100, a
    tensor ~1 KB); over BUDGET is refused. Every call (REDUCE, NEWOBJ) and every BUILD must have the shape
    torch.save or DeepSpeed writes, which also bounds what a call allocates by its arguments."""

    def __init__(self, path: Path, data: bytes, members: dict[str, int]):
        self.path, self.file, self.members = path, io.BytesIO(data), members
        self.stack: list = []
        self.metastack: list[list] = []
        self.memo: dict[int, Any] = {}
        self.storages: dict[str, _Obj] = {}  # by key: torch builds each storage once, as its first claim says
        self.cost = 0
        allowed_types = allowed()
        self.names = {f"{t.__module__}.{t.__qualname__}": t for t in allowed_types}
        self.names.update(_wou._get_allowed_globals())
        self.enums = {n for n, t in self.names.items() if isinstance(t, type) and issubclass(t, enum.Enum)
                      and t in allowed_types}
        self.instances = {n for n, t in self.names.items() if t in allowed_types} - self.enums

    def refuse(self, reason: str) -> UnsafeCheckpoint:
        return refused(self.path, reason)

    def run(self) -> None:
        read, steps = self.file.read, _STEPS
        try:
            while (key := read(1)) != pickle.STOP:
                step = steps.get(key)
                if step is None:
                    raise self.refuse(f"its pickle {'ends early' if not key else f'uses opcode {key!r}'}, which "
                                      "the weights-only reader does not read")
                step(self)
                if self.cost > BUDGET:
                    raise self.refuse(f"unpickling it would take more than {BUDGET >> 20} MiB of memory")
        except UnsafeCheckpoint:
            raise
        except (IndexError, KeyError, ValueError, struct.error):  # an empty stack, a memo entry never put, ...
            raise self.refuse("its pickle is malformed") from None

    def push(self, value: Any, cost: int = 16) -> None:
        self.stack.append(value)
        self.cost += cost

    def pop_mark(self) -> list:
        items, self.stack = self.stack, self.metastack.pop()
        return items

    def _read(self, fmt: str, n: int) -> int:
        return struct.unpack(fmt, self.file.read(n))[0]

    # -- opcodes that build containers or literals --------------------------------------------------------------
    def mark(self) -> None:
        self.metastack.append(self.stack)
        self.stack = []
        self.cost += 64

    def tuple_n(self, n: Optional[int]) -> None:
        items = self.pop_mark() if n is None else [self.stack.pop() for _ in range(n)][::-1]
        self.push(tuple(items), 64 + 8 * len(items))

    def string(self, n: int) -> None:
        self.push(str(self.file.read(n), "utf-8", "surrogatepass"), 80 + 4 * n)  # up to 4 bytes a character

    def long1(self) -> None:
        n = self.file.read(1)[0]
        self.push(pickle.decode_long(self.file.read(n)), 48 + n)

    def put(self, index: int) -> None:
        self.memo[index] = self.stack[-1]
        self.cost += 128

    def add_items(self, kinds: tuple[str, ...], items: list, cost: int) -> None:
        target = self.stack[-1]
        if not _is(target, *kinds):
            raise self.refuse(f"it adds items to a {getattr(target, 'kind', type(target).__name__)}, not a "
                              f"{kinds[0]}")
        target.n += len(items)
        self.cost += cost * len(items)

    # -- opcodes that resolve or call ----------------------------------------------------------------------------
    def global_(self) -> None:
        module, name = _wou._read_global_instruction(self.file.readline)
        full = f"{module}.{name}"
        if module in _wou._blocklisted_modules or full not in self.names:
            raise self.refuse(f"it names {full}")
        self.push(_Global(full))

    def persistent_id(self) -> None:
        """A storage: ('storage', its class, key, location, elements), its bytes in the member data/<key>."""
        pid = self.stack.pop()
        if not (type(pid) is tuple and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Global)
                and type(pid[2]) is str and type(pid[4]) is int and pid[4] >= 0):
            raise self.refuse("it refers to something other than a tensor storage of its archive")
        _, cls, key, _, numel = pid
        if key not in self.storages:
            name = cls.rpartition(".")[2]
            dtype = torch.uint8 if name == "UntypedStorage" else torch.serialization.StorageType(name).dtype
            claimed, held = numel * torch._utils._element_size(dtype), self.members.get(f"data/{key}", -1)
            if claimed > held:
                raise self.refuse(f"a storage claims {claimed} bytes, and its member data/{key} holds "
                                  f"{max(held, 0)}")
            self.storages[key] = _Obj("storage", numel)
        self.push(self.storages[key], 512)

    def reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        rule = _CALLS.get(str(func)) if isinstance(func, _Global) else None
        if func in self.enums:
            rule = _enum
        result = rule(self, *args) if rule is not None and type(args) is tuple else None
        if result is None:
            raise self.refuse(f"it calls {func if isinstance(func, _Global) else 'a value'} with arguments "
                              "neither torch.save nor DeepSpeed writes")
        self.stack[-1] = result

    def newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        if cls not in self.instances or args != ():
            raise self.refuse(f"it makes a new {cls if isinstance(cls, _Global) else 'object'}, which neither "
                              "torch.save nor DeepSpeed writes")
        self.push(_Obj("instance"), 256)

    def build(self) -> None:
        """Sets attributes: only on a fresh DeepSpeed instance or OrderedDict (a state_dict's `_metadata`), never on
        a shared enum member, a tensor or a class."""
        state = self.stack.pop()
        target = self.stack[-1]
        if not (_is(target, "instance", "odict") and _is(state, *_DICTS)):
            raise self.refuse(f"it sets attributes of a {getattr(target, 'kind', type(target).__name__)}, which "
                              "neither torch.save nor DeepSpeed writes")
        self.cost += 128 * state.n


# Calls, by the global called: each returns what the call would build, or None when its arguments are not what
# torch.save or DeepSpeed writes. Costs: what the call allocates beyond its arguments.
def _tensor(scan: _Scan, storage=None, offset=None, size=None, stride=None, grad=None, hooks=None, meta=None,
            *more) -> Optional[_Obj]:
    """_rebuild_tensor_v2: a view of `size` and `stride` at `offset`, which must lie inside the storage (torch
    would grow a storage to fit, allocating what the file claims)."""
    if more or not (_is(storage, "storage") and type(offset) is int and offset >= 0 and _ints(size)
                    and _ints(stride) and len(size) == len(stride) and type(grad) is bool
                    and _is(hooks, "odict") and hooks.n == 0 and (meta is None or _is(meta, *_DICTS))):
        return None
    elements = math.prod(size)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if elements else 0
    if elements > storage.n or (elements and last >= storage.n):
        raise scan.refuse(f"a tensor of shape {tuple(size)[:8]} claims more than its storage's {storage.n} "
                          "elements")
    scan.cost += 1024
    return _Obj("tensor")


def _with_attributes(scan: _Scan, func=None, new_type=None, args=None, state=None, *more) -> Optional[_Obj]:
    """_rebuild_from_type_v2: a tensor with Python attributes (ZeRO-3's `ds_id`), set from a dict."""
    if more or func not in _TENSOR_CALLS or new_type not in ("torch.Tensor", "torch.nn.parameter.Parameter") \
            or type(args) is not tuple or not _is(state, *_DICTS):
        return None
    scan.cost += 128 * state.n
    return _TENSOR_CALLS[func](scan, *args)


def _parameter(scan: _Scan, data=None, grad=None, hooks=None, *more) -> Optional[_Obj]:
    ok = not more and _is(data, "tensor") and type(grad) is bool and _is(hooks, "odict") and hooks.n == 0
    return _Obj("tensor") if ok else None


def _ordered_dict(scan: _Scan, *args) -> Optional[_Obj]:
    return None if args else _Obj("odict")


def _encode(scan: _Scan, text=None, codec=None, *more) -> Optional[_Obj]:
    """bytes, which protocol 2 pickles as encode(str, 'latin1'): no other codec (hex doubles, utf-32 quadruples)."""
    if more or type(text) is not str or codec not in ("latin1", "latin-1"):
        return None
    scan.cost += len(text)
    return _Obj("bytes", len(text))


def _bytearray(scan: _Scan, *args) -> Optional[_Obj]:
    """bytearray(bytes) only: bytearray(n) would allocate n bytes from a number in the file."""
    if args and (len(args) > 1 or not _is(args[0], "bytes")):
        return None
    n = args[0].n if args else 0
    scan.cost += n
    return _Obj("bytes", n)


def _set(scan: _Scan, *args) -> Optional[_Obj]:
    if args and (len(args) > 1 or not _is(args[0], "list")):
        return None
    n = args[0].n if args else 0
    scan.cost += 256 + 64 * n  # a copy of the list's items, in a hash table
    return _Obj("set", n)


def _complex(scan: _Scan, *args) -> Optional[_Obj]:
    return _Obj("complex") if len(args) == 2 and all(type(a) in (int, float) for a in args) else None


def _size(scan: _Scan, dims=None, *more) -> Optional[_Obj]:
    if more or not _ints(dims):
        return None
    scan.cost += 64 + 8 * len(dims)
    return _Obj("size", len(dims))


def _device(scan: _Scan, kind=None, index=None, *more) -> Optional[_Obj]:
    ok = not more and type(kind) is str and len(kind) <= 64 and (index is None or type(index) is int)
    return _Obj("device") if ok else None


def _enum(scan: _Scan, value=None, *more) -> Optional[_Obj]:
    """ZeroStageEnum(value): a member looked up, nothing built."""
    return _Obj("enum") if not more and type(value) is int else None


_TENSOR_CALLS = {"torch._utils._rebuild_tensor_v2": _tensor, "torch._utils._rebuild_parameter": _parameter}
_CALLS: dict[str, Callable[..., Optional[_Obj]]] = {
    **_TENSOR_CALLS, "torch._tensor._rebuild_from_type_v2": _with_attributes,
    "collections.OrderedDict": _ordered_dict, "_codecs.encode": _encode, "builtins.bytearray": _bytearray,
    "builtins.set": _set, "builtins.complex": _complex, "torch.Size": _size, "torch.device": _device,
}

P = pickle
_STEPS: dict[bytes, Callable[[_Scan], None]] = {
    P.PROTO: lambda s: s.file.read(1),
    P.GLOBAL: _Scan.global_, P.REDUCE: _Scan.reduce, P.NEWOBJ: _Scan.newobj, P.BUILD: _Scan.build,
    P.BINPERSID: _Scan.persistent_id,
    P.MARK: _Scan.mark, P.TUPLE: lambda s: s.tuple_n(None), P.TUPLE1: lambda s: s.tuple_n(1),
    P.TUPLE2: lambda s: s.tuple_n(2), P.TUPLE3: lambda s: s.tuple_n(3), P.EMPTY_TUPLE: lambda s: s.push(()),
    P.EMPTY_LIST: lambda s: s.push(_Obj("list"), 96), P.EMPTY_DICT: lambda s: s.push(_Obj("dict"), 160),
    P.EMPTY_SET: lambda s: s.push(_Obj("set"), 256),
    P.APPEND: lambda s: s.add_items(("list",), [s.stack.pop()], 16),
    P.APPENDS: lambda s: s.add_items(("list",), s.pop_mark(), 16),
    P.SETITEM: lambda s: s.add_items(_DICTS, [(s.stack.pop(), s.stack.pop())], 128),
    P.SETITEMS: lambda s: s.add_items(_DICTS, s.pop_mark()[1::2], 128),
    P.NONE: lambda s: s.push(None), P.NEWFALSE: lambda s: s.push(False), P.NEWTRUE: lambda s: s.push(True),
    P.BININT: lambda s: s.push(s._read("<i", 4), 48), P.BININT1: lambda s: s.push(s.file.read(1)[0], 48),
    P.BININT2: lambda s: s.push(s._read("<H", 2), 48), P.BINFLOAT: lambda s: s.push(s._read(">d", 8), 48),
    P.LONG1: _Scan.long1,
    P.BINUNICODE: lambda s: s.string(s._read("<I", 4)), P.SHORT_BINSTRING: lambda s: s.string(s.file.read(1)[0]),
    P.BINGET: lambda s: s.push(s.memo[s.file.read(1)[0]], 8),
    P.LONG_BINGET: lambda s: s.push(s.memo[s._read("<I", 4)], 8),
    P.BINPUT: lambda s: s.put(s.file.read(1)[0]), P.LONG_BINPUT: lambda s: s.put(s._read("<I", 4)),
}


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
    """The tag `folder/latest` names: a real folder beside it (never a path or a link that leads elsewhere)."""
    latest = folder / "latest"

    def refuse(why: str) -> UnsafeCheckpoint:
        return UnsafeCheckpoint(f"refused {latest}: {why}")

    try:
        data = read_capped(latest, LATEST_CAP, refuse)
    except FileNotFoundError:
        raise FileNotFoundError(f"no DeepSpeed checkpoint in {folder} (no `latest` file)") from None
    tag = data.decode("utf-8", "replace").strip()
    if tag in ("", ".", "..") or "/" in tag or "\\" in tag or "\0" in tag:
        raise refuse(f"it names {tag[:80]!r}, not a checkpoint folder beside it")
    with contextlib.suppress(FileNotFoundError):
        mode = os.lstat(folder / tag).st_mode
        if stat.S_ISLNK(mode):
            raise refuse(f"it names {tag[:80]!r}, which is a symbolic link, not a checkpoint folder beside it")
        if stat.S_ISDIR(mode):
            return tag
    raise refuse(f"it names {tag[:80]!r}, not a checkpoint folder beside it")


def load_checkpoint(engine, folder: Path) -> str:
    """DeepSpeed's load_checkpoint of `folder` (weights, optimizer, LR schedule, step counters) with every file read
    weights-only, after this rank checked every file of the tag. All ranks call it together. Returns the path
    DeepSpeed loaded."""
    _check_load_path(engine)
    install(engine)
    tag = latest_tag(folder)
    for path in sorted((folder / tag).glob("*.pt")):  # each refused if it is a link (check opens with O_NOFOLLOW)
        check(path)
    path, _ = engine.load_checkpoint(str(folder), tag=tag)
    if path is None:
        raise FileNotFoundError(f"no DeepSpeed checkpoint in {folder / tag}")
    return path

