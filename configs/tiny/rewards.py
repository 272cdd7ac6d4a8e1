"""A verifiable reward for the tiny-model PPO test. The tiny model starts from random weights, so the task must
be learnable from scratch in a few steps and give signal from the first batch: a dense token-level target."""


def target_token_frac(prompts, responses, response_ids):
    """Fraction of response tokens whose id is a multiple of 8 (about 1/8 of the vocabulary, so a random policy
    scores ~0.125 and a perfect one 1.0)."""
    return [sum(t % 8 == 0 for t in ids) / max(1, len(ids)) for ids in response_ids]
