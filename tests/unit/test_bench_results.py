"""The benchmark's pure parts: the workload's batches and configs, the step summaries and the tables."""

import dataclasses

import pytest

from rlhf_ray.bench import steps, table, workload


def test_train_batch_is_prompt_then_response_tokens():
    w = workload.quick(workload.WORKLOADS["tiny"])
    ids = [[5, 6, 7], [8, 9]]
    w = workload.dataclasses.replace(w, prompts=2, group=2)
    b = workload.train_batch(w, ids)
    assert b["input_ids"].shape == (4, 3 + w.response_len)
    assert b["attention_mask"].sum(1).tolist() == [3 + w.response_len] * 2 + [2 + w.response_len] * 2
    assert b["loss_mask"].sum(1).tolist() == [w.response_len] * 4  # the loss reads exactly the response
    assert b["input_ids"][2, :2].tolist() == [8, 9] and b["input_ids"][2, -1] == 0  # right-padded
    assert (b["loss_mask"] <= b["attention_mask"]).all()


@pytest.mark.parametrize("advantage,staleness", [("grpo", 0), ("grpo", 1), ("gae", 0)])
def test_step_configs_validate(tmp_path, advantage, staleness):
    w = workload.WORKLOADS["smollm2"]
    cfg = steps.config(w, tmp_path / "p.jsonl", advantage, staleness, "rm" if advantage == "gae" else None,
                       steps.threads_for(w, staleness, advantage))
    assert (cfg.rollout.batch_size, cfg.rollout.n_samples, cfg.data.max_response_len) == (8, 4, 64)
    assert cfg.rollout.ignore_eos and cfg.ppo.mini_batch_size == 32 and cfg.ppo.steps == w.steps + 1
    assert cfg.ppo.kl_coef == (w.ppo_beta if advantage == "gae" else w.beta)
    # the actors that run at once split the 2 cores: generator and policy when overlapping, policy and critic
    # when training with a critic; alone, an actor has both
    roles = cfg.cluster.roles
    assert roles["generator"].threads == (1 if staleness else 2)
    assert roles["policy"].threads == (1 if staleness or advantage == "gae" else 2)


def test_summarize_phases_rates_and_idle():
    rows = [{"time_generate_s": 2.0, "time_score_s": 1.0, "time_train_s": 4.0, "time_sync_s": 1.0,
             "response_length_mean": 64.0, "generator_busy_s": 2.0, "staleness_max": 0},
            {"time_generate_s": 4.0, "time_score_s": 1.0, "time_train_s": 4.0, "time_sync_s": 1.0,
             "response_length_mean": 64.0, "generator_busy_s": 4.0, "staleness_max": 1}]
    s = steps.summarize(rows, samples=32)
    assert s["phase_s"] == {"generate": 3.0, "score": 1.0, "train": 4.0, "sync": 1.0}
    assert s["step_s"] == 9.0
    assert s["samples_per_s"] == pytest.approx(32 / 9)
    assert s["tokens_per_s"] == pytest.approx(32 * 64 / 9)
    assert s["generator_idle_frac"] == pytest.approx(1 - 3 / 9)
    assert s["staleness_max"] == 1


def _result():
    run = {"phase_s": {"generate": 6.0, "score": 1.0, "train": 12.0, "sync": 1.0}, "step_s": 20.0,
           "samples_per_s": 1.6, "tokens_per_s": 102.4, "generator_idle_frac": 0.7, "staleness_max": 0}
    return {
        "machine": {"cpu": "CPU X", "cores": 2, "memory_gib": 24.0, "gpu": None, "versions": {"torch": "2.13.0"}},
        "workload": workload.dataclasses.asdict(workload.WORKLOADS["smollm2"]), "fast": False, "started": "now",
        "generation": {"tokens": 6600, "raw_s": [20.0, 19.0, 22.0], "actor_s": [22.0, 20.0, 21.0],
                       "actor_tokens_per_s": 6600 / 21, "raw_tokens_per_s": 330.0, "ratio": 20 / 21,
                       "ratio_spread": {"median": 0.95, "min": 0.91, "max": 1.05, "n": 3},
                       "actor_engine_s": [19.9, 20.0], "call_overhead_s": 0.2},
        "learning": {"tokens": 3000, "raw_s": [10.0], "actor_s": [10.0], "actor_tokens_per_s": 300.0,
                     "raw_tokens_per_s": 300.0, "ratio": 1.0},  # a record from before spreads: none shown
        "learning_varied": {"tokens": 2800, "raw_s": [10.0, 10.0], "actor_s": [10.0, 11.0], "ratio": 10 / 10.5,
                            "padding": 0.41, "packed": {"tokens": 2800, "raw_s": [10.0, 10.0], "actor_s": [7.0, 7.0],
                                                        "ratio": 10 / 7}},
        "weight_sync": [{"bucket_bytes": 4 << 20, "buckets": 136, "bytes": 538_000_000, "total_s": 2.0,
                         "export_s": 1.0, "fetch_s": 0.5, "load_s": 0.5, "reload_s": 0.5, "memcpy_s": 0.05,
                         "total_spread": {"median": 2.0, "min": 1.9, "max": 2.25, "n": 5}}],
        "learner_memory": [_memory_row("default", {}, 100.0), _memory_row("ZeRO-3", {"zero_stage": 3}, 80.0),
                           _memory_row("ZeRO-3 + offload", {"zero_stage": 3, "untimed": True}, None),
                           _memory_row("LoRA", {"lora": {}}, 120.0),
                           _memory_row("LoRA, adapters pushed", {"lora": {}, "shares": True}, 120.0)],
        "ppo_steps": [{"max_staleness": 0, **run}, {"max_staleness": 1, **run, "step_s": 14.0}],
    }


