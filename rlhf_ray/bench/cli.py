"""`rlhf-ray bench`: rlhf-ray measured beside the limits it wraps and beside a peer, each pair in the same run on
the same machine and the same work (absolute times on shared machines are noisy; the ratios are what count).

  1. generation   a generator actor vs vLLM called directly: generated tokens/s
  2. learning     a learner actor's train_step (DeepSpeed) vs a plain torch forward/backward/AdamW loop: tokens/s,
                  on completions of response_len tokens, and on completions of varied lengths, padded and packed
  3. weight sync  learner -> generator, per transport and bucket size, beside vLLM's own reload and a memcpy
  4. memory       the learner with gradient checkpointing, token-budget micro-batches, ZeRO-3 and offload:
                  tokens/s, the loss beside the default learner's, peak memory
  5. PPO steps    seconds per phase, samples/s, tokens/s, generator idle, at max_staleness 0 and 1 (GRPO)
  6. peer         TRL's GRPOTrainer vs rlhf-ray's GRPO, and TRL's experimental PPOTrainer vs rlhf-ray's PPO with a
                  critic: seconds per step, same model, prompts, group, batch, response length, dtype and β

The peer runs first, without Ray, so nothing else competes for the cores; then the embedded Ray cluster starts for
rlhf-ray's own sections. The raw engines run beside the actors in plain processes of their own, each raw call
alternating with the actor's (engines.alternate). Writes bench.json and bench.md to --out after every section.

--quick (CI: proves every section runs; its timings prove nothing) starts at once what the full run starts one after
the other, since process starts are most of its wall time: the TP 2 generator beside the other actors, the memory
section's learners together.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Callable, Optional

from rlhf_ray.bench import table
from rlhf_ray.bench.progress import Progress
from rlhf_ray.bench.workload import WORKLOADS, Workload, quick


def run(model: str = "tiny", out: Optional[str] = None, fast: bool = False, with_peer: bool = True,
        dtype: Optional[str] = None, only: Optional[list[str]] = None) -> dict:
    import ray

    from cluster import quiet
    from cluster.local import init_ray
    from rlhf_ray.bench import engines, memory, steps
    from rlhf_ray.bench import workload as wl

    quiet.actor_start()  # this process loads models too (the PPO comparison's reward model), as an actor does
    w = WORKLOADS[model]
    w = dataclasses.replace(quick(w) if fast else w, **({"dtype": dtype} if dtype else {}))
    out_dir = Path(out or Path("runs") / f"bench-{model}").expanduser().resolve()  # the peer runs elsewhere
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = wl.prompt_rows(w.prompts * (w.steps + 2))
    prompts_file = out_dir / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompt_ids = wl.encode_prompts(w, rows[: w.prompts])
    batch = wl.train_batch(w, prompt_ids)
    varied = wl.train_batch(w, prompt_ids, wl.varied_lengths(w))
    wanted = set(table.SECTIONS if only is None else only) - (set() if with_peer else {"peer"})
    wanted |= {"steps"} if "peer" in wanted else set()  # the peer's rows set TRL beside these GRPO steps
    sections = [s for s in table.SECTIONS if s in wanted]
    result: dict = {"machine": table.machine(), "workload": dataclasses.asdict(w), "fast": fast,
                    "started": time.strftime("%Y-%m-%d %H:%M:%S"), "sections": sections, "done": []}
    progress = Progress()
    progress.say(f"bench of {model}{' (quick)' if fast else ''}: {', '.join(sections)}; bench.json and bench.md "
                 f"in {out_dir} after each section")

    def keep(section: Optional[str] = None, **values) -> None:
        """Results into the record, written now: a bench stopped later keeps them."""
        result.update(values)
        result["done"] += [section] if section else []
        (out_dir / "bench.json").write_text(json.dumps(result, indent=1) + "\n")
        (out_dir / "bench.md").write_text(table.render(result))

    keep()
    rm = steps.reward_model(w, out_dir) if "peer" in sections else None
    if "peer" in sections:
        from rlhf_ray.bench import peer

        progress.section("peer: TRL (its own venv)")
        texts = wl.prompt_texts(w, wl.encode_prompts(w, rows))
        for i, algo in enumerate(("grpo", "ppo")):
            keep(trl={**result.get("trl", {}), algo: peer.run_trl(peer_spec(w, algo, texts, rm), engines.TIMEOUT_S)})
            progress.part(f"TRL {algo}: {result['trl'][algo]['mean_s']:.1f} s per step", i + 1, 2)

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # the actors inherit it: no engine banners per run
    from rlhf_ray import models

    # Room for two versions of the policy (a sync never spills) and the rollouts, as `rlhf-ray run` sizes it.
    # No dashboard: nothing here reads it, and its processes would take CPU from what is measured.
    init_ray(None, num_cpus=None, dashboard=False,
             object_store_mb=max(512, 2 * models.weight_bytes(w.model, w.dtype) // 2**20 + 128))
    try:
        if {"engines", "sync"} & set(sections):
            actor_sections(w, sections, prompt_ids, {"fixed": batch, "varied": varied}, fast, progress, keep)
        if "memory" in sections:
            progress.section("learner memory settings")
            keep("memory", learner_memory=memory.learner_memory(w, batch, at_once=fast, part=progress.part,
                                                                default=result.get("memory_default")))
        if "steps" in sections:
            progress.section("GRPO steps")
            for k in (0, 1):
                keep(ppo_steps=result.get("ppo_steps", []) + [steps.run(w, prompts_file, out_dir, "grpo", k)])
                progress.part(f"GRPO, max_staleness {k}: {result['ppo_steps'][-1]['step_s']:.1f} s per step", k + 1,
                              2)
            keep("steps")
        if "peer" in sections:  # its GRPO rows are in: peer implies steps
            progress.section("PPO with a critic, max_staleness 0 (beside TRL's PPO)")
            ours_ppo = steps.run(w, prompts_file, out_dir, "gae", 0, rm)
            progress.say(f"PPO with a critic: {ours_ppo['step_s']:.1f} s per step")
            keep("peer", peer=table.peer_rows(result["trl"], result["ppo_steps"], ours_ppo))
    finally:
        ray.shutdown()
    progress.say(f"wrote {out_dir / 'bench.json'} and {out_dir / 'bench.md'}")
    return result


def actor_sections(w: Workload, sections: list[str], prompt_ids: list[list[int]], batches: dict, fast: bool,
                   progress: Progress, keep: Callable[..., None]) -> None:
    """Sections 1-3 on one generator and one learner actor (and, for the varied-length batch, a packed learner).
    The raw engines build in processes of their own while the actors start (each one's first, untimed call waits
    for it); --quick also starts the TP 2 generator of the sync beside them, where the full run starts it after
    the others are gone."""
    from rlhf_ray.bench import engines, memory

    engine = "engines" in sections
    raws = ([engines.raw_generator(w, prompt_ids), engines.raw_trainer(w, batches["fixed"]),
             engines.raw_trainer(w, batches["varied"])] if engine else [])
    try:
        tp2 = engines.start_tp2(w) if fast and "sync" in sections else None
        gen, learner = engines.start_actors(w, w.samples)
        packed = engines.start_learner(w, w.samples, packing=True) if engine else None
        if engine:
            progress.section("generator and learner actors, beside raw vLLM and plain torch (no Ray)")
            g = engines.generation(w, gen, prompt_ids, raws[0])
            keep(generation=g)
            progress.part(f"generation: {g['ratio']:.2f} of raw vLLM's tokens/s", 1, 3)
            t = engines.learning(w, learner, batches["fixed"], raws[1])
            keep(learning=t)
            if "memory" in sections:  # the default learner on the same batch: the memory section's default row
                keep(memory_default=memory.default_row(t, learner, batches["fixed"]))
            progress.part(f"learning: {t['ratio']:.2f} of plain torch's tokens/s", 2, 3)
            v = engines.learning_varied(w, learner, packed, batches["varied"], raws[2])
            keep("engines", learning_varied=v)
            packed.kill()
            progress.part(f"learning, varied lengths ({v['padding']:.0%} padding): padded {v['ratio']:.2f} of plain "
                          f"torch, packed {v['packed']['ratio']:.2f}", 3, 3)
        if "sync" in sections:
            progress.section("weight sync")
            keep("sync", weight_sync=engines.weight_sync(w, gen, learner, tp2))
            progress.say("weight sync measured")
        gen.kill()
        learner.kill()
    finally:
        for r in raws:  # closed already unless a section failed
            r.close()


def peer_spec(w: Workload, algo: str, prompts: list[str], rm: Optional[str] = None) -> dict:
    """The peer's run, on rlhf-ray's terms: see rlhf_ray/bench/trl_peer.py for the keys."""
    from rlhf_ray import models
    from rlhf_ray.bench.workload import REWARD_FN

    spec = {"algo": algo, "model": models.resolve_model(w.model), "prompts": prompts, "group": w.group,
            "batch_prompts": w.prompts, "response_len": w.response_len, "dtype": w.dtype, "lr": w.lr,
            "micro_batch": w.micro_batch, "steps": w.steps, "warmup_steps": 1, "threads": w.threads,
            "seed": w.seed, "temperature": 1.0}
    if algo == "grpo":
        return {**spec, "beta": w.beta, "reward_fn": REWARD_FN}
    return {**spec, "beta": w.ppo_beta, "reward_model": rm}
