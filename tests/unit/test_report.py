"""report.render on synthetic metrics.jsonl: every expected PNG is a real, non-blank image; nulls, single rows
and half-written lines do not crash it; a folder without metrics.jsonl is one clear error. The reader it shares
with the run (`run_dir.read_metrics`): a last line cut short is left out with a note, and the run's next write
drops it from the file; a bad line elsewhere is one error naming the file and line."""

import json
import math

import pytest

from rlhf_ray.config import load_config
from rlhf_ray.rows import DataError
from rlhf_ray.runtime import report
from rlhf_ray.runtime.run_dir import RunDir, read_metrics

PPO_PNGS = ["ppo_reward.png", "ppo_reward_vs_kl.png", "ppo_kl.png", "ppo_response_length.png", "ppo_losses.png", "ppo_staleness.png",
            "ppo_phase_times.png"]


def _ppo_rows(steps: int) -> list[dict]:
    """Train rows as PPOTrainer.fit logs them, eval rows as PPOTrainer.evaluate does (before step 0 and at the end)."""
    def ev(v):
        return {"stage": "ppo", "step": v, "policy_version": v, "eval_reward_mean": 0.1 * v, "eval_reward_std": 0.2,
                "eval_kl_mean": 0.05 * v, "eval_response_length_mean": 20.0 + v, "eval_samples": 8,
                "eval_gold_mean": 0.5 + 0.05 * v}

    rows = [ev(0)]
    for s in range(steps):
        rows.append({"stage": "ppo", "step": s, "policy_version": s + 1, "reward_mean": 0.1 * s, "reward_std": 0.3,
                     "kl_mean": 0.01 * s, "kl_coef": 0.05, "response_length_mean": 20.0 + s, "eos_frac": 0.9,
                     "policy_loss": -0.1 + 0.01 * s, "value_loss": 1.0 / (s + 1), "clip_frac": 0.1,
                     "entropy": 2.0 - 0.1 * s, "staleness_max": s % 2, "staleness_mean": 0.5 * (s % 2),
                     "buffer_depth": s % 3, "tokens_per_s": 1000.0 + s, "time_generate_s": 1.0,
                     "time_score_s": 0.5, "time_train_s": 2.0, "time_sync_s": 0.2})
    for r in rows[2:4]:  # non-finite values are logged as null
        r.update(reward_mean=None, time_sync_s=None)
    rows.append(ev(steps))
    rows[-1].update(eval_alarm_reward_hacking=1, eval_alarms_total=1, eval_kept_step=0)  # an alarm, the kept policy
    return rows


def _sft_rows() -> list[dict]:
    rows = [{"stage": "sft", "step": 0, "eval_loss": 3.0}]
    rows += [{"stage": "sft", "step": s, "loss": 3.0 - 0.2 * s} for s in range(1, 6)]
    rows[-1]["eval_loss"] = 2.2
    return rows


def _write(run_dir, rows, tail: str = "") -> None:
    run_dir.mkdir(exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)


def _check_png(path) -> None:
    from matplotlib.image import imread

    assert path.is_file() and path.stat().st_size > 1000, path
    img = imread(path)  # a PNG that does not decode raises here
    assert img.ndim == 3 and img.shape[0] >= 300 and img.shape[1] >= 600 and img.shape[2] in (3, 4), img.shape
    assert img.reshape(-1, img.shape[2]).std(axis=0).max() > 0.05, f"{path.name} is one flat colour"


def test_every_plot_of_a_pipeline_run_is_a_real_image(tmp_path):
    run = tmp_path / "run"
    # a half-written last line: the run may be appending while the report reads
    _write(run, _ppo_rows(6) + _sft_rows() + [{"stage": "label", "step": 0, "score_mean": 0.3}], tail='{"stage": "pp')
    written = report.render(run)
    names = sorted(p.name for p in written)
    # the SFT rows have no accuracy/margin keys and the label row no loss: those plots are skipped
    assert names == sorted(PPO_PNGS + ["sft_loss.png"])
    for p in written:
        assert p.parent == run / "plots"
        _check_png(p)
    assert not [p for p in (run / "plots").iterdir() if p.name.endswith(".tmp")]  # no temp file left behind


def test_rm_and_dpo_get_accuracy_and_margin_plots(tmp_path):
    rows = [{"stage": "rm", "step": s, "loss": 0.7 - 0.1 * s, "accuracy": 0.5 + 0.1 * s, "margin": 0.2 * s}
            for s in range(1, 4)]
    rows += [{"stage": "dpo", "step": 1, "loss": 0.69, "accuracy": 0.6, "reward_margin": 0.01,
              "policy_accuracy": 0.55, "eval_loss": 0.68, "eval_accuracy": 0.5}]  # one row only
    _write(tmp_path, rows)
    names = sorted(p.name for p in report.render(tmp_path))
    assert names == ["dpo_accuracy.png", "dpo_loss.png", "dpo_margin.png", "rm_accuracy.png", "rm_loss.png",
                     "rm_margin.png"]
    for n in names:
        _check_png(tmp_path / "plots" / n)