def _memory_row(setting, fields, tokens_per_s):
    spread = {"median": tokens_per_s, "min": 90.0, "max": 130.0, "n": 4} if tokens_per_s else None
    return {"setting": setting, "fields": fields, "tokens_per_s": tokens_per_s, "tokens_per_s_spread": spread,
            "first_loss": 13.5, "trained_params": 4_000_000, "params": 135_000_000, "push_bytes": 538e6,
            "peak_mb": 5000.0}


def _trl():
    return {"grpo": {"mean_s": 34.0, "generate_s": 15.0, "trl_version": "0.99", "seconds_per_step": [33.0, 35.0]},
            "ppo": {"mean_s": 60.0, "generate_s": 20.0, "trl_version": "0.99"}}


def _ppo_run():
    return {"max_staleness": 0, "step_s": 30.0, "phase_s": {"generate": 7.0, "score": 3.0, "train": 18.0, "sync": 2.0}}


def test_peer_rows_speedup_per_run():
    r = _result()
    rows = table.peer_rows(_trl(), r["ppo_steps"], _ppo_run())
    assert [(p["algo"], p["max_staleness"]) for p in rows] == [("grpo", 0), ("grpo", 1), ("ppo", 0)]
    assert [p["speedup"] for p in rows] == pytest.approx([34 / 20, 34 / 14, 2.0])


def test_render_has_every_section():
    r = _result()
    r["peer"] = table.peer_rows(_trl(), r["ppo_steps"], _ppo_run())
    md = table.render(r)
    assert ("| generation, tokens/s | 314 [300-330, n=3] (generator actor) | 330 [300-347, n=3] (vLLM in-process) | "
            "0.95 [0.91-1.05, n=3] | >= 0.9 |") in md  # tokens/s of the median call, the calls' range, the rounds
    assert "| learning, tokens/s | 300 (learner actor, DeepSpeed) | 300 (plain torch AdamW) | 1.00 | >= 0.85 |" in md
    assert ("| learning, varied lengths (41% padding), tokens/s | 267 [255-280, n=2] (learner actor, padded) | "
            "280 [280-280, n=2] (plain torch, padded) | 0.95 | >= 0.85 |") in md
    assert ("| learning, varied lengths, tokens/s | 400 [400-400, n=2] (learner actor, packed) | 280 [280-280, n=2] "
            "(plain torch, padded) | 1.43 | >= 1.10 |") in md
    assert ("raw vLLM 20.00 s; in the actor, the engine 19.95 s and the call around it (Ray, rollout table, object "
            "store) 0.20 s") in md
    assert "| object_store | 1 | 4 MiB | 136 | 538.0 | 2.000 [1.900-2.250, n=5] | 1.000 | 0.500 | 0.500 | 0.500 | 0.000 | " \
           "0.0500 | 269 | missed |" in md  # 2.0 s against vLLM's 0.5 s reload: more than 0.3 s over
    r["weight_sync"].append({"transport": "broadcast", "tensor_parallel": 2, "skipped": "9 attention heads"})
    assert "| broadcast | 2 | skipped: 9 attention heads |" in table.render(r)
    assert "| 1 | 6.00 | 1.00 | 12.00 | 1.00 | 14.00 | 1.60 | 102 | 70% |" in md
    assert "| GRPO, β = 0 | TRL 0.99 | 34.00 [33.00-35.00, n=2] | 15.00 | 1 | 14.00 | 6.00 | 2.43x | >= 2x |" in md
    assert "| ZeRO-3 | 80 [90-130, n=4] | 0.80 | 13.500000 | 4.00 M of 135.0 M | 538.00 | 5000 |" in md
    assert "| ZeRO-3 + offload | not timed (one step: its memory) | | 13.500000 | 4.00 M" in md
    assert "| LoRA, adapters pushed | the learner above | | 13.500000 | 4.00 M" in md
    assert "| PPO + critic, β = 0.05 | TRL 0.99 | 60.00 | 20.00 | 0 | 30.00 | 7.00 | 2.00x | >= 2x |" in md
    assert "CPU X, 2 cores, 24.0 GiB, no GPU; torch 2.13.0" in md


