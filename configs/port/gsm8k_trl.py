# configs/port/gsm8k_trl.py
"""GSM8K correctness as written for TRL's GRPOTrainer: `completions` and the dataset's `answer` column come by
keyword, one reward per completion. rlhf-ray calls a function that names `completions` the same way."""

import re

NUMBER = re.compile(r"-?[0-9][0-9,]*(?:\.[0-9]+)?")


def correctness_reward(completions, answer, **kwargs):
    """1.0 when the completion's last number is the one after `####` in the answer, else 0.0."""
    rewards = []
    for completion, solution in zip(completions, answer):
        # A text prompt's completion is a text; a chat prompt's is a list of one assistant message.
        text = completion if isinstance(completion, str) else completion[0]["content"]
        found = NUMBER.findall(text)
        truth = solution.split("####")[-1].strip().replace(",", "")
        rewards.append(float(bool(found) and found[-1].replace(",", "") == truth))
    return rewards


if __name__ == "__main__":
    answer = ["48 / 2 = <<48/2=24>>24\n#### 72"] * 3
    chat = [{"role": "assistant", "content": "So it sells 72."}]
    assert correctness_reward(["It sells 72 muffins.", "About 70.", chat], answer) == [1.0, 0.0, 1.0]
