"""The pipeline without Ray: stage outputs feed later stages, finished stages are skipped unless forced, and a
stage's inputs are checked before anything starts (fake stages stand in for the real drivers)."""

import json
from pathlib import Path

import pytest

from rlhf_ray import cli
from rlhf_ray.config import ConfigError, load_config, to_dict
from rlhf_ray.runtime import checkpoint
from rlhf_ray.runtime.run_dir import RunDir
from rlhf_ray.stages import inputs, pipeline
from rlhf_ray.stages.result import StageResult

PREFS = "configs/data/tiny_prefs.jsonl"


def _cfg(tmp_path, *overrides):
    demos = tmp_path / "demos.jsonl"
    demos.write_text(json.dumps({"prompt": "hi", "response": "hello"}) + "\n")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "hi"}) + "\n")
    return load_config(None, [f"data.demonstrations.path={demos}", f"data.preferences.path={tmp_path / 'p.jsonl'}",
                              f"data.prompts.path={prompts}", *overrides])


def _write_preferences(tmp_path):
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "hi", "chosen": "hello", "rejected": "go"}) + "\n")


@pytest.fixture
def fake_stages(monkeypatch):
    """Stages that record the config they saw and 'make' a folder named after themselves."""
    seen = []

    def make(stage, key):
        def fn(cfg, run_dir):
            seen.append((stage, cfg.model.policy, cfg.model.reward))
            run_dir.log_metrics({"step": 1, "loss": 0.5})
            out = run_dir.final(stage)
            out.mkdir(parents=True, exist_ok=True)
            return StageResult({key: str(out)}, f"{stage}: done")
        return fn

    monkeypatch.setattr(pipeline, "RUNNERS", {"sft": make("sft", "policy"), "rm": make("rm", "reward"),
                                              "dpo": make("dpo", "policy"), "ppo": make("ppo", "policy")})
    return seen


def test_outputs_feed_later_stages_and_reruns_skip_finished_ones(tmp_path, fake_stages):
    _write_preferences(tmp_path)
    cfg = _cfg(tmp_path, "stages=[sft,rm,ppo]")
    run_dir = RunDir(tmp_path / "run", cfg)
    pipeline.run(cfg, run_dir)
    final = tmp_path / "run" / "final"
    assert fake_stages == [("sft", "tiny", None), ("rm", str(final / "sft"), None),
                           ("ppo", str(final / "sft"), str(final / "rm"))]
    assert cfg.model.policy == "tiny"  # the caller's config is not changed
    assert [r["stage"] for r in run_dir.metrics()] == ["sft", "rm", "ppo"]
    marker = pipeline.finished(run_dir, "ppo")
    assert marker["inputs"]["model.reward"] == str(final / "rm") and marker["outputs"] == {"policy": str(final / "ppo")}

    fake_stages.clear()
    results = pipeline.run(cfg, run_dir)
    assert fake_stages == [] and all(r.skipped for r in results)
    (final / "rm" / pipeline.MARKER).unlink()  # as if rm had been killed before finishing
    (final / "rm" / "partial").write_text("x")
    pipeline.run(cfg, run_dir)
    assert [s[0] for s in fake_stages] == ["rm"] and not (final / "rm" / "partial").exists()
    assert [r["stage"] for r in run_dir.metrics()] == ["sft", "ppo", "rm"]  # rm's old row replaced, not doubled

    fake_stages.clear()
    pipeline.run(cfg, run_dir, force=True)
    assert [s[0] for s in fake_stages] == ["sft", "rm", "ppo"] and len(run_dir.metrics()) == 3


def test_connect_only_when_a_stage_runs(tmp_path, fake_stages):
    _write_preferences(tmp_path)
    cfg = _cfg(tmp_path, "stages=[sft]")
    run_dir, calls = RunDir(tmp_path / "run", cfg), []
    pipeline.run(cfg, run_dir, connect=lambda: calls.append(1))
    pipeline.run(cfg, run_dir, connect=lambda: calls.append(1))
    assert calls == [1]


