"""The peer for `rlhf-ray bench`: TRL in a virtualenv of its own, driven through trl_peer.py in a subprocess.

TRL pins its own transformers/accelerate and must not touch our venv, so it lives in `<cache>/bench/trl-venv`.
trl 1.12.0 is the last release that still ships `trl.experimental.ppo` (1.13 removed PPOTrainer); GRPO and PPO
are measured on the same install. `python -m rlhf_ray.bench.peer --install` builds the venv (needs the package
index; CI calls it before the tests, which run without network).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rlhf_ray.models import cache_dir

TORCH = "torch==2.13.0"  # first, alone: this machine kind keeps the CPU wheel locally; unpinned pulls CUDA builds
PINS = ["trl==1.12.0", "transformers==5.24.0", "accelerate==1.15.0", "datasets==5.2.0",
        "requests==2.34.2"]  # trl 1.12 imports requests (its vllm client) without declaring it
SCRIPT = Path(__file__).with_name("trl_peer.py")
_INSTALL_HINT = "run `python -m rlhf_ray.bench.peer --install` first (needs the package index)"


def venv_dir() -> Path:
    return cache_dir() / "bench" / "trl-venv"


def venv_python(path: Path | None = None) -> Path:
    return (path or venv_dir()) / "bin" / "python"


def _stamp(path: Path) -> Path:
    return path / "rlhf-ray-pins.txt"


def _pip(python: Path, *args: str) -> None:
    proc = subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", *args],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"pip install {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def ensure_venv(path: Path | None = None) -> Path:
    """Create the TRL venv with the pinned versions once; a venv whose stamp matches the pins is left alone."""
    path = path or venv_dir()
    want = "\n".join([TORCH, *PINS]) + "\n"
    stamp = _stamp(path)
    if stamp.exists() and stamp.read_text() == want:
        return path
    shutil.rmtree(path, ignore_errors=True)  # half-built or built with other pins
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    python = venv_python(path)
    _pip(python, TORCH)
    _pip(python, *PINS)
    stamp.write_text(want)
    return path


def _env(threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", CUDA_VISIBLE_DEVICES="",
               TRL_EXPERIMENTAL_SILENCE="1", TOKENIZERS_PARALLELISM="false")
    return env


def run_trl(spec: dict, timeout_s: float) -> dict:
    """Run trl_peer.py on `spec` (keys: see that script) in the TRL venv; its output JSON as a dict."""
    python = venv_python()
    if not _stamp(venv_dir()).exists() or not python.exists():
        raise RuntimeError(f"the TRL venv is missing at {venv_dir()}: {_INSTALL_HINT}")
    with tempfile.TemporaryDirectory(prefix="trl-peer-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec))
        try:
            proc = subprocess.run([str(python), str(SCRIPT), str(spec_path), str(out_path)], cwd=tmp,
                                  env=_env(int(spec.get("threads", 2))), capture_output=True, text=True,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired as e:
            tail = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr or ""
            msg = f"TRL {spec.get('algo')} run timed out after {timeout_s:.0f} s:\n{tail[-3000:]}"
            raise RuntimeError(msg) from None
        if proc.returncode != 0 or not out_path.exists():
            raise RuntimeError(f"TRL {spec.get('algo')} run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return json.loads(out_path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install", action="store_true", help="create the TRL venv (needs the package index)")
    parser.add_argument("--venv", type=Path, default=None, help=f"where (default {venv_dir()})")
    args = parser.parse_args()
    if not args.install:
        parser.error("nothing to do: pass --install")
    start = time.monotonic()
    path = ensure_venv(args.venv)
    print(f"TRL venv ready at {path} ({time.monotonic() - start:.0f} s)")


if __name__ == "__main__":
    main()
