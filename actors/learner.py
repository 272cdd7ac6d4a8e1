"""Learner: one rank of a DeepSpeed engine for a policy, critic or reward model, as a Ray actor.

Thin on purpose: the training logic is in `rlhf_ray.engines.ds_engine`; this class holds the engine and exposes a few
typed methods. Every method that touches weights is a collective under ZeRO (and a gradient step is one under
any stage), so the ActorGroup must call it on all ranks together, each with its own equal shard.
"""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path
from typing import Iterator, Literal, Optional

import numpy as np
import ray
import torch

from cluster import quiet, weight_sync
from cluster.actor_group import DistributedActor
from cluster.local import listening_socket
from rlhf_ray import lora
from rlhf_ray.algos import forward, packing
from rlhf_ray.algos.forward import Batch, Loss
from rlhf_ray.config import LoraConfig, TrainConfig
from rlhf_ray.engines import ds_engine, safe_checkpoint
from rlhf_ray.models import load_policy, load_value_model, resolve_model

Kind = Literal["policy", "critic", "reward"]


class Learner(DistributedActor):
    """kind: `policy` (causal LM) or `critic`/`reward` (one-label sequence classifier, per-token values).

    total_steps: optimizer steps the LR schedule spans. batch_size: sequences per optimizer step across all ranks
    (default train.batch_size)."""

    def __init__(self, model: str, kind: Kind, train: TrainConfig, dtype: str = "float32", seed: int = 0,
                 total_steps: int = 1, batch_size: Optional[int] = None, lora_cfg: Optional[LoraConfig] = None,
                 trust_remote_code: bool = False):
        quiet.actor_start()
        if kind not in ("policy", "critic", "reward"):
            raise ValueError(f"learner kind must be policy, critic or reward, got {kind!r}")
        self.model_path, self.kind, self.train = resolve_model(model), kind, train
        self.dtype, self.seed, self.total_steps, self.batch_size = dtype, seed, total_steps, batch_size
        self.rank, self.engine, self.lora, self.trust_remote_code = 0, None, lora_cfg, trust_remote_code
        self._scratch: list[np.ndarray] = []  # rank 0's packing buffers for weight syncs (`_buckets`)
        self.packed = False  # padding-free forwards (train.packing), decided in build_engine

    def setup_distributed(self, master_addr: str, master_port: int, rank: int, world_size: int, local_rank: int,
                          backend: str = "gloo", timeout_s: float = 300.0) -> None:
        """Join the group, then build the engine."""
        super().setup_distributed(master_addr, master_port, rank, world_size, local_rank, backend, timeout_s)
        ds_engine.init_deepspeed_comm(backend)
        self.rank = rank
        self.build_engine(world_size)

    def build_engine(self, world_size: int) -> None:
        """The DeepSpeed engine, on the process group this process has joined (every rank loads the full model;
        ZeRO-3 partitions it). Separate from `setup_distributed` so tests can build several learners in one
        process of a group."""
        torch.manual_seed(self.seed)  # a fresh value head starts the same on every rank
        load = load_policy if self.kind == "policy" else load_value_model
        model = load(self.model_path, self.dtype, self.trust_remote_code)
        if self.lora is not None:  # frozen base, trained adapters (and a value model's head)
            model = lora.wrap(model, self.lora, self.kind)
        # Padding-free forwards need per-position outputs: a decoder (an encoder reward model pools [CLS]).
        self.packed = self.train.packing and (self.kind == "policy" or getattr(model, "score", None) is not None)
        model = ds_engine.prepare_model(model, self.train)
        config = ds_engine.ds_config(self.train, world_size, self.dtype, self.batch_size)
        self.engine = ds_engine.build_engine(model, config, self.total_steps, self.train.warmup_steps,
                                             self.train.lr_schedule)

    def train_step(self, batch: Batch, loss: Loss) -> dict[str, float]:
        """One optimizer step; `batch` is this rank's shard (micro_batch_size x gradient accumulation rows)."""
        micro = ds_engine.micro_batches(batch, self.train)
        return ds_engine.train_step(self.engine, micro, loss, self.packed)

    def evaluate(self, batch: Batch, loss: Loss) -> dict[str, float]:
        """`loss` and its metrics over this rank's shard of a held-out set, no gradients (all ranks together)."""
        micro = ds_engine.split_micro_batches(batch, self.train.micro_batch_size, exact=False)
        return ds_engine.eval_step(self.engine, micro, loss, self.packed)

    def _forward(self, batch: Batch, fn) -> torch.Tensor:
        """fn(engine, micro_batch) over micro-batches, no gradients, concatenated on CPU (packed: padding-free)."""
        outs = []
        for mb in ds_engine.split_micro_batches(batch, self.train.micro_batch_size, exact=False):
            mb = {k: v.to(self.engine.device) for k, v in mb.items()}
            outs.append(ds_engine.eval_forward(self.engine, lambda e: fn(packing.Packed(e) if self.packed else e,
                                                                          mb)).cpu())
        return torch.cat(outs)

    def logprobs(self, batch: Batch, response_len: int, temperature: float = 1.0,
                 adapters: bool = True) -> torch.Tensor:
        """(B, response_len) log p of each row's last response_len tokens at sampling temperature `temperature`
        (batch: input_ids, attention_mask). adapters=False (LoRA): the base model's, i.e. the reference's."""
        off = self.engine.module.disable_adapter() if not adapters else contextlib.nullcontext()
        with off:
            return self._forward(batch, lambda e, mb: forward.logprobs(e, mb["input_ids"], mb["attention_mask"],
                                                                         response_len, temperature))

    def values(self, batch: Batch, response_len: int) -> torch.Tensor:
        """(B, response_len) V(s_t) before each response token (critic / reward model)."""
        return self._forward(batch, lambda e, mb: forward.values(e, mb["input_ids"], mb["attention_mask"],
                                                                   response_len))

    @property
    def pushes_adapters(self) -> bool:
        """A LoRA policy with `model.lora.sync: adapters` pushes its adapters alone, else the merged weights."""
        return self.kind == "policy" and self.lora is not None and self.lora.sync == "adapters"

    def weight_plan(self, bucket_bytes: int) -> weight_sync.Plan:
        """The layout of every weight version in buckets of at most `bucket_bytes` (the same for every version)."""
        specs = ds_engine.adapter_specs if self.pushes_adapters else ds_engine.weight_specs
        return weight_sync.plan(specs(self.engine), bucket_bytes)

    def weight_layout(self, bucket_bytes: int) -> list:
        """`weight_plan` as plain types (weight_sync.layout): what every generator's workers receive."""
        return weight_sync.layout(self.weight_plan(bucket_bytes))

    def _buckets(self, version: int, bucket_bytes: int, ring: int = 1):
        """`version`'s buckets one at a time on rank 0, each packed as its tensors are gathered (every rank takes
        part in the ZeRO-3 gathers; the others yield nothing), into a ring of `ring` buffers kept from sync to sync
        (weight_sync.pack)."""
        named = (ds_engine.named_adapter_weights if self.pushes_adapters else ds_engine.named_full_weights)
        named = _wrong_weights(version, named(self.engine, copy=False))  # tests only: unarmed, `named` as it is
        plan = self.weight_plan(bucket_bytes)
        need = max(weight_sync.plan_bytes(b) for b in plan)
        if self.rank == 0 and (len(self._scratch) < ring or self._scratch[0].nbytes < need):
            self._scratch = [np.zeros(need, dtype=np.uint8) for _ in range(ring)]
        return weight_sync.pack(named, plan, version, self._scratch[:ring] if self.rank == 0 else None)

    def export_buckets(self, version: int, bucket_bytes: int) -> Optional[list[ray.ObjectRef]]:
        """Object-store transport: the full weights as checksummed buckets, each put as soon as it is packed; rank 0
        returns their refs, others None."""
        refs = [ray.put(b) for b in self._buckets(version, bucket_bytes)]
        return refs if self.rank == 0 else None

    # Broadcast transport (NCCL on GPU, gloo on CPU): rank 0 is the source of a group with the generators.

    def open_weight_group(self) -> Optional[tuple[str, int]]:
        """Rank 0: listen for the weight-sync group's store on this node; returns (host, port)."""
        if self.rank != 0:
            return None
        host = self.get_node_ip()
        self._sync_sock = listening_socket(host)
        return host, self._sync_sock.getsockname()[1]

    def join_weight_group(self, host: str, port: int, world_size: int, backend: str = "gloo",
                          timeout_s: float = 60.0) -> None:
        """Rank 0 joins as rank 0 of the group (generators join as 1..G at the same time; a group joined before is
        left); others do nothing."""
        if self.rank == 0:
            self.sync_group = None
            self.sync_group = weight_sync.BroadcastGroup(host, port, 0, world_size, backend, timeout_s,
                                                         self._sync_sock)

    def broadcast_weights(self, version: int, bucket_bytes: int) -> int:
        """Stream `version` to the generators (receiving `weight_plan(bucket_bytes)`): every rank gathers, rank 0
        packs each bucket and sends it while it gathers and packs the next (weight_sync.IN_FLIGHT buffers), so no
        rank ever holds the whole model. Returns the bytes sent (0 on other ranks, which take part in the gathers)."""
        buckets = self._buckets(version, bucket_bytes, ring=weight_sync.IN_FLIGHT)
        if self.rank != 0:
            return sum(b.nbytes for b in buckets)  # nothing is yielded: the gathers alone
        try:
            return self.sync_group.send(buckets)
        except weight_sync.WeightSyncError:
            self.sync_group = None  # closes its connections: the generators still waiting fail now, not at timeout
            raise

    def save(self, out_dir: str, checkpoint: bool = True) -> Optional[str]:
        """An HF folder at out_dir (rank 0 writes it, with the tokenizer) and, with checkpoint, the DeepSpeed
        checkpoint (optimizer and scheduler state, every rank's partition) in out_dir/deepspeed, with each rank's
        random generators beside it (taken last: what the next step's dropout draws from)."""
        folder = ds_engine.save_hf(self.engine, out_dir, tokenizer_from=self.model_path,
                                    trust_remote_code=self.trust_remote_code)
        if checkpoint:
            self.engine.save_checkpoint(str(Path(out_dir) / "deepspeed"))
            ds_engine.save_rng_state(Path(out_dir) / "deepspeed")
        return str(folder) if folder is not None else None

    def load_checkpoint(self, out_dir: str) -> None:
        """Resume weights, optimizer, LR schedule, step counters and this rank's random generators from a folder
        written by `save`. Every file is read weights-only (a run directory may hold files someone else planted):
        safe_checkpoint.UnsafeCheckpoint for one that needs more, on every rank, with nothing in it run."""
        safe_checkpoint.load_checkpoint(self.engine, Path(out_dir) / "deepspeed")
        if ds_engine.load_rng_state(Path(out_dir) / "deepspeed") is None and self.rank == 0:
            print(f"resume: {out_dir} holds no random state (written by an older version): training goes on with "
                  "fresh random draws, so dropout masks differ from the unbroken run's", flush=True)

    def parameter_counts(self) -> tuple[int, int]:
        """Bench hook: (trained, all) parameters of the model (with LoRA the adapters against the whole)."""
        params = list(self.engine.module.parameters())
        count = lambda ps: sum(int(getattr(p, "ds_numel", p.numel())) for p in ps)  # noqa: E731 (ZeRO-3: full size)
        return count(p for p in params if p.requires_grad), count(params)

    def peak_memory_mb(self) -> float:
        """Bench hook: the most GPU memory this process allocated, or on CPU its peak resident size (MiB)."""
        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated() / 2**20
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    def state_digest(self) -> str:
        """Checksum of this rank's view of the full weights (ZeRO-3: all-gathered), to show ranks agree.

        Test and debugging hook (tests/cpu/test_learner.py: ranks agree, a resumed learner equals the saved one);
        not called by the drivers. A collective under ZeRO-3: call it on every rank."""
        named = ds_engine.named_full_weights(self.engine, on_all_ranks=True)
        return weight_sync.digest(t for _, t in named)


