"""Fixtures of the e2e tests that drive `rlhf-ray run` in this process."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_session():
    """One embedded loopback Ray for every run of a module; `rlhf-ray run` reuses it. Relative paths in the configs
    are relative to the repository root, as for the command line."""
    import ray

    from cluster.local import init_ray

    cwd = os.getcwd()
    os.chdir(ROOT)
    init_ray(num_cpus=2, object_store_mb=256, dashboard=False)
    yield
    ray.shutdown()
    os.chdir(cwd)
