"""The weight push of a PPO run: one object owns the transport, the group, the plan, the version and the probe.

    push(v): policy rank 0 packs version v in checksummed buckets (cluster/weight_sync.py) -> every generator's
    vLLM workers receive and check them through vLLM's weight-transfer phases (engines/vllm_worker.py) -> the
    probe: one fixed sequence's log-probs from each generator against policy rank 0's.

Transports (`cluster.weight_sync`, resolved once): `object_store` (rank 0 `ray.put`s the buckets, the workers read
them zero-copy) or `broadcast` (a process group of policy rank 0 and every generator worker: gloo on CPU, NCCL on
GPU, formed at start and again whenever a generator was replaced: a group cannot take in a new member). A
generator that dies during a push is replaced and the push is made again; every wait is bounded by
`cluster.call_timeout_s`. The probe stops the run when a generator serves other weights than the learner holds:
the buckets' checksums catch bytes flipped in transit, the probe what they cannot (a wrong tensor sent, a name
swapped, a stale tied head).
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Literal, Optional

import ray
import torch

from cluster.actor_group import ActorGroup, GroupError
from rlhf_ray import models
from rlhf_ray.config import ConfigError
from rlhf_ray.errors import UserError
from rlhf_ray.runtime import faults

MB = 1 << 20
BUCKET_BYTES = 64 << 20
Transport = Literal["object_store", "broadcast"]

PROBE_TEXT = " The quick brown fox jumps over the lazy dog. One, two, three, four, five."
PROBE_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.05}
"""Largest mean |log p| gap over the probe's tokens between a generator and policy rank 0 holding the same weights:
two implementations of one model (vLLM's kernels, transformers') agree to ~1e-5 in fp32 and ~1e-2 in bf16 (8 bits
of mantissa); a wrong tensor moves it by orders of magnitude more (tests/e2e/test_sync_probe.py measures both)."""


class SyncMismatch(UserError):
    """A generator serves other weights than policy rank 0 holds after a sync."""


def resolve(weight_sync: str, policy_gpus: float, generator_gpus: float, tensor_parallel: int = 1) -> Transport:
    """`object_store` or `broadcast` for `cluster.weight_sync`. `auto`: broadcast when the policy and the
    generators are on GPUs (NCCL) or a generator's engine runs worker processes of its own (tensor parallel: those
    are not Ray workers and cannot read the object store), else the object store (on CPU it syncs SmolLM2 faster
    than gloo: see docs/benchmarks.md)."""
    if weight_sync != "auto":
        return weight_sync
    own_workers = generator_gpus > 0 or tensor_parallel > 1
    return "broadcast" if (policy_gpus > 0 and generator_gpus > 0) or own_workers else "object_store"


def backend(policy_gpus: float) -> str:
    return "nccl" if policy_gpus > 0 else "gloo"


@dataclass
class Probe:
    """One fixed sequence: the first training prompt and PROBE_TEXT (cut to the run's response length, so the
    sequence fits the engine's max_model_len as any prompt and response do)."""

    prompt_ids: list[int]
    response_ids: list[int]
    tolerance: float

    @classmethod
    def make(cls, tokenizer, prompt_ids: list[int], dtype: str, max_response_len: int) -> "Probe":
        text = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
        return cls(list(prompt_ids), text[:max_response_len], PROBE_TOLERANCE[dtype])

    def batch(self) -> dict:
        ids = torch.tensor([self.prompt_ids + self.response_ids])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@dataclass
class WeightPush:
    """Policy rank 0 -> every generator, for one run (see the module docstring)."""

    transport: Transport
    backend: str
    policy: ActorGroup
    generators: ActorGroup
    tensor_parallel: int
    timeout_s: float
    version: int
    """The version every generator holds (the policy learner holds it too whenever generation is awaited)."""
    probe: Optional[Probe] = None
    restart: object = None
    """fleet's replacement of a dead generator: restart(group, rank, phase)."""
    sleep_level: Optional[int] = None
    """rollout.engine.sleep_level: the generators sleep while the policy trains (`rest`), wake for the push."""
    bucket_bytes: int = BUCKET_BYTES
    plan: list = field(init=False, default=None)
    members: list = field(init=False, default_factory=list)
    """The generator actors whose workers opened the transfer now set up (a replacement is not among them)."""
    gaps: list = field(init=False, default_factory=list)
    """The last probe's gap per generator."""
    seconds: dict = field(init=False, default_factory=dict)
    """The last push's export (object store: gather, pack, checksum, put) and probe seconds (the bench)."""

    # ------------------------------------------------------------ the push

    def __call__(self, version: int) -> list[dict]:
        """Weights `version` to every generator (each loads them after the generation queued on it before), then
        the probe; each generator's load report. A generator that dies meanwhile is replaced, the push made again."""
        phase = "sync: push"
        ranks = list(range(len(self.generators)))
        self._wake(["weights"])  # level 2 freed them: the push writes into fresh memory
        for attempt in itertools.count():
            try:
                loaded = self._send(version, ranks, kill_at=version if attempt == 0 else None)
            except GroupError as e:
                if not e.died:
                    raise
                for rank in e.ranks:
                    self.restart(self.generators, rank, phase)  # started on the run's first weights: pushed below
                continue
            self.version = version
            self._wake(["kv_cache"])  # before the probe and the next batch
            t0 = time.perf_counter()
            self.check(ranks)
            self.seconds["probe_s"] = time.perf_counter() - t0
            return loaded

    def rest(self) -> None:
        """Colocated generators sleep while the policy trains (rollout.engine.sleep_level; nothing is generating:
        validate refuses sleep with max_staleness > 0)."""
        if self.sleep_level:
            self.generators.call(lambda a, r: a.sleep.remote(self.sleep_level), self.timeout_s, "sleep")

    def _wake(self, tags: list[str]) -> None:
        if self.sleep_level:
            self.generators.call(lambda a, r: a.wake.remote(tags), self.timeout_s, f"wake: {tags[0]}")

    def bring(self, rank: int) -> None:
        """A replaced generator brought to the run's version, then probed (the others keep theirs)."""
        phase = f"sync: weights for generator-{rank}"
        self._send(self.version, [rank])
        self.check([rank])
        print(f"{phase}: at version {self.version}", flush=True)

    def _send(self, version: int, ranks: list[int], kill_at: Optional[int] = None) -> list[dict]:
        """`version` to the generators `ranks`, through the transport; their load reports."""
        gens, t, phase = self.generators, self.timeout_s, "sync: push"
        actors = [gens.actors[r] for r in ranks]
        if self.members != actors:
            self.open(ranks)
        if self.plan is None:
            self.plan = self.policy.call(lambda a, r: a.weight_layout.remote(self.bucket_bytes), t, "sync: plan")[0]
        t0, self.seconds["export_s"] = time.perf_counter(), 0.0  # broadcast: the export overlaps the receive
        if self.transport == "object_store":
            refs = self.policy.call(lambda a, r: a.export_buckets.remote(version, self.bucket_bytes), t,
                                    "sync: export")[0]
            self.seconds["export_s"] = time.perf_counter() - t0
            received = [a.update_weights.remote(version, self.plan, refs) for a in actors]
            return gens.get(received, t, phase, ranks=ranks)
        received = [a.update_weights.remote(version, self.plan) for a in actors]
        sent = self.policy.map(lambda a, r: a.broadcast_weights.remote(version, self.bucket_bytes))
        if kill_at is not None:
            faults.kill_actors("kill_in_sync", kill_at)
        try:
            loaded = gens.get(received, t, phase, ranks=ranks)
        except GroupError:
            self.members = []  # the group is broken: formed again before the push is made again
            ray.wait(sent, num_returns=len(sent), timeout=t)  # the policy's side fails too: let it
            raise
        self.policy.get(sent, t, phase)
        return loaded

    def open(self, ranks: list[int]) -> None:
        """vLLM's `init_weight_transfer_engine` on the generators `ranks`: for the broadcast, policy rank 0
        (rank 0) and each of their workers (tensor-parallel rank w of the i-th: 1 + i * tp + w) form a new group."""
        gens, t, tp = self.generators, self.timeout_s, self.tensor_parallel
        actors = [gens.actors[r] for r in ranks]
        if self.transport == "object_store":
            gens.get([a.open_weight_transfer.remote({"transport": "object_store", "timeout_s": t}) for a in actors],
                     t, "sync: open", ranks=ranks)
        else:
            host, port = self.policy.call(lambda a, r: a.open_weight_group.remote(), t, "sync: group")[0]
            world = 1 + len(actors) * tp
            info = lambda i: {"transport": "broadcast", "timeout_s": t, "host": host, "port": port,  # noqa: E731
                              "rank_offset": 1 + i * tp, "world_size": world, "backend": self.backend}
            joins = [a.open_weight_transfer.remote(info(i)) for i, a in enumerate(actors)]
            refs = self.policy.map(lambda a, r: a.join_weight_group.remote(host, port, world, self.backend, t))
            self.policy.get(refs, t, "sync: form the weight group")
            gens.get(joins, t, "sync: form the weight group", ranks=ranks)
        self.members = actors

    # ------------------------------------------------------------ the probe

    def check(self, ranks: list[int]) -> None:
        """Every generator of `ranks` scores the probe as policy rank 0 does, within the dtype's tolerance; else
        SyncMismatch naming the generator, the version and both numbers."""
        if self.probe is None:
            return
        p, t = self.probe, self.timeout_s
        n = len(p.response_ids)
        learner = self.policy.call(lambda a, r: a.logprobs.remote(p.batch(), n), t, "sync: probe")[0][0]
        scored = self.generators.get([self.generators.actors[r].score.remote([p.prompt_ids], [p.response_ids])
                                      for r in ranks], t, "sync: probe", ranks=ranks)
        self.gaps = []
        for rank, (lp,) in zip(ranks, scored):
            gap = (torch.tensor(lp) - learner).abs().mean().item()
            self.gaps.append(gap)
            if not gap <= p.tolerance:  # NaN fails too
                raise SyncMismatch(
                    f"sync probe: generator-{rank} serves other weights than policy rank 0 after the sync of "
                    f"version {self.version}: the probe's mean log-prob is {torch.tensor(lp).mean().item():.5f} "
                    f"there and {learner.mean().item():.5f} on the learner (mean gap {gap:.2e}, tolerance "
                    f"{p.tolerance:g}); the checksums passed, so the weights were sent or loaded wrong")

    def gap(self) -> Optional[float]:
        """The largest gap of the last probe (None: no probe)."""
        return max(self.gaps) if self.gaps else None


def store_mb(cfg) -> int:
    """The embedded cluster's object store, MiB: `cluster.object_store_mb`, else room for two versions of the
    policy's weights (a sync's buckets and a replaced generator's copy) and the rollouts, at least 512. Refuses
    when this machine's shared memory cannot hold it (Ray would put the store on disk)."""
    if cfg.cluster.object_store_mb is not None:
        return cfg.cluster.object_store_mb
    if "ppo" not in cfg.stages:
        return 512
    version = models.weight_bytes(cfg.model.policy, cfg.model.dtype, cfg.model.trust_remote_code)
    need = max(512, -(-2 * version // MB) + 128)
    shm = shutil.disk_usage("/dev/shm").free // MB if os.path.isdir("/dev/shm") else None
    if shm is not None and need > shm:
        raise ConfigError([f"cluster.object_store_mb: two versions of the policy's weights ({version // MB} MiB "
                           f"each in {cfg.model.dtype}) need an object store of {need} MiB, and /dev/shm has "
                           f"{shm} MiB free: set cluster.weight_sync: broadcast, or cluster.object_store_mb to "
                           "what fits (syncs then spill to disk)"])
    return need


def check_store(cfg) -> None:
    """On a cluster started elsewhere (`--address`), refuse an object-store weight sync that cannot hold two
    versions of the policy: it would spill to disk every step."""
    if "ppo" not in cfg.stages or chosen(cfg) != "object_store":
        return
    version = models.weight_bytes(cfg.model.policy, cfg.model.dtype, cfg.model.trust_remote_code)
    have = ray.cluster_resources().get("object_store_memory", 0)
    if have < 2 * version:
        raise ConfigError([f"cluster.weight_sync: the cluster's object store ({int(have) // MB} MiB) cannot hold "
                           f"two versions of the policy's weights ({version // MB} MiB each): start Ray with a "
                           "larger --object-store-memory, or set cluster.weight_sync: broadcast"])


def chosen(cfg) -> Transport:
    """The transport `cluster.weight_sync` resolves to for this config."""
    roles = cfg.cluster.roles
    return resolve(cfg.cluster.weight_sync, roles["policy"].gpus, roles["generator"].gpus,
                   cfg.rollout.engine.tensor_parallel_size)
