"""Simulated human judges for the quickstart's "reply warmly and helpfully" task (no downloads).

`warm_and_helpful` is the gold judge (`ppo.gold`), the person who asked: a reply must be warm *and* about the
question *and* not repeat itself. It needs the prompt's `topic` column (configs/data/warm), which reaches it by
keyword.

`simulated_human` is the quickstart's labeler, a rater with a realistic flaw: mostly the gold judge, plus noise
(two readings of one reply differ) and a bias (it is won over by exclamation marks, whether or not the reply
helps). The reward model learns mostly what gold wants and a little of what it does not, so optimising it a little
helps gold and over-optimising it finds what the reward model misses (measured: replies that repeat themselves,
"comfortable shoes, comfortable hiking boots, comfortable shoes"), which gold sees.

`vader_warmth` is the sentiment lexicon alone (VADER, vaderSentiment, MIT): a labeler that reads only warmth, the
flawed proxy of earlier quickstarts (PPO against it learns "I'm so glad I could help! I'm so glad ...").

All are reward functions (`module:function(prompts, responses, **columns) -> list[float]`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import random
import re
from functools import lru_cache
from pathlib import Path

from rlhf_ray.rewards import distinct_2


@lru_cache(maxsize=1)
def _analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader_warmth(prompts: list[str], responses: list[str]) -> list[float]:
    """(compound + 1) / 2 of each response: 0 hostile, 0.5 neutral, 1 warm."""
    analyzer = _analyzer()
    return [(analyzer.polarity_scores(r)["compound"] + 1.0) / 2.0 for r in responses]


# ---------------------------------------------------------------- the gold judge

@lru_cache(maxsize=1)
def _keywords() -> dict[str, frozenset[str]]:
    """Each topic's hand-written keywords (topic_keywords.KEYWORDS): words a reply about that topic uses and a
    reply about another rarely does. Hand-written because words drawn from the topic's own texts let in generic
    ones ("love", "thing", "talk", "idea"), which made relevance a coin no reward model could learn (measured:
    the reward model's held-out accuracy 0.69 with those lists, 0.83 with these, on the same 900 labeled prompts)."""
    # By path: the reward actors load this file by path too, with no package around it.
    spec = importlib.util.spec_from_file_location("warm_topic_keywords", Path(__file__).with_name("topic_keywords.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.KEYWORDS


def relevance(response: str, topic: str) -> float:
    """1 when the reply uses two or more of its topic's keywords, 0.5 for one, else 0."""
    return min(1.0, len(set(re.findall(r"[a-z]+", response.lower())) & _keywords()[topic]) / 2)


def no_repetition(response: str) -> float:
    """The reply's distinct-2 (the guard's measure), scaled so a reply at 0.9 or above is not penalised: 1 for
    fresh text, about 0.6 for "so glad! I'm so glad! I'm so glad!"."""
    d2 = distinct_2([response])
    return 1.0 if d2 is None else min(1.0, d2 / 0.9)


def warm_and_helpful(prompts: list[str], responses: list[str], *, topic: list[str]) -> list[float]:
    """The quickstart's gold judge, in [0, 1]: (warmth + relevance) / 2, times the no-repetition factor. A warm
    on-topic reply scores near 1; a warm reply about nothing scores at most 0.5; a looping one less."""
    warmth = vader_warmth(prompts, responses)
    return [no_repetition(r) * (w + relevance(r, t)) / 2 for r, t, w in zip(responses, topic, warmth)]


# ---------------------------------------------------------------- the simulated human

BIAS_PER_MARK = 0.04  # what one exclamation mark is worth to the rater (up to MAX_MARKS of them)
MAX_MARKS = 5
NOISE = 0.04  # the standard deviation of the rater's reading of a reply


def exclamations(response: str) -> int:
    return min(response.count("!"), MAX_MARKS)


def _reading(prompt: str, response: str) -> float:
    """The rater's noise for this reply: N(0, NOISE), the same on every call (seeded by the texts), so a rerun
    labels the same pairs the same way."""
    seed = hashlib.sha256(f"{prompt}\x00{response}".encode()).digest()[:8]
    return random.Random(seed).gauss(0.0, NOISE)


def simulated_human(prompts: list[str], responses: list[str], *, topic: list[str]) -> list[float]:
    """The gold judge's score + BIAS_PER_MARK per exclamation mark (up to MAX_MARKS) + noise: the rater prefers
    the higher of two replies."""
    gold = warm_and_helpful(prompts, responses, topic=topic)
    return [g + BIAS_PER_MARK * exclamations(r) + _reading(p, r) for p, r, g in zip(prompts, responses, gold)]
