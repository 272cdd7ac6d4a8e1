"""Write the tiny-model datasets in configs/data/ (deterministic; rerun to regenerate, the files are committed).

Built from words the tiny tokenizer knows as single tokens (`rlhf_ray.models._WORDS`), so a 2-layer random-init
model can learn them within a minute of CPU:
  tiny_demos.jsonl  demonstrations: "<greeting>, can you describe the <adj> <noun>?" -> "Sure! The <noun> is
                    <adj>." The response copies two words from the prompt, so the held-out loss falls only
                    as far as the model learns the copy, not just the fixed words.
  tiny_prefs.jsonl  preferences: "<greeting>, what do you think of the <noun>?" chosen "The <noun> is <warm
                    adj> and <warm adj>.", rejected the same with two cold adjectives: a learnable labeler
                    (chosen and rejected have the same length in tokens, so length is no cue).
  tiny_answers.jsonl prompts with a verifiable answer, as a TRL user brings a task: "<greeting>, which word
                    follows: <adj> <noun>?" with `answer` <noun> and a `meta` dict; every other row is a chat
                    prompt (`messages`: a system turn, then the user's) instead of a text `prompt`.
"""

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "data"
GREETINGS = ["Hello", "Please", "Well", "Sure", "Thank you", "Certainly", "Good question"]
NOUNS = ("book house garden river letter question story apple window machine song city problem picture mountain "
         "kitchen bicycle forest journey lantern blanket village number answer computer umbrella orange pencil "
         "castle planet festival library sandwich engine shadow").split()
ADJS = "red happy quiet bright large kind clever strange warm cold quick gentle simple golden".split()
WARM = "kind happy warm gentle friendly bright clever golden".split()
COLD = "broken cold noisy strange empty heavy ancient purple".split()


def demonstrations(n: int, rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(n):
        g, a, noun = rng.choice(GREETINGS), rng.choice(ADJS), rng.choice(NOUNS)
        rows.append({"prompt": f"{g}, can you describe the {a} {noun}?", "response": f"Sure! The {noun} is {a}."})
    return rows


def preferences(n: int, rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(n):
        g, noun = rng.choice(GREETINGS), rng.choice(NOUNS)
        w, c = rng.sample(WARM, 2), rng.sample(COLD, 2)
        rows.append({"prompt": f"{g}, what do you think of the {noun}?",
                     "chosen": f"The {noun} is {w[0]} and {w[1]}.", "rejected": f"The {noun} is {c[0]} and {c[1]}."})
    return rows


def answers(n: int, rng: random.Random) -> list[dict]:
    rows = []
    for i in range(n):
        g, a, noun = rng.choice(GREETINGS), rng.choice(ADJS), rng.choice(NOUNS)
        question = f"{g}, which word follows: {a} {noun}?"
        prompt = ({"messages": [{"role": "system", "content": "Answer with one word."},
                                {"role": "user", "content": question}]} if i % 2 else {"prompt": question})
        rows.append({**prompt, "answer": noun, "meta": {"id": i, "adj": a}})
    return rows


def _write(rows: list[dict], name: str) -> None:
    (OUT / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    _write(demonstrations(256, random.Random(1)), "tiny_demos.jsonl")
    _write(preferences(256, random.Random(2)), "tiny_prefs.jsonl")
    _write(answers(64, random.Random(3)), "tiny_answers.jsonl")
