"""cluster/quiet.py drops the library messages it names and nothing else; no Ray, no model (a few seconds: two
subprocesses call torch's gather)."""

import logging
import os
import subprocess
import sys

import pytest

from cluster import quiet

FRESH_HEAD = ("\x1b[1mLlamaForSequenceClassification LOAD REPORT\x1b[0m from: /run/final/sft\n"
              "Key            | Status     | \n"
              "---------------+------------+-\n"
              "lm_head.weight | UNEXPECTED | \n"
              "score.weight   | MISSING    | \n"
              "\n"
              "Notes:\n- UNEXPECTED:\tcan be ignored ...\n- MISSING:\tthose params were newly initialized ...")

FRESH_ENCODER_HEAD = ("\x1b[1mBertForSequenceClassification LOAD REPORT\x1b[0m from: /site-packages/model\n"
                      "Key               | Status  | \n"
                      "------------------+---------+-\n"
                      "classifier.weight | MISSING | \n"
                      "classifier.bias   | MISSING | \n"
                      "\n"
                      "Notes:\n- MISSING:\tthose params were newly initialized ...")


def _passes(logger: str, msg: str, *args) -> bool:
    record = logging.getLogger(logger).makeRecord(logger, logging.WARNING, __file__, 1, msg, args, None)
    return logging.getLogger(logger).filter(record)


@pytest.fixture
def quieted(monkeypatch):
    monkeypatch.delenv("RLHF_RAY_VERBOSE", raising=False)
    quiet.actor_start()
    quiet.actor_start()  # twice: still one filter per pattern
    for name, pattern in quiet.DROPPED:
        filters = logging.getLogger(name).filters
        assert sum(isinstance(f, quiet._Drop) and f.pattern.pattern == pattern for f in filters) == 1, name


@pytest.mark.parametrize("logger, msg, args", [
    ("vllm.engine.arg_utils", "The global random seed is set to %d. Since VLLM_ENABLE_V1_MULTIPROCESSING ...", (0,)),
    ("vllm.config.vllm", "Enforce eager set, disabling torch.compile, CUDAGraphs, and JIT kernel warmup.", ()),
    ("vllm.platforms.cpu", "Triton is not installed. triton-cpu is expected on x86 CPUs.", ()),
    ("vllm.v1.worker.cpu_worker", "%s is not found in LD_PRELOAD. For best performance ...", ("libtcmalloc",)),
    ("vllm.v1.worker.cpu_worker", "CPU backend doesn't allow to use `torch.set_num_threads` after the thread ...", ()),
    ("vllm.model_executor.model_loader.reload.layerwise", "%s: Failed to load weights", ("RotaryEmbedding",)),
    ("DeepSpeed", "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it.", ()),
    ("transformers.modeling_utils", FRESH_HEAD, ()),
    ("transformers.modeling_utils", FRESH_ENCODER_HEAD, ()),
    ("transformers.modeling_utils", FRESH_ENCODER_HEAD.replace("weight |", "WEIGHT |").replace("bias   |", "weight |")
     .replace("WEIGHT |", "bias   |"), ()),  # the rows in the other order (they follow set order: it varies)
    ("vllm.utils.torch_utils", "OMP_NUM_THREADS=%s is set; leaving Torch threads at %d for serving. ...", ("2", 2)),
])
def test_named_noise_is_dropped(quieted, logger, msg, args):
    assert not _passes(logger, msg, *args)


@pytest.mark.parametrize("logger, msg, args", [
    ("vllm.model_executor.model_loader.reload.layerwise", "%s: Failed to load weights", ("LlamaDecoderLayer",)),
    ("vllm.v1.worker.cpu_worker", "Out of memory in the KV cache", ()),
    ("vllm.engine.arg_utils", "something else; The global random seed is set to 0", ()),
    # a report with more than the fresh head: another missing key, or the score head alone missing
    ("transformers.modeling_utils", FRESH_HEAD.replace("| \n\n", "| \nnorm.weight | MISSING | \n\n"), ()),
    ("transformers.modeling_utils", FRESH_HEAD.replace("lm_head.weight | UNEXPECTED | \n", ""), ()),
    ("transformers.modeling_utils", FRESH_ENCODER_HEAD.replace("classifier.bias", "pooler.dense.bias"), ()),
])
def test_other_messages_still_print(quieted, logger, msg, args):
    assert _passes(logger, msg, *args)


def test_actor_env_lets_the_drivers_own_settings_win(monkeypatch):
    monkeypatch.delenv("RLHF_RAY_VERBOSE", raising=False)
    monkeypatch.delenv("TORCH_CPP_LOG_LEVEL", raising=False)
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "DEBUG")
    env = quiet.actor_env()
    assert env["VLLM_LOGGING_LEVEL"] == "DEBUG" and env["TORCH_CPP_LOG_LEVEL"] == "ERROR"
    monkeypatch.setenv("RLHF_RAY_VERBOSE", "1")
    assert quiet.actor_env() == {"RLHF_RAY_VERBOSE": "1"}


GATHER_LOOP = """
import sys, tempfile, warnings
import torch, torch.distributed as dist
{quiet}
dist.init_process_group("gloo", init_method="file://" + tempfile.mktemp(), rank=0, world_size=1)
out, x = torch.zeros(2), torch.ones(2)
for _ in range(4):  # as ZeRO-3 does: a gather per layer, and a catch_warnings block between (weight_sync has one)
    dist.all_gather_into_tensor(out, x)
    with warnings.catch_warnings():
        pass
dist.destroy_process_group()
"""


@pytest.mark.parametrize("quieted_process", [False, True])
def test_the_zero3_gather_warning_repeats_per_call_unless_dropped(monkeypatch, quieted_process):
    """torch 2.13's FutureWarning on all_gather_into_tensor, from the real function: Python's once-per-site memory is
    cleared by each catch_warnings exit, so it prints on every pass of the loop; actor_start's filter drops it."""
    monkeypatch.delenv("RLHF_RAY_VERBOSE", raising=False)
    code = GATHER_LOOP.format(quiet="from cluster import quiet; quiet.actor_start()" if quieted_process else "")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                          env={**os.environ, "GLOO_SOCKET_IFNAME": "lo"})
    assert proc.stderr.count("all_gather_into_tensor` is deprecated") == (0 if quieted_process else 4), proc.stderr
