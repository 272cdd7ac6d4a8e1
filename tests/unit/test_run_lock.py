"""One run at a time per run directory (RUN_DIR/.lock), without Ray: the lock is taken and released; a second
`run`, `sample` or `submit` on a directory a live process holds is refused in one line naming the holder, before
anything there is written or deleted; a dead holder's lock (a gone pid, or a reused one) is taken over with a
message; another host's lock is refused with the file to remove; the lock goes however the run ends."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rlhf_ray import cli
from rlhf_ray.runtime import lock
from rlhf_ray.runtime.lock import LOCK, RunDirBusy, RunLock
from rlhf_ray.stages import pipeline

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path) -> str:
    demos = tmp_path / "demos.jsonl"
    demos.write_text(json.dumps({"prompt": "hi", "response": "hello"}) + "\n")
    cfg = tmp_path / "c.yaml"  # a hub name for the policy: the input checks pass without building a model
    cfg.write_text(f"name: locked\nstages: [sft]\nmodel: {{policy: org/some-policy}}\n"
                   f"data: {{demonstrations: {{path: {demos}}}, prompts: {{path: {demos}}}}}\n")
    return str(cfg)


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def holder(tmp_path):
    """A real second process that takes the lock of tmp_path/run and sleeps until killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from rlhf_ray.runtime.lock import RunLock
        RunLock({str(tmp_path / 'run')!r}, "rlhf-ray run held.yaml").acquire()
        print("held", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def no_pipeline(monkeypatch):
    """cmd_run without Ray: records what the pipeline would have been handed, and whether the lock was held."""
    calls = []

    def fake(cfg, run_dir, force=False, connect=None):
        calls.append({"force": force, "holder": json.loads((run_dir.path / LOCK).read_text())})
        return []

    monkeypatch.setattr(pipeline, "run", fake)
    return calls


def test_the_lock_names_its_holder_and_goes_on_release(tmp_path):
    run = tmp_path / "run"
    held = RunLock(run, "rlhf-ray run x.yaml").acquire()
    record = json.loads((run / LOCK).read_text())
    assert (record["pid"], record["host"], record["command"]) == (os.getpid(), socket.gethostname(),
                                                                   "rlhf-ray run x.yaml")
    assert record["since"] and record["pid_start"] and lock.alive(record) is True
    with pytest.raises(RunDirBusy, match=rf"{run} is in use by pid {os.getpid()} on {socket.gethostname()} since "):
        RunLock(run).acquire()
    held.release()
    assert not run.exists()  # the lock made the folder and nothing was written there: nothing is left


def test_a_second_run_is_refused_in_one_line_and_writes_nothing(tmp_path, holder, no_pipeline, capsys):
    run = tmp_path / "run"
    (run / "config.yaml").write_text("name: the first run's\n")
    (run / "metrics.jsonl").write_text('{"stage": "sft", "step": 1}\n')
    (run / "checkpoints" / "sft" / "step_000002.tmp").mkdir(parents=True)
    before = _snapshot(run)

    for argv in (["run", _config(tmp_path), "--run-dir", str(run), "--force"],
                 ["sample", _config(tmp_path), "--run-dir", str(run)]):
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"error: {run} is in use by pid {holder.pid} on "
                                                       f"{socket.gethostname()} since "), err
        assert "(rlhf-ray run held.yaml)" in err
    assert _snapshot(run) == before and (run / "checkpoints/sft/step_000002.tmp").is_dir()
    assert no_pipeline == []

    holder.kill()  # SIGKILL: no release; the lock stays behind and is taken over by the next run
    holder.wait()
    assert cli.main(["run", _config(tmp_path), "--run-dir", str(run), "--force"]) == 0
    err = capsys.readouterr().err
    assert f"its holder, pid {holder.pid} on {socket.gethostname()}" in err and "no longer running" in err
    assert no_pipeline[0]["force"] and no_pipeline[0]["holder"]["pid"] == os.getpid()  # deletions under our lock
    assert not (run / LOCK).exists()


