"""The quickstart's generated warm-and-helpful data: sizes, determinism, disjoint splits, warmth and lengths."""

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from statistics import mean

import pytest

from examples.warm import warm_data
from examples.warm.labelers import vader_warmth
from rlhf_ray import data


@pytest.fixture(scope="module")
def splits():
    return warm_data.build(seed=0)


def test_sizes_and_topic_coverage(splits):
    assert len(warm_data.TOPICS) >= 40
    assert len(splits["sft"]) >= 600 and len(splits["train"]) >= 600 and len(splits["eval"]) >= 200
    for name, rows in splits.items():
        assert len({e.topic for e in rows}) == len(warm_data.TOPICS), name  # every split covers every topic
    for t in warm_data.TOPICS:
        assert len(t.tips) >= 4 and len(t.asks) >= 3 and len(t.contexts) >= 3 and t.worries, t.name


def test_same_seed_same_data_other_seed_other_data():
    assert warm_data.build(0) == warm_data.build(0)
    assert warm_data.sft_demonstrations(1) != warm_data.sft_demonstrations(0)


def test_files_are_byte_identical_across_processes_and_hash_seeds(tmp_path):
    counts = warm_data.write_all(tmp_path / "a")
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    subprocess.run([sys.executable, "-m", "examples.warm.warm_data", str(tmp_path / "b")], check=True, env=env,
                   capture_output=True)
    for name in warm_data.FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert counts["warm_sft.jsonl"] >= 600


def test_prompts_unique_and_splits_disjoint(splits):
    prompts = {name: [e.prompt for e in rows] for name, rows in splits.items()}
    for name, ps in prompts.items():
        assert len(set(ps)) == len(ps), name
    sft, train, held = (set(prompts[n]) for n in ("sft", "train", "eval"))
    assert not (sft & train) and not (sft & held) and not (train & held)


def test_prompts_vary_in_form_and_mood(splits):
    rows = [e for rs in splits.values() for e in rs]
    assert 0.25 <= mean(e.low_mood for e in rows) <= 0.6  # enough users in a mild low mood
    starts = Counter(" ".join(e.prompt.split()[:3]) for e in rows)
    assert len(starts) >= 100 and starts.most_common(1)[0][1] < 0.1 * len(rows)
    assert any(e.prompt.endswith("?") for e in rows) and any(not e.prompt.endswith("?") for e in rows)


def test_demonstrations_are_warm_and_beat_their_own_bare_tips(splits):
    rows = [e for rs in splits.values() for e in rs]
    warm = vader_warmth([e.prompt for e in rows], [e.response for e in rows])
    cold = vader_warmth([e.prompt for e in rows], [e.cold for e in rows])
    assert mean(warm) >= 0.85
    assert mean(warm) >= mean(cold) + 0.15
    assert mean(w > c for w, c in zip(warm, cold)) >= 0.95
    assert all(t[1:] in e.response for e in rows for t in e.tips)  # the same tips: only warmth differs


def test_response_lengths_and_layouts(splits):
    rows = [e for rs in splits.values() for e in rs]
    words = [len(e.response.split()) for e in rows]
    assert warm_data.MIN_WORDS <= min(words) and max(words) <= warm_data.MAX_WORDS
    assert any("\n1. " in e.response for e in rows) and any("\n- " in e.response for e in rows)
    assert len({e.response for e in rows}) == len(rows)


def test_written_files_load_as_project_datasets(tmp_path):
    counts = warm_data.write_all(tmp_path)
    for name, (split, fields) in warm_data.FILES.items():
        kind = "demonstrations" if "response" in fields else "prompts"
        rows, report = data.load_rows(str(tmp_path / name), kind)
        columns = rows[0].get("columns", {})
        assert len(rows) == counts[name] == report.kept and set(rows[0]) - {"columns"} | set(columns) == set(fields)
        assert set(columns) == ({"topic"} if kind == "prompts" else set())  # the topic reaches the gold judge
    assert warm_data.eval_prompts() == [{"prompt": r["prompt"]} for r in
                                        data.load_rows(str(tmp_path / "warm_sft_eval.jsonl"), "demonstrations")[0]]


