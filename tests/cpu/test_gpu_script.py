"""The hand-run GPU checks (tests/gpu/check_gpu.py) as their CPU dry run, so the script cannot rot between the
sessions that have a GPU: every check runs on the CPU with gloo and shrunken shapes and must pass."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_checks_pass_as_a_cpu_dry_run():
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "gpu" / "check_gpu.py")], cwd=ROOT,
                          env=dict(os.environ, RLHF_RAY_CHECK_ON_CPU="1"), capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("[ok]", "[FAIL]"))]
    print("\n".join(lines))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(lines) == 11 and all(line.startswith("[ok]") for line in lines)
    assert any("ZeRO-2 + LoRA" in line for line in lines)
