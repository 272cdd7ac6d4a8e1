"""The embedded cluster's temp dir (cluster/local.py), without starting Ray: private to this user (a fresh
`mkdtemp` per process, mode 0700, removed at exit), or RLHF_RAY_TMP only when nobody else can change it; and the
cluster file a job's driver joins is never written through a symlink planted in its place."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster import local

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_tmp_env(monkeypatch):
    monkeypatch.delenv(local.TMP_ENV, raising=False)


def test_the_default_is_private_per_process_and_removed_at_exit(no_tmp_env):
    """Ray makes its own temp dir mode 777 (for a shared /tmp/ray): the directory above it is the private one."""
    probe = ("import os, stat\nfrom cluster.local import ray_temp_dir\npath = ray_temp_dir()\n"
             "assert ray_temp_dir() == path and os.path.basename(path) == 'ray'\n"
             "private = os.path.dirname(path)\nst = os.lstat(private)\n"
             "print(private, oct(stat.S_IMODE(st.st_mode)), st.st_uid == os.geteuid())")
    runs = [subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
            for _ in range(2)]
    (first, mode, mine), (second, _, _) = (r.stdout.split() for r in runs)
    assert Path(first).name.startswith("rlhf-ray-") and mode == "0o700" and mine == "True"
    assert first != second  # not guessable from the pid
    assert not Path(first).exists() and not Path(second).exists()  # removed when each process exited
    assert len(first) < 40  # Ray's socket paths under it stay within the 107-character limit


def test_rlhf_ray_tmp_that_is_private_is_used_and_made_if_missing(tmp_path, monkeypatch):
    given = tmp_path / "ray"
    monkeypatch.setenv(local.TMP_ENV, str(given))
    assert local.ray_temp_dir() == str(given / "ray")
    assert given.is_dir() and given.stat().st_mode & 0o777 == 0o700


def _refused(path: Path, monkeypatch) -> str:
    monkeypatch.setenv(local.TMP_ENV, str(path))
    with pytest.raises(local.UnsafeTempDir) as e:
        local.ray_temp_dir()
    message = str(e.value)
    assert message.startswith(f"RLHF_RAY_TMP {path} ") and "\n" not in message
    return message


def test_a_symlink_is_refused(tmp_path, monkeypatch):
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert "is a symlink" in _refused(tmp_path / "link", monkeypatch)


def test_a_file_is_refused(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("")
    assert "is not a directory" in _refused(tmp_path / "f", monkeypatch)


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770, 0o702])
def test_a_directory_others_can_write_is_refused(mode, tmp_path, monkeypatch):
    (tmp_path / "d").mkdir()
    os.chmod(tmp_path / "d", mode)
    assert f"is writable by group or others (mode {mode:o})" in _refused(tmp_path / "d", monkeypatch)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_a_directory_of_another_user_is_refused(tmp_path, monkeypatch):
    (tmp_path / "d").mkdir(mode=0o700)
    os.chown(tmp_path / "d", 65534, 65534)
    assert "is owned by uid 65534, not by this user (uid 0)" in _refused(tmp_path / "d", monkeypatch)


def test_the_cluster_file_is_not_written_through_a_symlink(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    temp_dir = tmp_path / "ray"
    temp_dir.mkdir(mode=0o700)
    (temp_dir / local.CLUSTER_FILE).symlink_to(victim)
    local.write_cluster_file(str(temp_dir), "127.0.0.1:6379")
    assert victim.read_text() == "precious"
    cluster_file = temp_dir / local.CLUSTER_FILE
    assert not cluster_file.is_symlink() and cluster_file.read_text() == "127.0.0.1:6379"
    assert sorted(p.name for p in temp_dir.iterdir()) == [local.CLUSTER_FILE]  # no temp file left


def test_run_refuses_an_unsafe_rlhf_ray_tmp_before_anything_is_written(tmp_path, monkeypatch, capsys):
    import ray

    from rlhf_ray import cli

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("ray.init was called"))
    (tmp_path / "shared").mkdir()
    os.chmod(tmp_path / "shared", 0o777)
    monkeypatch.setenv(local.TMP_ENV, str(tmp_path / "shared"))
    assert cli.main(["run", "configs/tiny/sft.yaml", "--run-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: RLHF_RAY_TMP {tmp_path / 'shared'} is writable by group or others (mode 777)")
    assert err.count("\n") == 1 and not (tmp_path / "run").exists()
