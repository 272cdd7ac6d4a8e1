"""Write the sample datasets of docs/porting.md (deterministic; rerun to regenerate, the files are committed).

A few rows each, in the layouts the peers' runs read, so that `rlhf-ray validate configs/port/*.yaml` checks each
port against the data it will meet (columns, chat prompts, veRL's nested ground truth). The word problems are
written for this page in GSM8K's style (a worked answer ending in `#### N`); they are not GSM8K's.

  gsm8k_sample.jsonl           GSM8K's raw layout, `question` and `answer`, as a TRL script loads it
  gsm8k_verl_train.parquet     veRL's preprocessed layout (what its GSM8K preprocessing writes): `data_source`,
  gsm8k_verl_test.parquet      `prompt` (a message list), `ability`, `reward_model: {style, ground_truth}`,
                               `extra_info`
  prefs_conversational.jsonl   TRL's conversational preference layout: `prompt` a message list, `chosen` and
                               `rejected` one assistant message each
  prompts_openrlhf.jsonl       OpenRLHF's prompt layout with `--input_key context_messages`: a message list
"""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

OUT = Path(__file__).resolve().parent
INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'  # veRL's gsm8k.py suffix

PROBLEMS = [
    ("Mia has 3 boxes of 12 pencils. She gives away 9 pencils. How many pencils does she have left?",
     "Mia has 3 * 12 = <<3*12=36>>36 pencils.\nShe has 36 - 9 = <<36-9=27>>27 left.\n#### 27"),
    ("A bakery sells 48 muffins in the morning and half as many in the afternoon. How many muffins does it sell?",
     "In the afternoon it sells 48 / 2 = <<48/2=24>>24 muffins.\nIn all it sells 48 + 24 = <<48+24=72>>72.\n#### 72"),
    ("Tom reads 15 pages a day. How many pages does he read in 2 weeks?",
     "2 weeks is 2 * 7 = <<2*7=14>>14 days.\nHe reads 14 * 15 = <<14*15=210>>210 pages.\n#### 210"),
    ("A ticket costs $8 and a drink costs $3. How much do 4 tickets and 2 drinks cost?",
     "4 tickets cost 4 * 8 = <<4*8=32>>32 dollars.\n2 drinks cost 2 * 3 = <<2*3=6>>6 dollars.\n"
     "Together they cost 32 + 6 = <<32+6=38>>38 dollars.\n#### 38"),
    ("A printer prints 1,250 pages a day. How many pages does it print in 4 days?",
     "It prints 1,250 * 4 = <<1250*4=5000>>5,000 pages.\n#### 5,000"),
    ("Sam saves $5 a week for 10 weeks and then spends $12. How many dollars does he have?",
     "He saves 5 * 10 = <<5*10=50>>50 dollars.\n50 - 12 = <<50-12=38>>38.\n#### 38"),
]
TRAIN, TEST = PROBLEMS[:4], PROBLEMS[4:]

PREFERENCES = [
    ("How do I keep basil alive indoors?",
     "Give it a sunny window (six hours of light), water when the top inch of soil is dry, and pinch off the "
     "flower buds so it keeps making leaves.",
     "Basil is a plant."),
    ("Can you explain what a hash table is in one paragraph?",
     "A hash table stores key-value pairs in an array: a hash function turns each key into an index, so a lookup "
     "goes straight to the slot instead of searching; collisions are handled by chaining or probing.",
     "It is a table where you hash things. Tables are used in many programs."),
    ("Write a haiku about autumn rain.",
     "Cold rain on red leaves\nthe gutter hums a low song\nlamps come on early",
     "Autumn rain is wet. It falls in autumn. That is a haiku about rain."),
]

OPENRLHF_PROMPTS = [
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Suggest three names for a neighbourhood book club."}],
    [{"role": "user", "content": "What should I pack for a two-day hike?"}],
    [{"role": "user", "content": "Summarise why the sky looks blue, for a ten-year-old."}],
]


def final(answer: str) -> str:
    """The number after `####`, as veRL's preprocessing extracts it (commas dropped)."""
    return answer.split("#### ")[1].replace(",", "")


def gsm8k_raw() -> list[dict]:
    return [{"question": q, "answer": a} for q, a in TRAIN]


def gsm8k_verl(split: str) -> list[dict]:
    rows = TRAIN if split == "train" else TEST
    return [{"data_source": "openai/gsm8k",
             "prompt": [{"role": "user", "content": f"{q} {INSTRUCTION}"}],
             "ability": "math",
             "reward_model": {"style": "rule", "ground_truth": final(a)},
             "extra_info": {"split": split, "index": i, "answer": a, "question": q}}
            for i, (q, a) in enumerate(rows)]


def preferences() -> list[dict]:
    return [{"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}]} for p, c, r in PREFERENCES]


def openrlhf_prompts() -> list[dict]:
    return [{"context_messages": m} for m in OPENRLHF_PROMPTS]


JSONL = {"gsm8k_sample.jsonl": gsm8k_raw, "prefs_conversational.jsonl": preferences,
         "prompts_openrlhf.jsonl": openrlhf_prompts}
PARQUET = {"gsm8k_verl_train.parquet": lambda: gsm8k_verl("train"),
           "gsm8k_verl_test.parquet": lambda: gsm8k_verl("test")}


if __name__ == "__main__":
    for name, rows in JSONL.items():
        (OUT / name).write_text("".join(json.dumps(r) + "\n" for r in rows()))
    for name, rows in PARQUET.items():
        pq.write_table(pa.Table.from_pylist(rows()), OUT / name)
