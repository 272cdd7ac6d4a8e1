"""Cheap, deterministic reward functions that both benchmark sides load by file path (stdlib only)."""


def letter_frac(prompts: list[str], completions: list[str], **kwargs) -> list[float]:
    """The fraction of characters in each completion that are letters (0.0 for an empty one).

    Called as fn(prompts, completions, **metadata) by rlhf-ray and TRL alike; the metadata (response_ids,
    completion_ids, trainer_state, ...) is ignored.
    """
    return [sum(c.isalpha() for c in text) / len(text) if text else 0.0 for text in completions]
