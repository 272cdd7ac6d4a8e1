"""`rlhf-ray report RUN_DIR`: PNG plots of a run's metrics.jsonl in RUN_DIR/plots/, one set per stage.

PPO: reward (±std band, eval points, the guard's alarms and kept policy), proxy and gold reward against KL, KL,
response length, losses, staleness, phase times. SFT/RM/DPO: loss,
accuracy, margin. A plot whose keys never hold a number is skipped; a null (non-finite value) is left out of its
line, never an error.
Safe to rerun while a run is writing: a half-written last line is left out (with a note) and every PNG is replaced
atomically, so a viewer never sees a truncated file. matplotlib is imported inside functions: only this command needs it.
"""

from __future__ import annotations

import math
import os
import sys
import uuid
from pathlib import Path
from typing import Callable

from rlhf_ray.runtime.run_dir import read_metrics

# A train row at step s updates version s -> s+1 (from samples of version s - staleness); an eval row at step v
# evaluates version v. So one x axis serves both, read as a policy version.
X_VERSION = "policy version (train: version updated; eval: version evaluated)"
PHASES = ("time_scale_s", "time_generate_s", "time_score_s", "time_train_s", "time_sync_s")


class ReportError(ValueError):
    """RUN_DIR has nothing to plot (no metrics.jsonl)."""