def test_the_varied_workload_pads_as_chat_replies_would():
    w = workload.WORKLOADS["smollm2"]
    lengths = workload.varied_lengths(w)
    assert len(lengths) == w.samples and lengths == workload.varied_lengths(w)  # seeded
    assert 1 <= min(lengths) and max(lengths) == w.response_len and 10 < sorted(lengths)[w.samples // 2] < 35
    prompts = [[1] * 5, [1] * 9, [1] * 7, [1] * 3, [1] * 4, [1] * 6, [1] * 8, [1] * 2]
    batch = workload.train_batch(dataclasses.replace(w, model="tiny"), prompts, lengths)
    assert batch["loss_mask"].sum(1).tolist() == lengths  # each completion its own length, right-padded


def test_prompts_come_from_the_project(tmp_path):
    rows = workload.prompt_rows(40)
    assert len(rows) == 40 and all(r["prompt"] for r in rows)
    with pytest.raises(ValueError, match="needs 100000 prompts"):
        workload.prompt_rows(100000)


class _Calls:
    """A stand-in raw engine (pure logic: the order of calls), recording into a shared log."""

    def __init__(self, log):
        self.log = log

    def call(self):
        self.log.append("raw")
        return {"seconds": float(len(self.log)), "tokens": 7}


def test_alternate_warms_up_then_takes_turns_raw_actor_actor_raw():
    from rlhf_ray.bench import engines

    log = []
    w = dataclasses.replace(workload.WORKLOADS["tiny"], repeats=3, min_repeats=3)
    raw_out, actor_s, last = engines.alternate(_Calls(log), lambda: log.append("actor") or len(log), w)
    assert log == ["raw", "actor"] + ["raw", "actor", "actor", "raw", "raw", "actor"]  # warm-ups, then ABBA
    assert raw_out["seconds"] == [3.0, 6.0, 7.0] and raw_out["median_s"] == 6.0 and raw_out["tokens"] == 7
    assert len(actor_s) == 3 and last == 8


def test_a_failing_raw_engine_says_why():
    from rlhf_ray.bench import engines

    spec = {"what": "train", "model": "/nonexistent/model", "dtype": "float32", "lr": 1e-5, "grad_clip": 1.0,
            "micro_batch": 1, "batch": {}}
    raw_engine = engines.RawEngine(spec, threads=1)
    try:
        with pytest.raises(RuntimeError, match=r"raw train failed \(exit 1\):(.|\n)*nonexistent/model"):
            raw_engine.call()
    finally:
        raw_engine.close()


def test_a_record_written_mid_bench_renders_what_is_done_and_names_the_rest():
    r = {**_result(), "sections": list(table.SECTIONS), "done": ["engines", "sync"]}
    md = table.render(r)
    assert "| generation, tokens/s |" in md and "| object_store | 1 | 4 MiB |" in md
    assert "| max_staleness |" not in md  # ppo_steps holds a first run, but the section is not done
    assert "Not measured yet: memory, steps, peer (the bench was still running" in md
    r["generation"].pop("ratio")  # a section cut off mid-way: its parts stay in bench.json, out of the tables
    md = table.render({**r, "done": []})
    assert "| generation, tokens/s |" not in md and "Not measured yet: engines, sync, memory, steps, peer" in md


def test_progress_lines_give_the_time_and_what_is_left_of_the_section():
    from rlhf_ray.bench.progress import Progress

    now, lines = [100.0], []
    p = Progress(clock=lambda: now[0], out=lines.append)
    now[0] = 130.0
    p.section("learner memory settings")
    now[0] = 190.0
    p.part("default: 300 tokens/s", 1, 4)
    now[0] = 754.0
    p.part("ZeRO-3 + offload: 40 tokens/s", 4, 4)
    assert lines == ["[ 0:30] learner memory settings",
                     "[ 1:30] default: 300 tokens/s (1/4, section 1:00; about 3:00 left in this section)",
                     "[10:54] ZeRO-3 + offload: 40 tokens/s (4/4, section 10:24)"]


def test_only_takes_known_section_names():
    import argparse

    from rlhf_ray.cli import _sections

    assert _sections("sync, memory") == ["sync", "memory"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown section.s. learning; choose from engines, sync, "
                                                         "memory, steps, peer"):
        _sections("sync,learning")


def test_memory_rows_count_response_tokens():
    import torch

    from rlhf_ray.bench import memory

    batch = {"loss_mask": torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])}  # 5 response tokens of 8
    r = memory._rate(batch, [2.0, 1.0, 0.5])
    assert r["tokens_per_s"] == 5.0 and r["tokens_per_s_spread"] == {"median": 5.0, "min": 2.5, "max": 10.0, "n": 3}
    assert memory._rate(batch, []) == {"tokens_per_s": None, "tokens_per_s_spread": None}  # untimed
