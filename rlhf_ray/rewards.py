"""Built-in reward functions for verifiable tasks, named in a config as `rlhf_ray.rewards:exact_answer`, and the
text measures judges share (`distinct_2`).

A reward function takes the prompts, the responses and the dataset's columns by keyword, one value per response
(TRL's convention); it returns one float per response.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any, Optional

# A number as people write it: -12, 1,234 (thousands groups), 3.5, 3/4; not the digits inside a word (H2O). The sign
# counts only where it cannot be a subtraction or a range ("10-12" ends in 12, not -12).
_NUMBER = re.compile(r"(?<![\w.)])[-−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?")
_BOXED = "\\boxed{"


def _last_boxed(text: str) -> Optional[str]:
    """The contents of the last `\\boxed{...}`, braces balanced (`\\boxed{2^{10}}` -> `2^{10}`); None if there is
    none or it never closes."""
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth, i = 1, start + len(_BOXED)
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def _last_number(text: str) -> Optional[str]:
    found = _NUMBER.findall(text)
    return found[-1] if found else None


def extract_answer(text: str) -> Optional[str]:
    """A reply's final answer: the last `\\boxed{...}`; else what follows the last `####` (GSM8K's marker) if it
    holds a number; else the last number in the reply; None when there is none."""
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    if "####" in text:
        after = _last_number(text.rsplit("####", 1)[1])
        if after is not None:
            return after
    return _last_number(text)


def _as_number(text: str) -> Optional[Fraction]:
    """`text` as an exact number, or None: `$1,234.`, `-3`, `0.50`, `1/2`, `\\frac{1}{2}`, `50%` (as 50)."""
    t = text.strip().replace("−", "-").replace("$", "").replace(" ", "").rstrip(".").rstrip("%")
    t = re.sub(r"\\[dt]?frac\{(-?\d+)\}\{(\d+)\}", r"\1/\2", t)
    t = re.sub(r"(?<=\d),(?=\d{3}\b)", "", t)
    try:
        return Fraction(t)
    except (ValueError, ZeroDivisionError):
        return None


def _as_text(text: str) -> str:
    t = re.sub(r"\\text\{([^}]*)\}", r"\1", text.strip())
    return " ".join(t.rstrip(".").lower().split())


def _gold(answer: Any) -> Optional[str]:
    """The expected answer from a dataset value: a number or text as it is; a worked solution that ends in `####
    n` or `\\boxed{n}` (GSM8K, MATH) reduced to n."""
    if answer is None:
        return None
    text = str(answer)
    return extract_answer(text) if ("####" in text or _BOXED in text) else text.strip()


def same_answer(reply: Optional[str], gold: Optional[str]) -> bool:
    """Equal as exact numbers when both read as numbers (10 = 10.0, 1/2 = 0.5 = \\frac{1}{2}), else as text
    (case, spacing and a final period ignored)."""
    if reply is None or gold is None:
        return False
    a, b = _as_number(reply), _as_number(gold)
    if a is not None and b is not None:
        return a == b
    return _as_text(reply) == _as_text(gold)


def distinct_2(texts: list[str]) -> Optional[float]:
    """Mean over replies of distinct word bigrams / word bigrams (Li et al. 2016), per reply, so it measures
    repetition inside a reply: "so glad! so glad! so glad!" scores 0.6. Replies of one word have no bigram and
    do not count; None when no reply has one."""
    ratios = []
    for t in texts:
        words = t.split()
        grams = list(zip(words, words[1:]))
        if grams:
            ratios.append(len(set(grams)) / len(grams))
    return sum(ratios) / len(ratios) if ratios else None


def exact_answer(prompts: list, responses: list[str], *, answer: list, **kwargs) -> list[float]:
    """1.0 where a response's final answer (`extract_answer`) equals its prompt's `answer` column, else 0.0.

    `answer` may be a number, a text, or a worked solution ending in `#### n` or `\\boxed{n}`."""
    return [float(same_answer(extract_answer(r), _gold(a))) for r, a in zip(responses, answer)]
