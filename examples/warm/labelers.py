"""Simulated human judges for the quickstart's "reply warmly and helpfully" task (no downloads).

`warm_and_helpful` is the gold judge (`ppo.gold`), the person who asked: a reply must be warm *and* about the
question *and* not repeat itself. It needs the prompt's `topic` column (configs/data/warm), which reaches it by
keyword.

`simulated_human` is the quickstart's labeler, a rater with a realistic flaw: mostly the gold judge, plus noise
(two readings of one reply differ) and a bias (it is won over by exclamation marks, whether or not the reply
helps). The reward model learns mostly what gold wants and a little of what it does not, so optimising it a little
helps gold and over-optimising it ends in gushing that gold sees.

`vader_warmth` is the sentiment lexicon alone (VADER, vaderSentiment, MIT): a labeler that reads only warmth, the
flawed proxy of earlier quickstarts (PPO against it learns "I'm so glad I could help! I'm so glad ...").

All are reward functions (`module:function(prompts, responses, **columns) -> list[float]`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import random
import re
import sys
from collections import Counter
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

# Words that say nothing about a topic, and the feelings the prompts mention (echoing "stressed" is not help).
_STOP = frozenset("""a an the and or but if then so to of in on at by for with from into about as is are was were be
been being it its this that these those you your yours i me my we our they them their he she his her do does did done
have has had can could should would will just not no yes more most less very really also than too up down out over
under again some any each every all both few many much such own same other only what which who whom how when where why
there here get got make makes made take takes one two three first like want wants help tips tip way ways start going
feel feeling honestly lately right now stressed anxious nervous frustrated discouraged worried overwhelmed""".split())
_SHARED_BY = 6  # a word in the texts of more than this many topics is not specific to one


def _words(text: str) -> set[str]:
    """Content words, lower-cased, a final s dropped (a crude stem: "loaves" stays, "trails" -> "trail")."""
    return {w.removesuffix("s") for w in re.findall(r"[a-z]+", text.lower()) if len(w) >= 4 and w not in _STOP}


@lru_cache(maxsize=1)
def _topic_words() -> dict[str, frozenset[str]]:
    """Each topic's own words: from its subject, questions, requests and tips (warm_data.TOPICS), leaving out
    words that many topics share."""
    # By path: the reward actors load this file by path too, with no package around it.
    spec = importlib.util.spec_from_file_location("warm_example_data", Path(__file__).with_name("warm_data.py"))
    warm_data = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look themselves up
    spec.loader.exec_module(warm_data)
    words = {t.name: _words(" ".join([t.name, t.subject, *t.asks, *t.helps, *t.tips])) for t in warm_data.TOPICS}
    shared = Counter(w for ws in words.values() for w in ws)
    return {name: frozenset(w for w in ws if shared[w] <= _SHARED_BY) for name, ws in words.items()}


def relevance(prompt: str, response: str, topic: str) -> float:
    """1 when the reply uses two or more words of its topic or of the question itself, 0.5 for one, else 0."""
    vocabulary = _topic_words()[topic] | _words(prompt)
    return min(1.0, len(_words(response) & vocabulary) / 2)


def no_repetition(response: str) -> float:
    """The reply's distinct-2 (the guard's measure), scaled so a reply at 0.9 or above is not penalised: 1 for
    fresh text, about 0.6 for "so glad! I'm so glad! I'm so glad!"."""
    d2 = distinct_2([response])
    return 1.0 if d2 is None else min(1.0, d2 / 0.9)


def warm_and_helpful(prompts: list[str], responses: list[str], *, topic: list[str]) -> list[float]:
    """The quickstart's gold judge, in [0, 1]: (warmth + relevance) / 2, times the no-repetition factor. A warm
    on-topic reply scores near 1; a warm reply about nothing scores at most 0.5; a looping one less."""
    warmth = vader_warmth(prompts, responses)
    return [no_repetition(r) * (w + relevance(p, r, t)) / 2 for p, r, t, w in zip(prompts, responses, topic, warmth)]


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
