"""One embedded, loopback-only Ray session per test module."""

import pytest
import ray

from cluster.local import init_ray


@pytest.fixture(scope="module")
def ray_session():
    init_ray(num_cpus=2, object_store_mb=256, dashboard=False)
    yield
    ray.shutdown()
