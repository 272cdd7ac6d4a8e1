"""Simulated human judges built on the VADER sentiment lexicon (vaderSentiment, MIT; no downloads).

`vader_warmth` is the quickstart's stand-in for a human who wants replies that are warm and helpful: it scores a
response by VADER's compound sentiment, mapped to [0, 1]. It doubles as a reward function
(`module:function(prompts, responses) -> list[float]`) and as the labeler of the preference-collection stage.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def _analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader_warmth(prompts: list[str], responses: list[str]) -> list[float]:
    """(compound + 1) / 2 of each response: 0 hostile, 0.5 neutral, 1 warm."""
    analyzer = _analyzer()
    return [(analyzer.polarity_scores(r)["compound"] + 1.0) / 2.0 for r in responses]
