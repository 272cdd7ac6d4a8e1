"""The bench's repeat rule: rounds until every side's median is stable, the budget is spent or the cap is reached."""

import itertools

from rlhf_ray.bench import repeat


def _feed(*sides):
    """one_round that returns the next sample of each side."""
    its = [iter(s) for s in sides]
    return lambda i: [next(it) for it in its]


def test_stops_once_every_median_is_stable():
    # side a is stable after 3 rounds; side b's median moves 12% with its third sample, then settles
    samples, why = repeat.rounds(_feed([10, 10.2, 10.1, 10, 10], [10, 12, 9, 11, 11]), repeat.Until(min_n=3))
    assert why == "stable" and len(samples[0]) == 4
    assert samples[1] == [10, 12, 9, 11]


def test_never_fewer_than_min_n():
    samples, why = repeat.rounds(_feed([5] * 9), repeat.Until(min_n=3))
    assert (len(samples[0]), why) == (3, "stable")


def test_caps_at_max_n_when_never_stable():
    grows = [2.0**k for k in range(20)]  # each sample doubles: the median always moves
    samples, why = repeat.rounds(_feed(grows), repeat.Until(min_n=3, max_n=6))
    assert (len(samples[0]), why) == (6, "max")


def test_budget_stops_an_unstable_measurement():
    clock = itertools.count(0.0, 10.0).__next__  # 10 s per call of the clock
    grows = [2.0**k for k in range(20)]
    samples, why = repeat.rounds(_feed(grows), repeat.Until(min_n=3, max_n=9, budget_s=25), clock=clock)
    assert why == "budget" and len(samples[0]) == 3  # clock reads 10, 20, 30 after rounds 1-3


def test_round_index_is_passed():
    seen = []
    repeat.rounds(lambda i: seen.append(i) or [1.0], repeat.Until(min_n=2, max_n=4))
    assert seen == [0, 1]


def test_spread_and_format():
    s = repeat.spread([3.0, 1.0, 2.0])
    assert s == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert repeat.fmt(s, 1) == "2.0 (1.0-3.0, n=3)"