def _wrong_weights(version: int, named: Iterator[tuple[str, Optional[torch.Tensor]]]
                   ) -> Iterator[tuple[str, Optional[torch.Tensor]]]:
    """Sender-side faults no checksum can see (rlhf_ray/runtime/faults.py; tests/e2e/test_sync_probe.py): the
    buckets are packed and checksummed as if right. `wrong_bucket=N`: version N leaves with its first tensor
    doubled; `swap_names=N`: with the tensors of the first two names of one shape exchanged (in plan order, so
    each goes out under the other's name). Unarmed: `named` as it is."""
    if weight_sync.fault_armed("wrong_bucket", version):
        (name, first), rest = next(named), named
        return itertools.chain([(name, None if first is None else first * 2)], rest)  # a copy: the engine's stays
    if weight_sync.fault_armed("swap_names", version):
        return _swapped([(n, None if t is None else t.clone()) for n, t in named])  # ZeRO-3 frees its gathers
    return named


def _swapped(named: list[tuple[str, Optional[torch.Tensor]]]) -> Iterator[tuple[str, Optional[torch.Tensor]]]:
    by_shape: dict = {}
    for i, (_, t) in enumerate(named):
        if t is not None:
            by_shape.setdefault(tuple(t.shape), []).append(i)
    pair = next((ix[:2] for ix in by_shape.values() if len(ix) > 1), None)
    if pair is not None:
        (a, ta), (b, tb) = named[pair[0]], named[pair[1]]
        named[pair[0]], named[pair[1]] = (a, tb), (b, ta)
    return iter(named)
