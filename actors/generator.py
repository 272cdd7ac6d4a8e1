"""Generator actor: one vLLM engine; samples rollouts and takes new weights in place.

The engine lives in the actor's process (CPU: in-process vLLM; GPU: the bundle's GPUs, tensor parallel over
them when `rollout.engine.tensor_parallel_size > 1`). New weights go straight into the engine's workers through
vLLM's weight-transfer API (rlhf_ray/engines/vllm_worker.py): this actor only calls the phases. Each bucket is
checked before it is loaded; a sync that fails after loading some leaves parts of two versions, and the actor then
serves nothing until a whole version lands.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional

import pyarrow as pa
import ray
import torch

from cluster import quiet, weight_sync
from rlhf_ray import rollout
from rlhf_ray.config import LoraConfig
from rlhf_ray.engines import vllm_engine

log = logging.getLogger(__name__)


class Generator:
    """Wrap with `ray.remote` (ActorGroup does) and name it `generator-<rank>`."""

    def __init__(self, model_path: str, dtype: str = "float32", kv_cache_mb: int = 256, seed: int = 0,
                 max_model_len: int = 1024, engine: Optional[dict] = None, version: int = 0,
                 lora: Optional[LoraConfig] = None, adapter: Optional[str] = None, trust_remote_code: bool = False):
        """lora: pushed weights are this LoRA's adapters (`model.lora.sync: adapters`), served on `model_path`
        through vLLM's LoRA support; adapter: the adapter folder `version` is (a checkpoint's), None: none yet."""
        quiet.actor_start()
        # Errors name the actor (`generator-3`) so a failed sync says which generator missed it.
        self.name = ray.get_runtime_context().get_actor_name() or "generator"
        tail = re.search(r"-(\d+)$", self.name)
        self.rank = int(tail.group(1)) if tail else 0
        # Each generator samples from its own stream: engine seed + rank.
        self.lora, self.adapter = lora, None
        self.llm = vllm_engine.build_llm(model_path, dtype, kv_cache_mb, seed + self.rank, max_model_len,
                                         engine=engine, lora_rank=lora.rank if lora else None,
                                         trust_remote_code=trust_remote_code)
        if adapter is not None:
            self._serve_adapter(adapter)
        self.version = version  # a generator started from a checkpoint's weights holds that policy version
        self.torn: Optional[tuple[int, str]] = None  # (version, why): a sync failed after loading part of it

    def weight_version(self) -> int:
        return self.version

    def generate(self, prompt_ids: list[list[int]], sampling: vllm_engine.Sampling,
                 prompts: Optional[list[str]] = None, seed: Optional[int] = None,
                 columns: Optional[list[dict]] = None) -> pa.Table:
        """Rollout rows (rollout.ROLLOUT_SCHEMA), each tagged with the weights version that produced it, and each
        carrying its prompt's `columns` (JSON text by name, `rollout.encode_columns`).

        seed: reseed the sampler (torch's generator, which vLLM's CPU and GPU samplers draw from when requests
        carry no seed of their own) with seed + rank first, so a batch's samples depend on its seed, weights and
        prompts only, not on what the engine sampled before: a resumed run draws what the unbroken run drew."""
        self._check_whole()
        if seed is not None:
            torch.manual_seed(seed + self.rank)
        t0 = time.perf_counter()
        rows = vllm_engine.generate(self.llm, prompt_ids, sampling, self.version, prompts, columns, self.adapter)
        table = rollout.to_table(rows, list(columns[0]) if columns else ())
        return rollout.with_seconds(table, time.perf_counter() - t0)  # busy time, for idle stats

    def score(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[list[float]]:
        """The engine's log p of each given response token at T = 1 (teacher-forced, via prompt logprobs): the
        sync probe compares it with policy rank 0's after every sync (stages/push.py)."""
        self._check_whole()
        return vllm_engine.response_logprobs(self.llm, prompt_ids, response_ids, self.adapter)

    def worker_pids(self) -> tuple[int, list[int]]:
        """This actor's process id and those of the engine's workers (test hook: with vLLM's multiprocessing on,
        the workers run in processes of their own)."""
        return os.getpid(), self.llm.collective_rpc("rlhf_pid")

    def sleep(self, level: int) -> None:
        """vLLM's sleep mode (GPU, a generator colocated with the policy): 1 frees the KV cache and moves the
        weights to host memory, 2 frees both. Nothing may be generating."""
        self.llm.sleep(level=level)

    def wake(self, tags: list[str]) -> None:
        """vLLM's `wake_up` for `tags`: ["weights"] before a sync, ["kv_cache"] before the next batch."""
        self.llm.wake_up(tags=tags)

    def open_weight_transfer(self, init: dict) -> None:
        """vLLM's `init_weight_transfer_engine` on every worker of the engine (vllm_worker.TransferInit: for the
        broadcast transport the workers join policy rank 0's group now, all members at the same time)."""
        if init["transport"] == "object_store" and self.worker_pids()[1] != [os.getpid()]:
            raise weight_sync.WeightSyncError(
                f"{self.name}: the engine's workers run in processes of their own (tensor parallelism, or "
                "VLLM_ENABLE_V1_MULTIPROCESSING=1), which cannot read Ray's object store: use cluster.weight_sync: "
                "broadcast")
        adapters = {"rank": self.lora.rank, "alpha": self.lora.alpha} if self.lora is not None else None
        self._phase("init_weight_transfer_engine", init_info={**init, "adapters": adapters, "reader_pid": os.getpid()})

    def update_weights(self, version: int, layout: list, refs: Optional[list] = None) -> dict:
        """Weights `version` into the engine's workers through vLLM's phases (start → update → finish): the workers
        receive the buckets of `layout` (the broadcast group's, or `refs` from the object store) and load each once
        it has passed its check. The actor never holds the bytes. Returns the workers' report (version, bytes,
        seconds).

        Raises WeightSyncError (naming this generator) on an older version, a timeout or a bad bucket. A failure
        before the first bucket was loaded leaves the engine on its old weights and version; after, the engine
        holds parts of two versions and serves nothing (`_check_whole`) until a whole version lands. The version
        it holds is taken again: a push made again after another generator died mid-push reaches the ones that
        loaded it already."""
        self._check_newer(version)
        folder = tempfile.mkdtemp(prefix=f"{self.name}-v{version}-") if self.lora is not None else None
        self._phase("start_weight_update")
        try:
            self._phase("update_weights", update_info={"version": version, "layout": layout, "refs": refs,
                                                       "adapter_dir": folder})
            self._phase("finish_weight_update")
        except weight_sync.WeightSyncError as e:
            try:
                loaded = max(r["loaded"] for r in self.llm.collective_rpc("rlhf_transfer_report"))
            except Exception:  # noqa: BLE001 (a worker gone: what it loaded is unknown, so assume some)
                loaded = "an unknown number"
            if loaded:
                self.torn = (version, f"a sync failed after loading {loaded} of {len(layout)} buckets ({e})")
            raise
        report = dict(self.llm.collective_rpc("rlhf_transfer_report")[0])
        self.llm.reset_prefix_cache()  # its KV came from the old weights
        if folder is not None:
            self._serve_adapter(folder)
        missed = list(range(self.version + 1, version))
        if missed:
            log.warning("%s: jumped from version %d to %d, missing %s", self.name, self.version, version, missed)
        self.version, self.torn = version, None
        return {**report, "missed": missed}

    def _phase(self, method: str, **kwargs) -> None:
        """One phase of vLLM's weight-transfer API on every worker; a failure names this generator."""
        try:
            self.llm.collective_rpc(method, kwargs=kwargs, timeout=None)
        except Exception as e:  # in-process the worker's own error, from worker processes vLLM's RuntimeError
            raise weight_sync.WeightSyncError(f"{self.name}: {method}: {e}") from None

    def _serve_adapter(self, folder: str) -> None:
        """Sample with the adapter in `folder` from now on: vLLM replaces the one it serves in place (same id); the
        folder it replaces is deleted (a checkpoint's, given at start, is not ours to delete)."""
        from vllm.lora.request import LoRARequest

        old = self.adapter
        self.adapter = LoRARequest("policy", 1, folder, load_inplace=True)
        if old is not None and Path(old.lora_path).name.startswith(f"{self.name}-v"):
            shutil.rmtree(old.lora_path, ignore_errors=True)

    def _check_whole(self) -> None:
        if self.torn is not None:
            version, why = self.torn
            raise weight_sync.WeightSyncError(
                f"{self.name} holds parts of versions {self.version} and {version}: {why}; it serves nothing until "
                "a whole version is pushed")

    def _check_newer(self, version: int) -> None:
        if version < self.version:
            raise weight_sync.WeightSyncError(f"{self.name}: offered version {version}, already at {self.version}")
