"""One run at a time per run directory: `RUN_DIR/.lock`, taken before anything in the directory is written or deleted.

Two runs on one directory would delete each other's `.tmp` checkpoints, `final/<stage>/` folders and metrics rows.
The lock is a file created with O_CREAT | O_EXCL that holds its holder as JSON (pid, host, since, command).
Why not fcntl/flock: on NFS those depend on the lock daemon (absent under `nolock` mounts, in many containers)
and on FUSE mounts (gcsfuse, s3fs) they lock this host only; an O_EXCL create is atomic on NFSv3+ and every
local filesystem, and the file says who holds the directory, which a refusal should name.

A file outlives a killed process, so a lock found is checked: the holder is alive when it is on this host (same
host name, boot and pid namespace), its pid is running, and that pid started when the holder recorded (a reused
pid has another start time). A dead holder's lock is taken over with a message; a live one is refused; one held
on another host cannot be checked from here, so it is refused with the file to remove if that run is gone.

A take-over is correct under any interleaving of runs, however slow the file system between steps: only the run
that creates `.lock.<dead holder's token>` (O_EXCL: one run per dead holder) may replace the lock, and it does so
only after reading, with that claim made, that the lock still names the dead holder. Nothing else changes a lock
away from a holder's token but that holder's release, and a token never comes back, so between that read and the
replacing rename the lock cannot change. The lock is read as what anyone could have put there: without following
a link, without waiting on a FIFO, at most MAX_BYTES.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shlex
import signal
import socket
import stat
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Optional

from rlhf_ray.errors import UserError

LOCK = ".lock"
MAX_BYTES = 4096  # a holder record is ~400 bytes
TOKEN = re.compile(r"[0-9a-f]{32}")  # me()'s uuid4().hex: a take-over's claim is named after it


class RunDirBusy(UserError):
    """Another run holds the run directory: one line naming the directory and its holder."""


def _read_first(path: str) -> Optional[str]:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> Optional[tuple[int, str]]:
    """(start time in clock ticks since boot, state letter) of a running pid, from /proc; None if it is not there."""
    stat = _read_first(f"/proc/{pid}/stat")
    if stat is None:
        return None
    fields = stat.rpartition(")")[2].split()  # the command name in parentheses may hold spaces
    return int(fields[19]), fields[0]


def _pid_ns() -> Optional[str]:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def me(command: str) -> dict:
    """The holder record of this process."""
    ticks = _start_ticks(os.getpid())
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": command, "boot_id": _read_first("/proc/sys/kernel/random/boot_id"), "pid_ns": _pid_ns(),
            "pid_start": ticks[0] if ticks else None, "token": uuid.uuid4().hex}


def alive(holder: dict) -> Optional[bool]:
    """True: the holder runs; False: it is gone; None: unknowable from here (another host, boot or pid namespace)."""
    here = me("")
    if holder.get("host") != here["host"]:
        return None
    if holder.get("boot_id") != here["boot_id"] or holder.get("pid_ns") != here["pid_ns"]:
        # A reboot since, or another machine or container that carries the same host name: its pids are not
        # ours to look up, and taking a live run's directory is the one mistake this lock must not make.
        return None
    try:
        pid = int(holder["pid"])
    except (TypeError, ValueError):
        return None  # not a record this module wrote: refused, naming the file
    if here["pid_start"] is None:  # no /proc (macOS): whether the pid exists is all there is
        return _pid_exists(pid)
    ticks = _start_ticks(pid)
    if ticks is None or ticks[1] in "ZX":
        return False
    return holder.get("pid_start") in (None, ticks[0])  # another start time: the pid was reused


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _not_a_lock(path: Path, what: str) -> RunDirBusy:
    return RunDirBusy(f"{path} is {what}, not a lock this program writes; if no run uses {path.parent}, remove "
                      f"{path}")


def _read_capped(path: Path) -> bytes:
    """`path`'s bytes, if it is a regular file of at most MAX_BYTES reached without a link; else RunDirBusy."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # a FIFO opens without a writer
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _not_a_lock(path, "a symbolic link") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _not_a_lock(path, "not a regular file")
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise _not_a_lock(path, f"more than {MAX_BYTES} bytes")
    return data


