"""Every test runs offline and loopback-only (the Makefile sets the same for `make test`); shared fixtures."""

import os

import pytest

for key, value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "VLLM_HOST_IP": "127.0.0.1",
    "MASTER_ADDR": "127.0.0.1",
    "GLOO_SOCKET_IFNAME": "lo",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(key, value)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> str:
    """The tiny test model (random Llama, local tokenizer), built once per session into a temp folder."""
    from rlhf_ray import models

    folder = tmp_path_factory.mktemp("tiny")
    models.make_tiny_model(folder)
    return str(folder)
