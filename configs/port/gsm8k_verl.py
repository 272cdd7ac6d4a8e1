# configs/port/gsm8k_verl.py
"""GSM8K correctness as written for veRL's custom_reward_function: called once per response with the row's
`data_source`, the response text, `reward_model.ground_truth` and `extra_info`. rlhf-ray calls a function that
names `solution_str` the same way."""

import re


def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    """1.0 when the last `#### N` of the response is the ground truth (commas and `$` dropped), else 0.0: the
    strict check of veRL's built-in gsm8k scorer."""
    found = re.findall(r"#### (-?[0-9.,]+)", solution_str[-300:])
    if not found:
        return 0.0
    return 1.0 if found[-1].replace(",", "").replace("$", "") == ground_truth else 0.0


if __name__ == "__main__":
    assert compute_score("openai/gsm8k", "48 + 24 = 72\n#### 72", "72") == 1.0
    assert compute_score("openai/gsm8k", "It prints 5,000.\n#### 5,000", "5000") == 1.0
    assert compute_score("openai/gsm8k", "The answer is 72.", "72") == 0.0
