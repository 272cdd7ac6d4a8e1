"""A verifiable reward for the tiny-model PPO test. The tiny model starts from random weights, so the task must
be learnable from scratch in a few steps and give signal from the first batch: a dense token-level target."""


def target_token_frac(prompts, responses, response_ids):
    """Fraction of response tokens whose id is a multiple of 8 (about 1/8 of the vocabulary, so a random policy
    scores ~0.125 and a perfect one 1.0)."""
    return [sum(t % 8 == 0 for t in ids) / max(1, len(ids)) for ids in response_ids]


def contains_answer(prompts, responses, *, answer):
    """A checker against the dataset's `answer` column (configs/data/tiny_answers.jsonl), which reaches it as a
    keyword argument, one per response. 1 when the response names the answer; plus len(answer) / 100, so the
    recorded reward also shows which answer each response was checked against (the e2e test reads it back)."""
    return [float(a in r) + len(a) / 100 for r, a in zip(responses, answer)]


def first_token_odd(prompts, responses, response_ids):
    """1 when a response's first token id is odd: a coin flip per sample for the random-init model, so about half
    the groups of two have equal rewards (the dynamic-sampling test drops them)."""
    return [float(bool(ids) and ids[0] % 2 == 1) for ids in response_ids]


def verl_compute_score(data_source, solution_str, ground_truth, extra_info=None):
    """Written as veRL calls a `compute_score`, once per response: a value that names what it was given (the
    ground truth's length, the data source, the row's index), so the e2e test can read back that each response was
    scored with its own row's `reward_model.ground_truth` and `extra_info`."""
    return {"score": len(ground_truth) + 10.0 * (data_source == "openai/gsm8k") + 100.0 * extra_info["index"],
            "acc": False}


def trl_chat_format(completions, **kwargs):
    """Written as TRL calls a reward function: 0.5 for a completion given as one assistant message (a chat
    prompt's), 0.25 for a text."""
    return [0.5 if isinstance(c, list) and c[0]["role"] == "assistant" else 0.25 for c in completions]
