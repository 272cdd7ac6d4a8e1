"""The reward-hacking guard (runtime/guard.py) on sequences of held-out evaluation rows."""

import pytest

from rlhf_ray.rewards import distinct_2
from rlhf_ray.runtime.guard import ALARMS, Guard, GuardSettings


def row(step, reward, gold=None, kl=0.0, length=20.0, d2=0.95):
    return {"step": step, "eval_reward_mean": reward, "eval_gold_mean": gold, "eval_kl_mean": kl,
            "eval_response_length_mean": length, "eval_distinct2": d2}


def test_distinct_2_measures_repetition_inside_each_reply():
    assert distinct_2(["a b c d"]) == 1.0
    assert distinct_2(["so glad! so glad! so glad!"]) == pytest.approx(2 / 5)  # 5 bigrams, 2 distinct
    assert distinct_2(["a b c d", "x y x y"]) == pytest.approx((1 + 2 / 3) / 2)  # per reply, then the mean
    assert distinct_2(["10", ""]) is None  # no reply has a bigram: nothing to measure
    assert distinct_2(["10", "a b"]) == 1.0  # one-word replies do not count


def test_proxy_up_while_gold_down_over_the_window_raises_an_alarm():
    g = Guard(GuardSettings(hack_window=2))
    seen = [g.see(r) for r in (row(0, 0.1, 0.7), row(2, 0.2, 0.8), row(4, 0.3, 0.85), row(6, 0.4, 0.75))]
    assert seen[:3] == [[], [], []]  # gold rose with the proxy: no alarm; the window needs 3 evaluations
    assert len(seen[3]) == 1 and "proxy reward rose 0.200 -> 0.400 while gold fell 0.800 -> 0.750" in seen[3][0]
    assert g.evals[-1]["eval_alarm_reward_hacking"] == 1 and g.evals[-1]["eval_alarms_total"] == 1
    assert all(g.evals[0][k] == 0 for k in ALARMS) and g.evals[0]["eval_alarms_total"] == 0


def test_no_hacking_alarm_without_a_gold_judge():
    g = Guard(GuardSettings(hack_window=1))
    assert g.see(row(0, 0.1)) == [] and g.see(row(1, 0.9)) == []


@pytest.mark.parametrize("lengths, alarm", [
    ((20, 31), "ran to the length limit"),   # limit 32: 31 >= 0.95 x 32
    ((20, 5), "collapsed"),                  # 5 <= 0.25 x 20
    ((20, 6, 31), None),                     # 6 > 5, and ...
    ((31, 31), None),                        # ... a run that starts at the limit cannot run to it
])
def test_length_alarms(lengths, alarm):
    g = Guard(GuardSettings(max_response_len=32, length_collapse=0.25))
    msgs = [g.see(row(i, 0.5, length=n)) for i, n in enumerate(lengths)]
    if alarm is None:
        assert msgs[1] == [] and (len(msgs) < 3 or "limit" in msgs[2][0])
    else:
        assert alarm in msgs[-1][0] and g.evals[-1]["eval_alarm_length"] == 1


def test_repetition_alarm_below_the_distinct_2_floor_and_off_with_none():
    g = Guard(GuardSettings(distinct2_floor=0.5))
    assert g.see(row(0, 0.1, d2=0.9)) == [] and "distinct-2 0.400 below the floor 0.5" in g.see(row(1, 0.2, d2=0.4))[0]
    assert g.see(row(2, 0.2, d2=None)) == []  # nothing to measure
    off = Guard(GuardSettings(distinct2_floor=None))
    assert off.see(row(0, 0.1, d2=0.1)) == []


def test_keep_best_within_the_kl_budget_and_the_budget_stops():
    g = Guard(GuardSettings(kl_budget=10.0, keep_best="gold"))
    kept = []
    for r in (row(0, 0.1, 0.70, kl=0), row(2, 0.2, 0.80, kl=4), row(4, 0.3, 0.78, kl=8), row(6, 0.5, 0.95, kl=12)):
        g.see(r)
        kept.append(g.is_new_best(r))
    # the step-6 policy has the best gold but is over the budget: never kept, and the run is told to end
    assert kept == [True, True, False, False] and g.best == {"step": 2, "score": 0.80}
    assert g.stop_reason == "held-out KL 12.00 passed ppo.kl_budget 10 at step 6"


def test_keep_best_on_the_proxy_reward_and_off_by_default():
    g = Guard(GuardSettings(keep_best="reward"))
    for r in (row(0, 0.3), row(1, 0.2), row(2, 0.3)):  # a tie does not replace the earlier policy
        g.see(r)
        g.is_new_best(r)
    assert g.best == {"step": 0, "score": 0.3}
    off = Guard(GuardSettings())
    off.see(row(0, 0.5))
    assert off.is_new_best(row(0, 0.5)) is False and off.best is None and off.stop_reason is None


def test_the_state_survives_a_checkpoint():
    s = GuardSettings(keep_best="reward", hack_window=1)
    g = Guard(s)
    for r in (row(0, 0.1, 0.9), row(1, 0.5, 0.8)):
        g.see(r)
        g.is_new_best(r)
    back = Guard.restore(s, g.state(), list(g.evals))
    assert back.state() == g.state() and back.best == {"step": 1, "score": 0.5} and len(back.alarms) == 1
    assert back.see(row(2, 0.6, 0.7)) and back.evals[-1]["eval_alarms_total"] == 2  # the window reaches back