def test_a_checkpoint_written_under_another_config_is_refused_before_connect(tmp_path, fake_stages):
    """resume: auto with a stage checkpoint whose config changes the results: refused before Ray would start,
    with the message the stage itself gives; the same config, or --force, goes on."""
    cfg = _cfg(tmp_path, "stages=[sft,ppo]", "model.reward=org/some-rm", "resume=auto")
    run_dir, calls = RunDir(tmp_path / "run", cfg), []
    pipeline.run(cfg, run_dir, connect=lambda: calls.append(1))
    (run_dir.final("ppo") / pipeline.MARKER).unlink()  # as if ppo had been killed after its step-2 checkpoint
    ppo_cfg = pipeline.for_stage(pipeline.apply_outputs(cfg, {"policy": str(run_dir.final("sft"))}), "ppo")
    checkpoint.commit(checkpoint.begin(run_dir.path, "ppo", 2), {"step": 2, "config": to_dict(ppo_cfg)}, 2)
    fake_stages.clear()

    changed = _cfg(tmp_path, "stages=[sft,ppo]", "model.reward=org/some-rm", "resume=auto", "ppo.kl_coef=0.5")
    with pytest.raises(ConfigError, match=r"resume: .*another config \(ppo\.kl_coef: 0\.05 then, 0\.5 now\)"):
        pipeline.run(changed, run_dir, connect=lambda: calls.append(2))
    assert calls == [1] and fake_stages == []  # nothing started
    assert checkpoint.complete(checkpoint.stage_dir(run_dir.path, "ppo"))  # and nothing removed

    pipeline.run(cfg, run_dir, connect=lambda: calls.append(3))  # the same config resumes
    assert calls == [1, 3] and [s[0] for s in fake_stages] == ["ppo"]
    (run_dir.final("ppo") / pipeline.MARKER).unlink()
    pipeline.run(changed, run_dir, force=True, connect=lambda: calls.append(4))  # --force starts over
    assert calls == [1, 3, 4]


def test_inputs_are_checked_before_anything_runs(tmp_path):
    cfg = _cfg(tmp_path, "stages=[sft,rm]", "data.preferences.path=null")
    with pytest.raises(ConfigError, match=r"c\.yaml: data\.preferences\.path: the `rm` stage needs"):
        inputs.check(cfg, "c.yaml")
    with pytest.raises(ConfigError, match=r"data\.preferences\.path: no such file or folder: .*p\.jsonl"):
        inputs.check(_cfg(tmp_path, "stages=[dpo]"))
    with pytest.raises(ConfigError, match=r"data\.prompts\.path: the `label` stage needs") as e:
        inputs.check(_cfg(tmp_path, "stages=[label,dpo]", "data.prompts.path=null",
                                   "label.labeler=examples/warm/labelers.py:vader_warmth"))
    assert "preferences" not in str(e.value)  # dpo's come from label
    with pytest.raises(ConfigError, match=r"reward\.functions: the `ppo` stage needs a reward"):
        inputs.check(_cfg(tmp_path, "stages=[sft,ppo]"))
    inputs.check(_cfg(tmp_path, "stages=[sft,ppo]", "model.reward=org/some-rm"))  # no preferences needed


def test_models_are_checked_before_anything_runs(tmp_path, tiny):
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    small = tmp_path / "small"
    small.mkdir()
    (small / "config.json").write_text(json.dumps({"vocab_size": 10}))
    with pytest.raises(ConfigError) as e:
        inputs.check(_cfg(tmp_path, "stages=[sft]", f"model.reference={tmp_path / 'nope'}",
                                   f"model.critic={not_a_model}"), "c.yaml")
    assert f"c.yaml: model.reference: no such model folder: {tmp_path / 'nope'}" in str(e.value)
    assert f"c.yaml: model.critic: {not_a_model} is not a model folder: it has no config.json" in str(e.value)
    with pytest.raises(ConfigError, match=r"model\.tokenizer: .* has \d+ tokens but model\.policy .* embeds 10: "
                                          r"this tokenizer does not belong to this model"):
        inputs.check(_cfg(tmp_path, "stages=[sft]", f"model.policy={small}", f"model.tokenizer={tiny}"))
    inputs.check(_cfg(tmp_path, "stages=[sft]", f"model.policy={tiny}", f"model.tokenizer={tiny}"))


def test_apply_outputs():
    cfg = load_config()
    out = pipeline.apply_outputs(cfg, {"policy": "/a", "reward": "/b", "preferences": "/c.parquet"})
    assert (out.model.policy, out.model.reward, out.data.preferences.path) == ("/a", "/b", "/c.parquet")
    assert cfg.model.policy == "tiny"
    with pytest.raises(ValueError, match="unknown stage outputs"):
        pipeline.apply_outputs(cfg, {"critic": "/x"})


def test_cli_run_without_preferences_fails_before_ray(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    code = cli.main(["run", "configs/tiny/rm.yaml", "data.preferences.path=null", "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 1 and "data.preferences.path" in err and "configs/tiny/rm.yaml" in err
    assert not (tmp_path / "r").exists()  # nothing created, no cluster started