def stage_of(row: dict) -> str:
    """The pipeline tags rows with `stage`; untagged rows (a stage run alone) are PPO's when they carry a version."""
    return row.get("stage") or ("ppo" if "policy_version" in row else "train")


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _xy(rows: list[dict], key: str) -> tuple[list, list]:
    """(step, value) of the rows where both are finite numbers; the others are left out, not an error."""
    pts = [(r["step"], r[key]) for r in rows if _num(r.get("step")) and _num(r.get(key))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _has(rows: list[dict], keys: tuple[str, ...]) -> bool:
    return any(_xy(rows, k)[0] for k in keys)


def _lines(ax, rows, keys, ylabel, color=None, counts=False) -> None:
    """One line per key that has numbers. Markers when points are few (a single point stays visible); evals dashed;
    counts (staleness, depth) as steps with integer ticks."""
    from matplotlib.ticker import MaxNLocator

    for k in keys:
        x, y = _xy(rows, k)
        if x:
            ax.plot(x, y, marker="o" if len(x) < 30 else None, markersize=4, color=color, label=k,
                    linestyle="--" if k.startswith("eval_") else "-", drawstyle="steps-post" if counts else "default")
    if counts:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


# ------------------------------------------------------------ each draw(fig, rows) returns its title


def _single(keys: tuple[str, ...], ylabel: str, xlabel: str, title: str) -> Callable:
    """A plot of one axis: train and eval_ lines of `keys`."""
    def draw(fig, rows):
        ax = fig.subplots()
        _lines(ax, rows, keys, ylabel)
        ax.set_xlabel(xlabel)
        return title
    return draw


def _ppo_reward(fig, rows):
    ax = fig.subplots()
    band = [(r["step"], r["reward_mean"], r["reward_std"]) for r in rows
            if all(_num(r.get(k)) for k in ("step", "reward_mean", "reward_std"))]
    if band:
        ax.fill_between([b[0] for b in band], [b[1] - b[2] for b in band], [b[1] + b[2] for b in band],
                        alpha=0.2, label="reward_mean ± reward_std")
    _lines(ax, rows, ("reward_mean", "eval_reward_mean", "eval_gold_mean"), "reward (per response)")
    _mark_guard(ax, rows)
    ax.set_xlabel(X_VERSION)
    return "PPO reward: training batches and held-out evals"


def _alarmed(row: dict) -> bool:
    return any(row.get(k) for k in ("eval_alarm_reward_hacking", "eval_alarm_length", "eval_alarm_repetition"))


def _mark_guard(ax, rows, x_key: str = "step") -> None:
    """The guard's alarms (red crosses on the held-out reward) and the kept policy (a ring), from the eval rows."""
    evals = [r for r in rows if _num(r.get(x_key)) and _num(r.get("eval_reward_mean"))]
    hits = [r for r in evals if _alarmed(r)]
    if hits:
        ax.scatter([r[x_key] for r in hits], [r["eval_reward_mean"] for r in hits], marker="x", s=80, color="red",
                   zorder=5, label="guard alarm")
    kept = [r for r in rows if _num(r.get("eval_kept_step"))]
    at = [r for r in evals if kept and r.get("step") == kept[-1]["eval_kept_step"]]
    if at:
        ax.scatter([at[-1][x_key]], [at[-1]["eval_reward_mean"]], s=160, facecolors="none", edgecolors="black",
                   zorder=5, label=f"kept policy (step {at[-1]['step']})")


def _ppo_reward_vs_kl(fig, rows):
    """Held-out proxy and gold reward against the held-out KL to the reference (Gao et al. 2022): the proxy
    keeps rising with KL while a hacked gold peaks and falls."""
    ax = fig.subplots()
    pts = sorted((r for r in rows if _num(r.get("eval_kl_mean"))), key=lambda r: r["step"])
    for key in ("eval_reward_mean", "eval_gold_mean"):
        xy = [(r["eval_kl_mean"], r[key]) for r in pts if _num(r.get(key))]
        if xy:
            ax.plot([p[0] for p in xy], [p[1] for p in xy], marker="o", markersize=4, label=key)
    for r in pts:
        ax.annotate(str(r["step"]), (r["eval_kl_mean"], r["eval_reward_mean"]), fontsize="x-small",
                    textcoords="offset points", xytext=(3, 3))
    _mark_guard(ax, rows, "eval_kl_mean")
    ax.set_xlabel("held-out KL(π ‖ π_ref) per response (nats)")
    ax.set_ylabel("held-out reward (per response)")
    ax.grid(alpha=0.3)
    return "PPO proxy and gold reward against KL (labels: policy version)"


def _ppo_losses(fig, rows):
    top, bottom = fig.subplots(2, 1, sharex=True)
    _lines(top, rows, ("policy_loss", "value_loss"), "loss")
    _lines(bottom, rows, ("entropy",), "entropy (nats/token)", color="tab:purple")
    _lines(bottom.twinx(), rows, ("clip_frac",), "clip fraction", color="tab:red")  # [0, 1]: its own scale
    bottom.set_xlabel("PPO step")
    return "PPO losses, policy entropy and clip fraction"


def _ppo_staleness(fig, rows):
    ax = fig.subplots()
    _lines(ax, rows, ("staleness_max", "staleness_mean"), "staleness (policy versions)", counts=True)
    if _has(rows, ("buffer_depth",)):  # a count of buffered items, not versions: its own scale
        _lines(ax.twinx(), rows, ("buffer_depth",), "buffer depth", color="tab:green", counts=True)
    ax.set_xlabel("PPO step")
    return "PPO sample staleness" + (" and buffer depth" if _has(rows, ("buffer_depth",)) else "")


def _ppo_phases(fig, rows):
    """Stacked bars: each step's wall time by phase (a null phase counts as 0 s); throughput on its own axis."""
    ax = fig.subplots()
    steps = [r for r in rows if _num(r.get("step")) and any(_num(r.get(k)) for k in PHASES)]
    bottom = [0.0] * len(steps)
    for k in PHASES:
        h = [r[k] if _num(r.get(k)) else 0.0 for r in steps]
        if any(h):
            ax.bar([r["step"] for r in steps], h, bottom=bottom, width=0.8, linewidth=0, label=k[5:-2])
            bottom = [b + v for b, v in zip(bottom, h)]
    ax.set_ylabel("wall time per step (s)")
    ax.set_xlabel("PPO step")
    if _has(rows, ("tokens_per_s",)):
        _lines(ax.twinx(), rows, ("tokens_per_s",), "generated tokens/s (over the whole step)", color="black")
    return "PPO step time by phase, and throughput"


def _ppo_fleet(fig, rows):
    """Actors per generator and scorer role (`rlhf-ray scale` changes them between steps), throughput beside."""
    ax = fig.subplots()
    roles = sorted({k for r in rows for k in r if k.startswith("fleet_size_")})
    _lines(ax, rows, tuple(roles), "actors", counts=True)
    ax.set_xlabel("PPO step")
    if _has(rows, ("tokens_per_s",)):
        _lines(ax.twinx(), rows, ("tokens_per_s",), "generated tokens/s (over the whole step)", color="black")
    return "PPO fleet size per role, and throughput"


KL, LENGTH = ("kl_mean", "eval_kl_mean"), ("response_length_mean", "eval_response_length_mean")
# (file name, keys of which at least one must hold a number, draw)
PPO_PLOTS: list[tuple[str, tuple[str, ...], Callable]] = [
    ("ppo_reward.png", ("reward_mean", "eval_reward_mean", "eval_gold_mean"), _ppo_reward),
    ("ppo_reward_vs_kl.png", ("eval_kl_mean",), _ppo_reward_vs_kl),
    ("ppo_kl.png", KL, _single(KL, "KL(π ‖ π_ref) per response (nats)", X_VERSION, "PPO KL to the reference policy")),
    ("ppo_response_length.png", LENGTH, _single(LENGTH, "response length (tokens)", X_VERSION,
                                                "PPO mean response length")),
    ("ppo_losses.png", ("policy_loss", "value_loss", "entropy", "clip_frac"), _ppo_losses),
    ("ppo_staleness.png", ("staleness_max", "staleness_mean", "buffer_depth"), _ppo_staleness),
    ("ppo_phase_times.png", PHASES, _ppo_phases),
    ("ppo_fleet.png", ("fleet_size_generator",), _ppo_fleet),
]

# SFT / RM / DPO (and any other stage): (name, keys, y label); train and eval_ lines on one axis.
SUPERVISED_PLOTS = [
    ("loss", ("loss", "eval_loss"), "loss (nats)"),
    ("accuracy", ("accuracy", "eval_accuracy", "policy_accuracy", "eval_policy_accuracy"), "preference accuracy"),
    ("margin", ("margin", "eval_margin", "reward_margin", "eval_reward_margin"), "reward margin r_chosen − r_rejected"),
]


def plots_for(stage: str) -> list[tuple[str, tuple[str, ...], Callable]]:
    if stage == "ppo":
        return PPO_PLOTS
    return [(f"{stage}_{name}.png", keys, _single(keys, y, "optimizer step", f"{stage.upper()} {name}: training "
                                                  "batches and held-out set (eval_*)"))
            for name, keys, y in SUPERVISED_PLOTS]


# ------------------------------------------------------------ writing


def _save(fig, out: Path) -> None:
    """Save to a temp file in the same folder, then rename over `out`: a viewer sees the old PNG or the new one.
    (Not tempfile.mkstemp: its files are mode 0600, and the plots should be as readable as the rest of the run.)"""
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def render(run_dir: Path) -> list[Path]:
    """Write RUN_DIR/plots/<stage>_*.png for every stage in RUN_DIR/metrics.jsonl; returns the paths written."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # don't switch the backend under a user's notebook
        matplotlib.use("Agg")
    from matplotlib.figure import Figure  # no pyplot: no global figures to leak in a long-lived process

    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise ReportError(f"{run_dir / 'metrics.jsonl'} does not exist: not a run directory, or no step has finished")
    stages: dict[str, list[dict]] = {}
    for row in read_metrics(run_dir / "metrics.jsonl"):  # as the run reads it: a line cut short left out
        stages.setdefault(stage_of(row), []).append(row)
    (run_dir / "plots").mkdir(exist_ok=True)
    written = []
    for stage, rows in stages.items():
        for name, keys, draw in plots_for(stage):
            if not _has(rows, keys):
                continue
            fig = Figure(figsize=(8, 6.5 if name == "ppo_losses.png" else 4.8), layout="constrained")
            fig.suptitle(f"{draw(fig, rows)} ({run_dir.name})")
            # One legend for every axis (twins included), below the plot so it never covers data.
            handles = [h for ax in fig.axes for h in ax.get_legend_handles_labels()[0]]
            fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), fontsize="small")
            _save(fig, run_dir / "plots" / name)
            written.append(run_dir / "plots" / name)
    return written


def main(argv: list[str] | None = None) -> int:
    """`rlhf-ray report RUN_DIR`: render the plots, print their paths."""
    import argparse

    from rlhf_ray.rows import DataError

    p = argparse.ArgumentParser(prog="rlhf-ray report", description="Plot a run's metrics.jsonl into RUN_DIR/plots/.")
    p.add_argument("run_dir", type=Path, help="a run directory (runs/<name>/)")
    args = p.parse_args(argv)
    try:
        written = render(args.run_dir)
    except (ReportError, DataError) as e:  # one line, no traceback (as cli.main does for ConfigError)
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("\n".join(map(str, written)))
    return 0
