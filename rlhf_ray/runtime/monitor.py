"""What a run shows while it runs, fed by every metrics row (`RunDir.log_metrics`):

- Ray gauges: every numeric key becomes `rlhf_<key>` with tags `run` and `stage` (fleet_size_<role> keys: one
  gauge `rlhf_fleet_size` with a `role` tag too); Ray's Prometheus endpoint (the metrics export port) serves them
  as `ray_rlhf_<key>{run=..., stage=...}` (deploy/grafana charts them);
- a progress bar per stage on a terminal (step, ETA, reward, KL), else a concise line every few seconds;
- plots/*.png redrawn during the run (`rlhf_ray.runtime.report`); TensorBoard and W&B when the config asks.
"""

from __future__ import annotations

import math
import re
import sys
import time
from pathlib import Path
from typing import Optional

from rlhf_ray.config import Config

# The keys a progress line shows, per stage (those present in the row), with short names.
SHOWN = {
    "ppo": {"reward_mean": "reward", "kl_mean": "kl", "response_length_mean": "len", "staleness_max": "stale",
            "tokens_per_s": "tok/s", "time_generate_s": "gen s", "time_score_s": "score s", "time_train_s": "train s",
            "time_sync_s": "sync s"},
    "eval": {"eval_reward_mean": "eval reward", "eval_gold_mean": "eval gold", "eval_kl_mean": "eval kl",
             "eval_response_length_mean": "eval len", "eval_loss": "eval loss", "eval_accuracy": "eval acc",
             "eval_policy_accuracy": "eval policy acc"},
    "label": {"pairs": "pairs", "score_mean": "score", "tokens_per_s": "tok/s"},
    "default": {"loss": "loss", "accuracy": "acc", "margin": "margin", "reward_margin": "reward margin"},
}


FLEET_SIZE = "fleet_size_"
"""PPO's rows hold fleet_size_<role> (actors of each generator and scorer role): `ray_rlhf_fleet_size{role=...}`."""


def gauge_of(key: str) -> tuple[str, dict[str, str]]:
    """(gauge name, tags beyond run and stage) of a metrics key: `rlhf_<key>`; fleet_size_<role> keys are one
    gauge, `rlhf_fleet_size`, with a `role` tag."""
    if key.startswith(FLEET_SIZE):
        return "rlhf_fleet_size", {"role": key[len(FLEET_SIZE):]}
    return "rlhf_" + re.sub(r"[^a-zA-Z0-9_]", "_", key), {}


def _numbers(row: dict) -> dict[str, float]:
    return {k: float(v) for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class RayGauges:
    """One `ray.util.metrics.Gauge` per metric key, made on first use (the driver exports them like any worker)."""

    def __init__(self, run: str):
        self.run, self.gauges = run, {}

    def log(self, stage: str, row: dict) -> None:
        import ray
        from ray.util.metrics import Gauge

        if not ray.is_initialized():
            return
        for key, value in _numbers(row).items():
            name, role = gauge_of(key)
            tags = {"run": self.run, "stage": stage, **role}
            if name not in self.gauges:
                self.gauges[name] = Gauge(name, description=f"rlhf-ray metrics.jsonl key `{key}`",
                                          tag_keys=tuple(tags))
            self.gauges[name].set(value, tags=tags)


class Progress:
    """A tqdm bar per stage on a terminal; otherwise one line per step, at most every `every_s` seconds."""

    def __init__(self, mode: str, every_s: float):
        self.bar_mode = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
        self.every_s, self.bar, self.total, self.done, self.t0, self.last = every_s, None, None, 0, 0.0, -math.inf

    def start(self, stage: str, total: Optional[int]) -> None:
        self.close()
        self.total, self.done, self.t0, self.last = total, 0, time.monotonic(), -math.inf
        if self.bar_mode:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=stage, unit="step", dynamic_ncols=True, file=sys.stderr)

    def log(self, stage: str, row: dict) -> None:
        # An eval row (PPO's held-out pass, the step-0 eval of SFT/RM/DPO) carries only eval_* numbers.
        evaluation = all(k in ("step", "policy_version") or k.startswith("eval_") for k in row)
        values = _numbers(row)
        shown = {**({} if evaluation else SHOWN.get(stage, SHOWN["default"])), **SHOWN["eval"]}
        text = "  ".join(f"{short} {values[k]:.4g}" for k, short in shown.items() if k in values)
        if not evaluation:
            self.done += 1
        if self.bar is not None:
            if evaluation:
                self.bar.write(f"{stage} at step {row.get('step')}  {text}")
            else:
                self.bar.set_postfix_str(text, refresh=False)
                self.bar.update(1)
            return
        now = time.monotonic()
        if evaluation or self.done in (1, self.total) or any(k.startswith("eval_") for k in row) \
                or now - self.last >= self.every_s:
            self.last = now
            where = f"at step {row.get('step')}" if evaluation else f"step {self.done}/{self.total or '?'}"
            print(f"{stage} {where}{'' if evaluation else self._eta()}  {text}", flush=True)

    def _eta(self) -> str:
        if not self.total:
            return ""
        elapsed = time.monotonic() - self.t0
        return f" [{_clock(elapsed)}<{_clock(elapsed / self.done * (self.total - self.done))}]"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m:02d}:{s:02d}"


class Monitor:
    """Fans each metrics row out to the gauges, the progress display, the trackers and the plots."""

    def __init__(self, cfg: Config, run_dir: Path):
        lg, self.run_dir = cfg.logging, Path(run_dir)
        self.gauges = RayGauges(cfg.name) if lg.ray_metrics else None
        self.progress = Progress(lg.progress, lg.lines_every_s)
        self.plots_every_s, self.last_plot = lg.plots_every_s, time.monotonic()
        self.trackers = []
        if lg.tensorboard:
            from rlhf_ray.runtime.trackers import TensorBoardTracker

            self.trackers.append(TensorBoardTracker(self.run_dir / "tensorboard"))
        if lg.wandb_project:
            from rlhf_ray.config import to_dict
            from rlhf_ray.runtime.trackers import WandbTracker

            self.trackers.append(WandbTracker(lg.wandb_project, cfg.name, to_dict(cfg), self.run_dir))

    def start(self, stage: str, steps: Optional[int]) -> None:
        self.progress.start(stage, steps)

    def log(self, stage: Optional[str], row: dict) -> None:
        stage = stage or "run"
        if self.gauges is not None:
            self.gauges.log(stage, row)
        self.progress.log(stage, row)
        for tracker in self.trackers:
            tracker.log(stage, row)
        if self.plots_every_s and time.monotonic() - self.last_plot >= self.plots_every_s:
            self.plot()

    def plot(self) -> None:
        from rlhf_ray.runtime import report

        report.render(self.run_dir)
        self.last_plot = time.monotonic()

    def end(self) -> None:
        """A stage ended: close its bar and redraw the plots."""
        self.progress.close()
        if (self.run_dir / "metrics.jsonl").exists():
            self.plot()

    def close(self) -> None:
        self.progress.close()
        for tracker in self.trackers:
            tracker.close()
