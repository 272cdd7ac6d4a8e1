"""Generator actor: one vLLM engine; samples rollouts and takes new weights in place.

The engine lives in the actor's process (CPU: in-process vLLM; GPU: the bundle's GPUs, tensor parallel over
them when `rollout.engine.tensor_parallel_size > 1`). Weights arrive as versioned, checksummed buckets
(cluster/weight_sync.py), through the object store or a broadcast group: every bucket of a version is fetched and
verified before any is loaded, so a failed sync leaves the engine on its old weights and its old version.
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
from rlhf_ray import lora, rollout
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
        if seed is not None:
            torch.manual_seed(seed + self.rank)
        t0 = time.perf_counter()
        rows = vllm_engine.generate(self.llm, prompt_ids, sampling, self.version, prompts, columns, self.adapter)
        table = rollout.to_table(rows, list(columns[0]) if columns else ())
        return rollout.with_seconds(table, time.perf_counter() - t0)  # busy time, for idle stats

    def score(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[list[float]]:
        """The engine's log p of each given response token (teacher-forced, via prompt logprobs).

        Test and debugging hook: the CPU tests compare it with the learner's log-probs to show a weight sync
        landed; not called by the drivers (PPO's log-probs come from `generate` and the learners)."""
        return vllm_engine.response_logprobs(self.llm, prompt_ids, response_ids, self.adapter)

    def worker_pids(self) -> tuple[int, list[int]]:
        """This actor's process id and those of the engine's workers (test hook: with vLLM's multiprocessing on,
        the workers run in processes of their own)."""
        return os.getpid(), self.llm.collective_rpc("rlhf_pid")

    def update_weights(self, version: int, bucket_refs: list, timeout_s: float = 60.0) -> dict:
        """Object-store transport: fetch every bucket of `version` (zero-copy views of shared memory on the
        learner's node), verify all, then load them in place.

        Raises WeightSyncError (naming this generator) on a stale version, a timeout or a bad bucket."""
        self._check_newer(version)
        t0 = time.perf_counter()
        buckets = []
        for i, ref in enumerate(bucket_refs):
            try:
                buckets.append(ray.get(ref, timeout=max(0.0, timeout_s - (time.perf_counter() - t0))))
            except ray.exceptions.GetTimeoutError:
                raise weight_sync.WeightSyncError(
                    f"{self.name}: version {version}: bucket {i} of {len(bucket_refs)} not received in {timeout_s} s"
                ) from None
        return self._apply(version, buckets, time.perf_counter() - t0)

    def join_weight_group(self, host: str, port: int, rank: int, world_size: int, backend: str = "gloo",
                          timeout_s: float = 60.0) -> None:
        """Broadcast transport: join learner rank 0's group as `rank` (all members join at the same time; a group
        joined before is left)."""
        self.group = None
        self.group = weight_sync.BroadcastGroup(host, port, rank, world_size, backend, timeout_s)

    def receive_weights(self, plan: weight_sync.Plan) -> dict:
        """Broadcast transport: receive the buckets of `plan` (their version comes in each bucket's header),
        verify all, then load them in place."""
        t0 = time.perf_counter()
        try:
            buckets = [self.group.receive(entries, i) for i, entries in enumerate(plan)]
        except weight_sync.WeightSyncError as e:
            self.group = None  # a broken group is left (closing its connections); the fleet forms a new one
            raise weight_sync.WeightSyncError(f"{self.name}: {e}") from None
        version = buckets[0].version if buckets else -1
        self._check_newer(version)
        return self._apply(version, buckets, time.perf_counter() - t0)

    def _serve_adapter(self, folder: str) -> None:
        """Sample with the adapter in `folder` from now on: vLLM replaces the one it serves in place (same id); the
        folder it replaces is deleted (a checkpoint's, given at start, is not ours to delete)."""
        from vllm.lora.request import LoRARequest

        old = self.adapter
        self.adapter = LoRARequest("policy", 1, folder, load_inplace=True)
        if old is not None and Path(old.lora_path).name.startswith(f"{self.name}-v"):
            shutil.rmtree(old.lora_path, ignore_errors=True)

    def _check_newer(self, version: int) -> None:
        if version <= self.version:
            raise weight_sync.WeightSyncError(f"{self.name}: offered version {version}, already at {self.version}")

    def _apply(self, version: int, buckets: list[weight_sync.Bucket], fetch_s: float) -> dict:
        t0 = time.perf_counter()
        try:
            buckets = weight_sync.checked(buckets, version)
        except weight_sync.WeightSyncError as e:
            raise weight_sync.WeightSyncError(f"{self.name}: {e}") from None
        t1 = time.perf_counter()
        if self.lora is not None:  # adapters: written as an adapter folder that vLLM loads for the next request
            folder = Path(tempfile.mkdtemp(prefix=f"{self.name}-v{version}-"))
            lora.write_adapter(folder, [pair for b in buckets for pair in b.named()], self.lora)
            self._serve_adapter(str(folder))
        else:
            vllm_engine.load_buckets(self.llm, buckets)
        missed = list(range(self.version + 1, version))
        if missed:
            log.warning("%s: jumped from version %d to %d, missing %s", self.name, self.version, version, missed)
        self.version = version
        return {"version": version, "missed": missed, "fetch_s": fetch_s, "check_s": t1 - t0,
                "load_s": time.perf_counter() - t1, "bytes": sum(b.nbytes for b in buckets)}