def read_holder(path: Path, wait_s: float = 2.0) -> Optional[dict]:
    """The holder record at `path`; None if the file is gone; RunDirBusy if it is no lock file at all. A file just
    created is empty until its holder has written it, so an unreadable one is read again for `wait_s` before it
    counts as unreadable ({})."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            holder = json.loads(_read_capped(path))
            if isinstance(holder, dict) and "pid" in holder:
                return holder
        except FileNotFoundError:
            return None
        except RunDirBusy:
            raise
        except (OSError, ValueError, RecursionError):
            pass
        if time.monotonic() >= deadline:
            return {}
        time.sleep(0.1)


def who(holder: dict) -> str:
    return (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')} "
            f"({holder.get('command') or 'command unknown'})")


def busy_message(run_dir: Path, holder: dict, state: Optional[bool]) -> str:
    path = run_dir / LOCK
    if not holder:
        return (f"{run_dir} is locked by {path}, which names no holder; if no run uses this directory, "
                f"remove {path}")
    if state is None:
        return (f"{run_dir} is in use by {who(holder)}, which cannot be checked from here (another host, boot "
                f"or container); if that run is gone, remove {path}")
    return f"{run_dir} is in use by {who(holder)}; wait for it to end, stop it, or give another --run-dir"


def refuse_unless_gone(run_dir: Path, holder: dict) -> None:
    """Raise RunDirBusy unless `holder` (a record read from run_dir's lock; {} when unreadable) is known gone."""
    state = alive(holder) if holder else None
    if state is not False:
        raise RunDirBusy(busy_message(run_dir, holder, state))


def check_free(run_dir: Path) -> None:
    """Raise RunDirBusy if a live or uncheckable holder has `run_dir`; takes nothing, removes nothing."""
    holder = read_holder(Path(run_dir) / LOCK)
    if holder is not None:
        refuse_unless_gone(Path(run_dir), holder)


class RunLock:
    """`lock = RunLock(run_dir, command).acquire()` (RunDirBusy if taken), then `with lock: ...` releases it on
    the way out, whatever the way. Inside, SIGTERM (while its handler is the default) raises SystemExit, so the
    release runs on `kill` / `rlhf-ray stop` too; a stage installs its own handler over it (stopping.py)."""

    def __init__(self, run_dir: str | Path, command: Optional[str] = None):
        self.run_dir = Path(run_dir).expanduser()
        self.path = self.run_dir / LOCK
        self.holder = me(command or shlex.join(["rlhf-ray", *sys.argv[1:]]))
        self.held = False
        self.made_dir = False
        self._sigterm = None

    def acquire(self) -> "RunLock":
        try:
            self.made_dir = not self.run_dir.exists()
        except OSError as e:  # a name too long, a folder we may not search
            raise UserError(f"cannot take the lock {self.path}: {e.strerror or e}") from None
        for attempt in range(5):  # each pass takes the lock, refuses, or loses a race and looks again
            if self._create():
                self.held = True
                return self
            holder = read_holder(self.path)
            if holder is None:
                continue  # released between our create and our read
            refuse_unless_gone(self.run_dir, holder)
            if self._take_over(holder):
                self.held = True
                return self
            time.sleep(0.1 * (attempt + 1))  # another run is taking it over: let it write its record
        raise RunDirBusy(f"{self.path}: could not take the lock: other runs kept taking it over first; if no run "
                         f"uses {self.run_dir}, remove {self.path} and any {LOCK}.* file beside it")

    def _create(self) -> bool:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)  # again each time: a releasing run may have removed it
            _write_new(self.path, self.holder)
        except FileExistsError:
            return False
        except OSError as e:  # a name too long, a read-only volume, no permission
            raise UserError(f"cannot take the lock {self.path}: {e.strerror or e}") from None
        return True

    def _take_over(self, dead: dict) -> bool:
        """Replace `dead`'s lock (read from the lock, its holder known gone) with ours; False if another run got
        there first or the lock changed since. See the module's docstring for why no interleaving gives two
        holders."""
        token = dead.get("token")
        if not isinstance(token, str) or not TOKEN.fullmatch(token):
            raise RunDirBusy(busy_message(self.run_dir, {}, None))  # not a record this module wrote
        claim = self.path.with_name(f"{LOCK}.{token}")
        try:
            os.close(os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            return False  # another run claimed this take-over
        try:
            now = read_holder(self.path, wait_s=0)
            if now is None or now.get("token") != token:
                return False  # taken over and maybe released since we read it
            mine = self.path.with_name(f"{LOCK}.{self.holder['token']}.new")
            _write_new(mine, self.holder)
            os.rename(mine, self.path)
        finally:
            claim.unlink(missing_ok=True)
        print(f"{self.path}: its holder, {who(dead)}, is no longer running; taking the run directory over",
              file=sys.stderr, flush=True)
        return True

    def release(self) -> None:
        """Remove the lock if it is still this process's (a forked child inherits the object, not the lock), and
        the run directory if this lock made it and nothing was written there (a run refused early leaves none)."""
        if not self.held or os.getpid() != self.holder["pid"]:
            return
        self.held = False
        with contextlib.suppress(RunDirBusy):  # replaced by something that is no lock: not ours to remove
            holder = read_holder(self.path, wait_s=0)
            if holder and holder.get("token") == self.holder["token"]:
                self.path.unlink(missing_ok=True)
        if self.made_dir:
            with contextlib.suppress(OSError):  # not empty: the run wrote there, or another run holds it now
                self.run_dir.rmdir()

    def __enter__(self) -> "RunLock":
        if not self.held:
            self.acquire()
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self._sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        return self

    def __exit__(self, *exc) -> None:
        if self._sigterm is not None:
            signal.signal(signal.SIGTERM, self._sigterm)
            self._sigterm = None
        self.release()


def _write_new(path: Path, holder: dict) -> None:
    """Create `path` (O_EXCL: FileExistsError if anything is there, a link included) holding `holder`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(holder) + "\n")
        f.flush()
        os.fsync(f.fileno())  # readers on other NFS clients see the holder as soon as they see the file


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)