def test_a_reused_pid_is_not_its_old_holder(tmp_path, capsys):
    """The pid is alive (our parent) but started at another time than the holder recorded: the holder is gone."""
    record = {**lock.me("rlhf-ray run old.yaml"), "pid": os.getppid(), "pid_start": 1}
    assert lock.alive(record) is False
    (tmp_path / LOCK).write_text(json.dumps(record))
    with RunLock(tmp_path, "rlhf-ray run new.yaml"):
        assert json.loads((tmp_path / LOCK).read_text())["command"] == "rlhf-ray run new.yaml"
    assert "no longer running; taking the run directory over" in capsys.readouterr().err


def test_another_hosts_lock_is_refused_with_the_file_to_remove(tmp_path, no_pipeline, capsys):
    run = tmp_path / "run"
    run.mkdir()
    record = {**lock.me("rlhf-ray run far.yaml"), "host": "gpu-node-7", "pid": 4242}
    (run / LOCK).write_text(json.dumps(record))
    assert lock.alive(record) is None
    # the same host name under another boot: rebooted since, or another machine of that name; not ours to judge
    assert lock.alive({**lock.me("x"), "boot_id": "another-boot"}) is None
    assert cli.main(["run", _config(tmp_path), "--run-dir", str(run)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pid 4242 on gpu-node-7" in err and f"remove {run / LOCK}" in err, err
    assert sorted(p.name for p in run.iterdir()) == [LOCK] and no_pipeline == []


def test_a_lock_without_a_holder_is_refused_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(lock.time, "sleep", lambda s: None)
    (tmp_path / LOCK).write_text("")
    with pytest.raises(RunDirBusy, match=rf"names no holder; if no run uses this directory, remove {tmp_path / LOCK}"):
        RunLock(tmp_path).acquire()


def test_a_dead_holders_lock_put_back_by_a_racing_run_is_not_deleted(tmp_path):
    """Between reading a dead holder's lock and removing it, another run may have replaced it with its own:
    the take-over removes only the lock it read."""
    dead = {**lock.me("dead"), "pid": 2 ** 22 + 1}
    fresh = lock.me("fresh")
    (tmp_path / LOCK).write_text(json.dumps(fresh))  # what is there now
    assert RunLock(tmp_path)._take_over(dead) is False  # what we read before: not taken, and its claim removed
    assert json.loads((tmp_path / LOCK).read_text())["token"] == fresh["token"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK]


def test_the_lock_goes_on_error_and_on_sigterm(tmp_path, monkeypatch):
    def boom(cfg, run_dir, force=False, connect=None):
        raise RuntimeError("a stage failed")

    monkeypatch.setattr(pipeline, "run", boom)
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="a stage failed"):
        cli.main(["run", _config(tmp_path), "--run-dir", str(run)])
    assert (run / "config.yaml").exists() and not (run / LOCK).exists()

    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as in `rlhf-ray run` (a test runner may have its own)
    try:
        with pytest.raises(SystemExit) as e, RunLock(run, "rlhf-ray run x"):
            assert (run / LOCK).exists()
            os.kill(os.getpid(), signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert e.value.code == 128 + signal.SIGTERM and not (run / LOCK).exists()


def test_submit_refuses_a_held_run_directory_before_any_request(tmp_path, holder, capsys, monkeypatch):
    """Nothing listens at 127.0.0.1:9: a request would fail differently. The run dir is visible here and held."""
    monkeypatch.chdir(ROOT)  # the config must lie under the current directory (what the job carries)
    argv = ["submit", "configs/tiny/ppo.yaml", "--address", "http://127.0.0.1:9", "--run-dir", str(tmp_path / "run")]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"is in use by pid {holder.pid}" in err, err
    lock.check_free(tmp_path / "elsewhere")  # a folder not visible here is the job's business


def test_a_rerun_after_a_killed_write_goes_on_and_a_corrupt_file_stops_it_in_one_line(tmp_path, no_pipeline, capsys):
    run = tmp_path / "run"
    run.mkdir()
    metrics = run / "metrics.jsonl"
    metrics.write_text('{"stage": "sft", "step": 1}\n{"stage": "sft", "st')  # killed mid-append
    assert cli.main(["run", _config(tmp_path), "--run-dir", str(run)]) == 0
    assert "metrics.jsonl:2: last line cut short" in capsys.readouterr().err
    assert metrics.read_text() == '{"stage": "sft", "step": 1}\n' and len(no_pipeline) == 1

    metrics.write_text('{"stage": "sft", "step": 1}\n{"stage": "sft", "st{"stage": "sft", "step": 2}\n')
    assert cli.main(["run", _config(tmp_path), "--run-dir", str(run)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {metrics}:2: not a JSON line") and err.count("\n") == 1, err
    assert len(no_pipeline) == 1 and not (run / LOCK).exists()


RACER = textwrap.dedent("""
    import os, random, sys, time
    from rlhf_ray.runtime import lock

    # Every file-system step of this process takes a random 0-200 ms (a hard link up to 1 s): a slow volume, on which
    # the steps of several take-overs interleave in any order (the issue's case: slow between a rename and a link).
    rng = random.Random(int(sys.argv[2]))

    def slow(step, most):
        def stepped(*args, **kwargs):
            time.sleep(rng.uniform(0, most))
            return step(*args, **kwargs)
        return stepped

    for name in ("open", "rename", "replace", "link", "unlink"):
        setattr(os, name, slow(getattr(os, name), 1.0 if name == "link" else 0.2))
    try:
        held = lock.RunLock(sys.argv[1], f"racer {sys.argv[2]}").acquire()
    except lock.RunDirBusy:
        print("busy", flush=True)
    else:
        print("held", flush=True)
        sys.stdin.read()  # holds until the test has heard from every racer
        held.release()
""")


def test_racing_take_overs_of_a_dead_holders_lock_leave_exactly_one_holder(tmp_path):
    """Rounds of four processes find the same dead holder's lock at once, each with every file-system step slowed
    at random: in each round exactly one takes the directory, and the lock names it."""
    for round_ in range(3):
        run = tmp_path / f"run{round_}"
        run.mkdir()
        (run / LOCK).write_text(json.dumps({**lock.me("rlhf-ray run dead.yaml"), "pid_start": 1}))  # pid reused
        racers = [subprocess.Popen([sys.executable, "-c", RACER, str(run), str(10 * round_ + i)], cwd=ROOT,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   text=True) for i in range(4)]
        said = [r.stdout.readline().strip() for r in racers]
        holders = [r for r, s in zip(racers, said) if s == "held"]
        assert sorted(said) == ["busy", "busy", "busy", "held"], said
        assert json.loads((run / LOCK).read_text())["pid"] == holders[0].pid
        for r in racers:
            r.communicate("")
        assert sorted(p.name for p in run.iterdir()) == []  # released; no claim left behind


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "huge", "folder"])
def test_a_lock_that_is_no_lock_file_is_refused_in_one_line(tmp_path, kind):
    """A FIFO would block the read forever, /dev/zero or a 2 GiB file would fill memory: each is refused, naming
    the file, before more than a few KiB is read."""
    path = tmp_path / LOCK
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "huge":
        with open(path, "wb") as f:
            f.truncate(2 ** 31)  # sparse
    else:
        path.mkdir()
    what = {"fifo": "not a regular file", "dev-zero": "a symbolic link", "huge": f"more than {lock.MAX_BYTES} bytes",
            "folder": "not a regular file"}[kind]
    def hung(signum, frame):
        raise TimeoutError(f"reading {path} hangs")

    previous = signal.signal(signal.SIGALRM, hung)  # a hang fails this test, not the suite
    signal.alarm(30)
    try:
        for attempt in (lambda: RunLock(tmp_path).acquire(), lambda: lock.check_free(tmp_path)):
            with pytest.raises(RunDirBusy) as e:
                attempt()
            assert str(e.value) == (f"{path} is {what}, not a lock this program writes; if no run uses {tmp_path}, "
                                    f"remove {path}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_run_names_are_bounded_and_a_long_run_dir_is_one_error(tmp_path, capsys, no_pipeline):
    """A name names a folder: over 100 characters it is refused as a config error (a 300-character one made a raw
    OSError); a --run-dir the file system cannot hold is one line naming the lock."""
    cfg = Path(_config(tmp_path))
    cfg.write_text(cfg.read_text().replace("name: locked", f"name: {'n' * 101}"))
    assert cli.main(["run", str(cfg), "--run-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "name:" in err and "101 characters; at most 100" in err, err
    assert not (tmp_path / "run").exists()

    long_dir = tmp_path / ("d" * 300)
    assert cli.main(["run", _config(tmp_path), "--run-dir", str(long_dir)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot take the lock {long_dir / LOCK}: File name too long") and \
        err.count("\n") == 1, err
    assert no_pipeline == []
