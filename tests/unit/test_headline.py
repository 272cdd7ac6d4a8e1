"""The PPO headline: the gold gain paired over held-out prompts, its standard error, the RM accuracy's, and the
replies side by side."""

import math

import pytest

from rlhf_ray.stages import headline


def rows(golds: dict[str, list[float]]) -> list[dict]:
    return [{"prompt": p, "response": f"{p} reply {i}", headline.GOLD: g}
            for p, gs in golds.items() for i, g in enumerate(gs)]


def test_the_gain_is_paired_over_prompts_after_averaging_each_prompts_samples():
    base = rows({"a": [0.2, 0.4], "b": [0.8, 0.8], "c": [0.5, 0.5]})
    kept = rows({"a": [0.5, 0.5], "b": [0.9, 0.9], "c": [0.6, 0.8]})
    g = headline.paired_gain(base, kept, step=3)
    diffs = [0.2, 0.1, 0.2]  # per prompt: 0.5-0.3, 0.9-0.8, 0.7-0.5
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    assert (g.gain, g.se, g.prompts, g.step) == (pytest.approx(mean), pytest.approx(sd / math.sqrt(3)), 3, 3)
    base_mean = (0.3 + 0.8 + 0.5) / 3
    assert (g.base, g.kept) == (pytest.approx(base_mean), pytest.approx(base_mean + mean))
    assert g.line() == (f"gold gain +{mean:.3f} ± {sd / math.sqrt(3):.3f} (paired SE, 3 prompts): base "
                        f"{base_mean:.3f} → kept {base_mean + mean:.3f} at step 3")


def test_a_prompt_asked_by_only_one_evaluation_is_left_out_of_the_pairing():
    g = headline.paired_gain(rows({"a": [0.1], "b": [0.3]}), rows({"a": [0.4], "z": [1.0]}), step=1)
    assert (g.prompts, g.gain, g.base) == (1, pytest.approx(0.3), pytest.approx(0.1))


def test_the_rm_accuracy_standard_error_is_binomial():
    assert headline.accuracy_se(0.8, 100) == pytest.approx(0.04)


def test_side_by_side_shows_the_first_prompts_asked_each_with_every_policys_first_reply():
    base, kept = rows({"q1": [0.1, 0.9], "q2": [0.2], "q3": [0.3]}), rows({"q2": [0.6], "q1": [0.5]})
    lines = headline.side_by_side({"base": (0, base), "kept": (4, kept)}, prompts=2)
    assert lines == ['held-out prompt: "q1"', '  base (step 0, gold 0.10): "q1 reply 0"',
                     '  kept (step 4, gold 0.50): "q1 reply 0"', 'held-out prompt: "q2"',
                     '  base (step 0, gold 0.20): "q2 reply 0"', '  kept (step 4, gold 0.60): "q2 reply 0"']
