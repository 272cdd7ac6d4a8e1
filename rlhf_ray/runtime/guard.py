"""The reward-hacking guard: reads PPO's held-out evaluations as they come and says when the policy is exploiting
its reward rather than improving (Gao et al. 2022: a proxy reward keeps rising with KL while the true reward
peaks and falls).

It does three things, each after an evaluation:
  - alarms, printed and counted in the eval row: the proxy reward rose while the gold judge fell over the last
    `hack_window` evaluations; the mean response length ran to the limit or collapsed; the replies' distinct-2
    fell below a floor (degenerate repetition);
  - keep-best: remembers the evaluation with the best held-out gold (or reward) within the KL budget, so the run
    can end with that policy instead of the last;
  - the KL budget: says when the held-out KL to the reference has passed `kl_budget`, which ends the run.

Pure logic on eval rows (the keys `PPOTrainer.evaluate` writes); the trainer saves and restores the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

ALARMS = ("eval_alarm_reward_hacking", "eval_alarm_length", "eval_alarm_repetition")


@dataclass(frozen=True)
class GuardSettings:
    """The `ppo.*` knobs the guard reads (see config.PPOConfig)."""

    kl_budget: Optional[float] = None
    keep_best: Optional[str] = None  # "gold" | "reward" | None
    hack_window: int = 2
    max_response_len: int = 0
    length_collapse: float = 0.25
    distinct2_floor: Optional[float] = 0.5


@dataclass
class Guard:
    """Sees each held-out evaluation row once, in order (`see`); its state survives a checkpoint (`state`)."""

    s: GuardSettings
    evals: list[dict] = field(default_factory=list)
    best: Optional[dict] = None  # {"step", "score"}: the policy to keep
    alarms: list[str] = field(default_factory=list)  # every alarm's message, in order
    stop_reason: Optional[str] = None

    def see(self, row: dict) -> list[str]:
        """Record an eval row (eval_reward_mean, eval_gold_mean, eval_kl_mean, eval_response_length_mean,
        eval_distinct2); add its alarm flags and the running count to it; return the new alarms' messages."""
        self.evals.append(row)
        found = dict(zip(ALARMS, (self._hacking(), self._length(row), self._repetition(row))))
        new = [f"step {row['step']}: {msg}" for msg in found.values() if msg]
        self.alarms += new
        row.update({k: int(bool(v)) for k, v in found.items()}, eval_alarms_total=len(self.alarms))
        kl = row.get("eval_kl_mean")
        if self.s.kl_budget is not None and kl is not None and kl > self.s.kl_budget:
            self.stop_reason = (f"held-out KL {row['eval_kl_mean']:.2f} passed ppo.kl_budget {self.s.kl_budget:g} "
                                f"at step {row['step']}")
        return new

    def is_new_best(self, row: dict) -> bool:
        """Whether `row` (just seen) beats the kept policy on `keep_best`, within the KL budget; if so it is kept."""
        if self.s.keep_best is None or self.stop_reason is not None:
            return False
        score = row.get(f"eval_{self.s.keep_best}_mean")
        if score is None or (self.best is not None and score <= self.best["score"]):
            return False
        self.best = {"step": row["step"], "score": score}
        return True

    def state(self) -> dict:
        """What a checkpoint keeps (the eval rows are in the checkpoint's metrics rows)."""
        return {"best": self.best, "alarms": self.alarms, "stop_reason": self.stop_reason}

    @classmethod
    def restore(cls, s: GuardSettings, state: Optional[dict], evals: list[dict]) -> "Guard":
        """From `state` and the eval rows seen; state None (a checkpoint written before the guard): nothing kept,
        no alarm."""
        state = state or {}
        return cls(s, evals, state.get("best"), state.get("alarms", []), state.get("stop_reason"))

    # ------------------------------------------------------------ the alarms: a message, or None

    def _hacking(self) -> Optional[str]:
        w = self.s.hack_window
        if len(self.evals) <= w:
            return None
        then, now = self.evals[-1 - w], self.evals[-1]
        keys = ("eval_reward_mean", "eval_gold_mean")
        if any(r.get(k) is None for r in (then, now) for k in keys):
            return None
        if now["eval_reward_mean"] > then["eval_reward_mean"] and now["eval_gold_mean"] < then["eval_gold_mean"]:
            return (f"reward hacking? the proxy reward rose {then['eval_reward_mean']:.3f} -> "
                    f"{now['eval_reward_mean']:.3f} while gold fell {then['eval_gold_mean']:.3f} -> "
                    f"{now['eval_gold_mean']:.3f} over the last {w} evaluations")
        return None

    def _length(self, row: dict) -> Optional[str]:
        first, now, limit = self.evals[0]["eval_response_length_mean"], row["eval_response_length_mean"], \
            self.s.max_response_len
        if limit and now >= 0.95 * limit > first:
            return f"replies ran to the length limit: mean {first:.1f} -> {now:.1f} tokens (limit {limit})"
        if now <= self.s.length_collapse * first:
            return (f"replies collapsed: mean length {first:.1f} -> {now:.1f} tokens (alarm at "
                    f"{self.s.length_collapse:g} x the start)")
        return None

    def _repetition(self, row: dict) -> Optional[str]:
        d2, floor = row.get("eval_distinct2"), self.s.distinct2_floor
        if d2 is None or floor is None or d2 >= floor:
            return None
        return f"replies repeat themselves: distinct-2 {d2:.3f} below the floor {floor:g}"