def test_committed_files_are_what_the_generator_writes(tmp_path):
    """configs/data/warm/ is generated (python -m examples.warm.warm_data configs/data/warm); it must not drift."""
    committed = Path(__file__).resolve().parents[2] / "configs" / "data" / "warm"
    warm_data.write_all(tmp_path)
    for f in sorted(tmp_path.iterdir()):
        assert (committed / f.name).read_bytes() == f.read_bytes(), f.name


def test_the_gold_judge_wants_warm_relevant_fresh_replies():
    """labelers.warm_and_helpful ranks replies as a person who asked would: a warm on-topic reply above a plain
    on-topic one, both above warm words about nothing, and a looping gush lowest, even though the labeler (VADER
    alone) ranks the gush first."""
    from examples.warm.labelers import warm_and_helpful
    from rlhf_ray.engines.scoring import required_keywords

    prompt = "How do I bake my first loaf of bread?"
    replies = ["Happy to help! Use lukewarm water so the yeast lives, and let the dough rise somewhere warm.",
               "Use lukewarm water for the yeast and let the dough rise until doubled.",
               "What a wonderful question! I'm delighted you asked, and I'm sure you'll do great!",
               "I'm so glad you asked! I'm so glad I could help! I'm so glad I could help! I'm so glad!"]
    gold = warm_and_helpful([prompt] * 4, replies, topic=["baking bread"] * 4)
    proxy = vader_warmth([prompt] * 4, replies)
    assert gold == sorted(gold, reverse=True) and gold[0] > 0.9 and gold[2] <= 0.5 and gold[3] < 0.4
    assert proxy[3] > proxy[1] and proxy[2] > proxy[1]  # the proxy prefers the gushing replies
    assert required_keywords(warm_and_helpful) == ["topic"]  # a prompts file without topics is refused early


def test_the_gold_judge_reads_relevance_from_each_topics_own_keywords(splits):
    """labelers.relevance counts the reply's words among its topic's hand-written keywords: every topic has
    some, few words serve two topics, and the demonstrations (written from each topic's tips) read as on topic
    while the same reply read against another topic mostly does not."""
    from examples.warm import labelers as L
    from examples.warm.topic_keywords import KEYWORDS

    assert list(KEYWORDS) == [t.name for t in warm_data.TOPICS]
    assert all(20 <= len(words) <= 35 for words in KEYWORDS.values())
    assert max(Counter(w for words in KEYWORDS.values() for w in words).values()) <= 2
    on_topic = [L.relevance(e.response, e.topic) for e in splits["sft"]]
    names = [t.name for t in warm_data.TOPICS]
    off_topic = [L.relevance(e.response, names[(names.index(e.topic) + 7) % len(names)]) for e in splits["sft"]]
    assert mean(r == 1.0 for r in on_topic) > 0.95 and mean(r == 1.0 for r in off_topic) < 0.1


def test_the_simulated_human_is_gold_plus_a_bias_for_exclamations_plus_a_repeatable_noise():
    """labelers.simulated_human: the gold judge's score, + BIAS_PER_MARK per exclamation mark (capped), + noise of
    standard deviation NOISE that is the same for the same texts (a rerun labels alike) and differs between
    replies."""
    from examples.warm import labelers as L

    prompt = "How do I bake my first loaf of bread?"
    replies = ["Use lukewarm water for the yeast and let the dough rise until doubled.",
               "Use lukewarm water for the yeast and let the dough rise until doubled!!!",
               "Knead the dough for ten minutes, then let it rise somewhere warm!!!!!!!!"]
    human = L.simulated_human([prompt] * 3, replies, topic=["baking bread"] * 3)
    gold = L.warm_and_helpful([prompt] * 3, replies, topic=["baking bread"] * 3)
    assert human == L.simulated_human([prompt] * 3, replies, topic=["baking bread"] * 3)
    noise = [h - g - L.BIAS_PER_MARK * L.exclamations(r) for h, g, r in zip(human, gold, replies)]
    assert [L.exclamations(r) for r in replies] == [0, 3, L.MAX_MARKS]
    assert all(abs(n) < 4 * L.NOISE for n in noise) and len(set(noise)) == 3
    draws = [L._reading(prompt, f"reply {i}") for i in range(2000)]
    mean = sum(draws) / len(draws)
    sd = (sum((d - mean) ** 2 for d in draws) / len(draws)) ** 0.5
    assert abs(mean) < 0.1 * L.NOISE and abs(sd - L.NOISE) < 0.1 * L.NOISE