def test_single_row_and_all_null_keys_do_not_crash(tmp_path):
    row = _ppo_rows(1)[1]
    row.update(kl_mean=None, policy_loss=None, value_loss=None, entropy=None, clip_frac=None, buffer_depth=None)
    _write(tmp_path, [row])
    names = {p.name for p in report.render(tmp_path)}
    # every key null, or no held-out KL: skipped, not an empty plot
    assert not {"ppo_losses.png", "ppo_kl.png", "ppo_reward_vs_kl.png"} & names
    assert {"ppo_reward.png", "ppo_response_length.png", "ppo_staleness.png", "ppo_phase_times.png"} <= names
    for n in names:
        _check_png(tmp_path / "plots" / n)


def test_rerender_replaces_plots_in_place(tmp_path):
    _write(tmp_path, _ppo_rows(2))
    first = report.render(tmp_path)
    before = (tmp_path / "plots" / "ppo_reward.png").read_bytes()
    _write(tmp_path, _ppo_rows(8))
    assert report.render(tmp_path) == first
    assert (tmp_path / "plots" / "ppo_reward.png").read_bytes() != before


def test_rows_without_a_stage_key_are_ppo_when_they_carry_a_policy_version(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "stage"} for r in _ppo_rows(3)]
    _write(tmp_path, rows)
    assert sorted(p.name for p in report.render(tmp_path)) == sorted(PPO_PNGS)


def test_missing_metrics_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(ValueError, match=str(tmp_path / "metrics.jsonl")):
        report.render(tmp_path)
    assert report.main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "metrics.jsonl" in err and err.count("\n") == 1
    assert not (tmp_path / "plots").exists()


def test_main_prints_the_written_paths(tmp_path, capsys):
    _write(tmp_path, _sft_rows())
    assert report.main([str(tmp_path)]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "plots" / "sft_loss.png")]


def test_nulls_are_gaps():
    rows = [{"step": 0, "x": 1.0}, {"step": 1, "x": None}, {"step": 2, "x": math.inf}, {"step": None, "x": 2.0},
            {"step": 3, "x": True}, {"step": 4, "x": 3}]
    assert report._xy(rows, "x") == ([0, 4], [1.0, 3])


def test_a_last_line_cut_short_is_left_out_with_a_note(tmp_path, capsys):
    _write(tmp_path, _sft_rows(), tail='{"stage": "sft", "st')
    assert read_metrics(tmp_path / "metrics.jsonl") == _sft_rows()
    err = capsys.readouterr().err
    assert err == f"{tmp_path / 'metrics.jsonl'}:7: last line cut short (a run stopped mid-write, or one writing " \
                  f"now); left out\n"
    _write(tmp_path, _sft_rows(), tail='{"stage": "sft", "step": 9}')  # whole, only its newline missing: kept
    assert read_metrics(tmp_path / "metrics.jsonl")[-1] == {"stage": "sft", "step": 9}
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("bad, why", [('{"stage": "sf{"stage": "sft", "step": 3}', "not a JSON line"),
                                      ("[1, 2]", "expected a JSON object, got list"),
                                      ("\udcff\udcfe", "not a JSON line"),  # bytes 0xff 0xfe: not UTF-8
                                      ("[" * 100_000, r"not a JSON line \(nested too deeply\)")])
def test_a_bad_line_before_the_last_is_one_error_naming_it(tmp_path, capsys, bad, why):
    rows = _sft_rows()
    text = "".join(json.dumps(r) + "\n" for r in rows[:2]) + bad + "\n" + json.dumps(rows[2]) + "\n"
    (tmp_path / "metrics.jsonl").write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(DataError, match=rf"^{tmp_path / 'metrics.jsonl'}:3: {why}"):
        read_metrics(tmp_path / "metrics.jsonl")
    assert report.main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'metrics.jsonl'}:3: ") and err.count("\n") == 1, err


def test_the_run_drops_a_cut_short_line_from_the_file_before_appending(tmp_path, capsys):
    """A killed run's fragment must not glue onto the next row (that would corrupt a line mid-file)."""
    cfg = load_config()
    _write(tmp_path, _sft_rows(), tail='{"stage": "sf')
    run_dir = RunDir(tmp_path, cfg)
    run_dir.start_stage("rm")
    run_dir.log_metrics({"step": 1, "loss": 0.5})
    assert (tmp_path / "metrics.jsonl").read_text().splitlines()[-2:] == [json.dumps(_sft_rows()[-1]),
                                                                          '{"stage": "rm", "step": 1, "loss": 0.5}']
    assert capsys.readouterr().err.count("cut short") == 1
    _write(tmp_path, _sft_rows(), tail='{"stage": "sf')
    RunDir(tmp_path, cfg).check_metrics()  # what `rlhf-ray run` does before Ray starts
    assert (tmp_path / "metrics.jsonl").read_text() == "".join(json.dumps(r) + "\n" for r in _sft_rows())
    _write(tmp_path, _sft_rows(), tail='{"stage": "sf')
    RunDir(tmp_path, cfg).drop_metrics("sft")  # a stage's reset rewrites the file: the fragment goes too
    assert (tmp_path / "metrics.jsonl").read_text() == ""
