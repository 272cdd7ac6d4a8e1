"""cluster/quiet.py drops the library messages it names and nothing else; no Ray, no model (about a second)."""

import logging

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
