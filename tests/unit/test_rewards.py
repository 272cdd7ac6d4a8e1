"""The built-in checker (rlhf_ray.rewards) on the replies a policy actually writes, nasty ones included."""

import pytest

from rlhf_ray.engines.scoring import call_reward_function, required_keywords
from rlhf_ray.rewards import exact_answer, extract_answer, same_answer


@pytest.mark.parametrize("reply, expected", [
    ("10", "10"),
    ("The answer is 10.", "10"),
    ("6 + 4 = 10", "10"),                        # the last number, not the first
    ("12 is 6 + 4 which rounds up.", "4"),       # ... even when the model put its guess first
    ("5 - 10 = -5", "-5"),                       # a negative result
    ("The range is 10-12", "12"),                # a range's hyphen is no minus sign
    ("That is 1,234 apples", "1,234"),           # thousands separators
    ("Pick 3, 4 or 5", "5"),                     # a list is not one number
    ("pi is about 3.14.", "3.14"),               # the sentence's period is not a decimal point
    ("H2O has 3 atoms", "3"),                    # digits inside a word are not a number
    ("So \\boxed{42}. Or maybe 43", "42"),       # \boxed wins over later numbers
    ("\\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # the last box, nested braces kept
    ("\\boxed{2^{10}", "10"),                    # an unclosed box: fall back to the last number
    ("Work: 3 * 24 = 72\n#### 72", "72"),        # GSM8K's marker
    ("#### 1,000 dollars", "1,000"),
    ("#### none\nbut 7", "7"),                   # a marker without a number: fall back
    ("I cannot answer that.", None),
    ("", None),
])
def test_extract_answer(reply, expected):
    assert extract_answer(reply) == expected


@pytest.mark.parametrize("reply, gold, same", [
    ("10", "10", True), ("10.0", "10", True), ("10.", "10", True), ("$10", "10", True), ("1,234", "1234", True),
    ("0.5", "1/2", True), ("\\frac{1}{2}", "0.5", True), ("\\dfrac{3}{4}", "0.75", True), ("−5", "-5", True),
    ("50%", "50", True), ("11", "10", False), ("1/0", "0", False), ("Paris.", "paris", True),
    ("\\text{Paris}", "Paris", True), ("Lyon", "Paris", False), (None, "10", False), ("10", None, False),
])
def test_same_answer(reply, gold, same):
    assert same_answer(reply, gold) is same


def test_exact_answer_scores_each_reply_against_its_own_row():
    responses = ["6 + 4 = 10", "I think it is 12", "\\boxed{7}", "no idea", "Natalia sold 72 clips."]
    answer = ["10", 10, "7", "3", "She sold 48 + 24 = 72 clips.\n#### 72"]  # any JSON value; a GSM8K solution
    assert exact_answer([""] * 5, responses, answer=answer) == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert exact_answer([], [], answer=[]) == []


def test_exact_answer_as_the_reward_stage_calls_it():
    # The scorer passes every column and metadata field by keyword; the checker needs `answer` and ignores the rest.
    assert required_keywords(exact_answer) == ["answer"]
    out = call_reward_function(exact_answer, ["q"] * 2, ["= 3", "3."], answer=["3", None], meta=[{}, {}],
                               response_ids=[[1], [2]])
    assert out == [1.0, 0.0]


def test_the_arithmetic_example_data_is_generated_and_holds_out_whole_pairs(tmp_path):
    """configs/data/arith/ is what `python -m examples.arith.arith_data configs/data/arith` writes; its held-out
    prompts ask sums no training prompt asks, and every answer is right."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-m", "examples.arith.arith_data", str(tmp_path)], cwd=root, check=True,
                   capture_output=True)
    rows = {}
    for name in ("arith_train.jsonl", "arith_eval.jsonl"):
        assert (root / "configs/data/arith" / name).read_bytes() == (tmp_path / name).read_bytes(), name
        rows[name] = [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
    pairs = {n: {(r["meta"]["a"], r["meta"]["b"]) for r in rs} for n, rs in rows.items()}
    assert len(pairs["arith_eval.jsonl"]) == 16 and not pairs["arith_eval.jsonl"] & pairs["arith_train.jsonl"]
    for r in rows["arith_train.jsonl"] + rows["arith_eval.jsonl"]:
        a, b = r["meta"]["a"], r["meta"]["b"]
        assert r["answer"] == str(a + b) and f"{a}" in r["prompt"] and exact_answer([], [f"{a} + {b} = {a + b}"],
                                                                                  answer=[r["answer"]]) == [1.0]
