"""The package's layers, checked from the source: every import (including those inside functions) points to the
same layer or one below, the math imports only torch and the standard library, and no modules import each other
in a circle. docs/architecture.md draws the same layers."""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("rlhf_ray", "actors", "cluster")

# Lowest first. A module may import from its own layer and the ones above it in this list, never from below it.
LAYERS = [
    ("algos", ["rlhf_ray.algos"]),  # pure torch: the RL math, losses, forward helpers, batches
    ("cluster", ["cluster"]),  # Ray plumbing that knows nothing of RLHF: pools, actor groups, weight sync
    ("core", ["rlhf_ray.errors", "rlhf_ray.bounds", "rlhf_ray.yaml_tree", "rlhf_ray.config", "rlhf_ray.config_cluster", "rlhf_ray.config_checks",
              "rlhf_ray.peer_names", "rlhf_ray.data", "rlhf_ray.rows", "rlhf_ray.models", "rlhf_ray.lora", "rlhf_ray.rollout",
              "rlhf_ray.rewards"]),
    ("engines", ["rlhf_ray.engines"]),  # DeepSpeed and vLLM wrappers, scorers' functions: no Ray
    ("actors", ["actors"]),  # thin Ray actors, one engine each
    ("runtime", ["rlhf_ray.runtime"]),  # run directory, checkpoints, monitor, stopping, faults, jobs
    ("stages", ["rlhf_ray.stages"]),  # the drivers: pipeline, sft, label, rm, dpo, ppo and their fleet
    ("entry", ["rlhf_ray.cli", "rlhf_ray.doctor", "rlhf_ray.bench"]),  # the command line and the benchmark
]


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = path
    return mods


def _imports(path: Path, module: str) -> set[str]:
    """Every module name `path` imports, absolute, anywhere in the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def _layer(module: str) -> int:
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS here and to docs/architecture.md")


def _own(name: str, mods: dict[str, Path]) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name if name and name not in PACKAGES else None


def _edges() -> dict[str, set[str]]:
    mods = _modules()
    return {m: {t for n in _imports(p, m) if (t := _own(n, mods)) and t != m} for m, p in mods.items()}


def test_every_module_has_a_layer_and_imports_only_downward():
    upward = [f"{m} ({LAYERS[_layer(m)][0]}) imports {t} ({LAYERS[_layer(t)][0]})"
              for m, targets in _edges().items() if m not in PACKAGES for t in targets if _layer(t) > _layer(m)]
    assert not upward, "imports that run upward:\n  " + "\n  ".join(sorted(upward))


def test_the_math_imports_only_torch_and_the_standard_library():
    allowed = set(sys.stdlib_module_names) | {"torch", "rlhf_ray"}
    bad = [f"{m} imports {n}" for m, p in _modules().items() if m.startswith("rlhf_ray.algos")
           for n in _imports(p, m) if n.split(".")[0] not in allowed
           or (n.startswith("rlhf_ray") and not n.startswith("rlhf_ray.algos") and n != "rlhf_ray")]
    assert not bad, "\n".join(sorted(bad))


def test_no_import_circles():
    edges = _edges()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m, path):
        state[m] = 1
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(t):] + [t]))
            if t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])


def test_the_walk_sees_imports_inside_functions_and_relative_ones(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import torch\ndef f():\n    from rlhf_ray.stages import ppo\n    from . import rollout\n")
    found = _imports(src, "rlhf_ray.algos.m")
    assert {"torch", "rlhf_ray.stages.ppo", "rlhf_ray.algos.rollout"} <= found
    assert _layer("rlhf_ray.stages.ppo") > _layer("rlhf_ray.algos.rl_math")
