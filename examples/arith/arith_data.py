"""The verifiable-reward example's data: small arithmetic questions with their answers, built here (no hub).

SmolLM2-135M-Instruct answers "What is 6 + 4?" right about a quarter of the time when it samples at T = 1
(measured: 0.25 on 256 samples; two-digit sums 0.04, single-digit products 0.15), so sums of two single-digit
numbers are hard enough to learn from and easy enough to give reward from the first batch. Rows are
`{prompt, answer}`, the form a TRL user brings: the `answer` column reaches the reward function by keyword.

The 81 ordered pairs (a, b) with a, b in 1..9 are split by pair: the 16 held-out pairs appear in no training
prompt, so held-out accuracy measures arithmetic the policy was not rewarded on, not memorised answers. Each pair
is asked in several phrasings.

    python -m examples.arith.arith_data OUT_DIR [--seed 0]   # writes arith_train.jsonl and arith_eval.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

PHRASINGS = ["What is {a} + {b}?", "What is {a} plus {b}?", "Compute {a} + {b}.", "Add {a} and {b}.",
             "How much is {a} + {b}?"]
INSTRUCTION = " Answer with just the number."
HELD_OUT_PAIRS = 16
EVAL_PHRASINGS = 2


def rows(pairs: list[tuple[int, int]], phrasings: list[str]) -> list[dict]:
    return [{"prompt": p.format(a=a, b=b) + INSTRUCTION, "answer": str(a + b), "meta": {"a": a, "b": b}}
            for a, b in pairs for p in phrasings]


def build(seed: int = 0) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    pairs = [(a, b) for a in range(1, 10) for b in range(1, 10)]
    rng.shuffle(pairs)
    held, train = sorted(pairs[:HELD_OUT_PAIRS]), sorted(pairs[HELD_OUT_PAIRS:])
    ev = [r for i, (a, b) in enumerate(held)
          for r in rows([(a, b)], [PHRASINGS[(i + k) % len(PHRASINGS)] for k in range(EVAL_PHRASINGS)])]
    tr = rows(train, PHRASINGS)
    rng.shuffle(tr)
    return {"arith_train.jsonl": tr, "arith_eval.jsonl": ev}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in build(args.seed).items():
        (args.out_dir / name).write_text("".join(json.dumps(r) + "\n" for r in data))
        print(f"{args.out_dir / name}: {len(data)} rows")


if __name__ == "__main__":
    main()
