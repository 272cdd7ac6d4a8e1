"""`rlhf-ray`: the command line.

  rlhf-ray validate CONFIG [key=value ...]             print the resolved config, or every error (exit 1)
  rlhf-ray run CONFIG [key=value ...] [--run-dir D] [--address A] [--force]   run the config's stages in order
                                                       (sft, label, rm, dpo, ppo), skipping finished ones
  rlhf-ray sample CONFIG [key=value ...] [--run-dir D]  sample responses to the config's prompts with vLLM
  rlhf-ray submit CONFIG [key=value ...] --address http://127.0.0.1:8265 [--follow]   the run as a Ray Job
  rlhf-ray status|logs|stop JOB_ID [--address ...]     follow a submitted job (`logs --follow` streams)
                                                       (plain http to another host needs --insecure-http)
  rlhf-ray scale RUN_DIR|JOB_ID ROLE=N ... [--address ...]   a running PPO run's generator / scorer count
  rlhf-ray report RUN_DIR                              redraw RUN_DIR/plots/*.png from metrics.jsonl
  rlhf-ray bench [--model tiny|smollm2] [--out DIR]    rlhf-ray beside raw vLLM, plain torch and TRL
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from rlhf_ray.config import Config, ConfigError, dump_yaml, load_config, to_dict
from rlhf_ray.errors import UserError, user_error
from rlhf_ray.runtime.lock import RunLock
from rlhf_ray.runtime.run_dir import RunDir
from rlhf_ray.runtime.stopping import LearnerLost, NonFiniteLoss, Stopped


def _load(args) -> Config:
    return load_config(args.config, args.overrides)


def cmd_validate(args) -> int:
    """The config, and the inputs `run` checks before Ray (datasets, functions, models; nothing built)."""
    from rlhf_ray.stages import inputs

    cfg = _load(args)
    inputs.before_ray(cfg, args.config)
    print(dump_yaml(cfg), end="")
    return 0


def run_dir_path(cfg: Config, run_dir: str | None) -> Path:
    return Path(run_dir or Path("runs") / cfg.name).expanduser()


def cmd_run(args) -> int:
    """Run the config's stages in order on the cluster at --address / RAY_ADDRESS, else an embedded local one.

    Stages already finished in the run directory are skipped (their outputs reused) unless --force."""
    from rlhf_ray.stages import inputs

    cfg = _load(args)
    address = _cluster_address(args, cfg)  # parsed and checked first: a refused one leaves nothing run or written
    if address is None:
        from cluster.local import ray_temp_dir

        ray_temp_dir()  # the embedded cluster's: RLHF_RAY_TMP checked (or a private one made) as early
    inputs.before_ray(cfg, args.config)  # datasets and their first rows, functions, models (as validate, submit)
    # Taken before anything in the run directory is written or deleted (--force, stage resets), released however
    # the run ends; a held one is refused naming its holder (RunDirBusy).
    with RunLock(run_dir_path(cfg, args.run_dir), f"rlhf-ray run {args.config}") as lock:
        run_dir = RunDir(lock.run_dir, cfg)
        run_dir.check_metrics()  # a corrupt metrics.jsonl is refused before Ray starts
        return _run(cfg, args, address, run_dir)


def _cluster_address(args, cfg: Config) -> str | None:
    """The cluster `run` joins, rebuilt from its parsed parts (None: an embedded one): --address, else
    cluster.address, else RAY_ADDRESS, which Ray itself reads for an unset or `auto` address. One that would carry
    the cluster token across a network in clear text is refused unless --insecure-http (cluster/address.py)."""
    from cluster.address import for_ray

    given, where = (args.address, "--address") if args.address else (cfg.cluster.address, "cluster.address")
    if given in (None, "auto") and os.environ.get("RAY_ADDRESS"):
        given, where = os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    return for_ray(given, where, args.insecure_http) if given else None


def _run(cfg: Config, args, address: str | None, run_dir: RunDir) -> int:
    from rlhf_ray.runtime.monitor import Monitor
    from rlhf_ray.stages import pipeline

    run_dir.monitor = Monitor(cfg, run_dir.path)

    def connect() -> None:
        from cluster.local import describe_cluster, init_ray
        from rlhf_ray.stages import push

        store = None if address else push.store_mb(cfg)  # sized (or refused) before Ray starts
        init_ray(address, num_cpus=None, object_store_mb=store or 512,
                 metrics_export_port=cfg.cluster.metrics_export_port, insecure_http=args.insecure_http)
        if address:
            push.check_store(cfg)
        print(describe_cluster(), flush=True)

    try:
        results = pipeline.run(cfg, run_dir, force=args.force, connect=connect)
    finally:
        run_dir.monitor.close()
    lines = [f"  {line}" for r in results for line in r.summary.splitlines()]
    text = f"summary ({run_dir.path}):\n" + "\n".join(lines) + "\n"
    (run_dir.path / "summary.txt").write_text(text)
    print("\n" + text, end="", flush=True)
    return 0


def cmd_sample(args) -> int:
    """Sample `rollout.n_samples` responses per prompt from the policy; write rollouts/sample.parquet."""
    cfg = _load(args)
    if cfg.data.prompts.path is None:
        raise ConfigError([f"{args.config}: data.prompts.path: `sample` needs a prompts dataset"])
    with RunLock(run_dir_path(cfg, args.run_dir), f"rlhf-ray sample {args.config}") as lock:
        return _sample(cfg, args, lock.run_dir)


def _sample(cfg: Config, args, run_path: Path) -> int:
    import pyarrow.parquet as pq

    from rlhf_ray import data, models, rollout
    from rlhf_ray.engines import vllm_engine

    ds = cfg.data.prompts
    rows, report = data.load_rows(ds.path, "prompts", ds.split, cfg.data.skip_malformed, args.num_prompts or ds.max_rows,
                                  ds.columns or None, ds.subset)
    policy = models.resolve_model(cfg.model.policy)
    tok = models.load_tokenizer(cfg.model.tokenizer or policy, cfg.model.trust_remote_code)
    limits = data.Limits(cfg.data.max_prompt_len, cfg.data.max_response_len, cfg.data.truncation)
    kept = data.encode_kept(tok, rows, "prompts", limits, report, cfg.data.apply_chat_template)
    rows, ids = [r for r, _ in kept], [i for _, i in kept]  # rows over the limits dropped (truncation: drop)
    print(report)
    out = RunDir(run_path, cfg).path

    llm = vllm_engine.build_llm(policy, cfg.model.dtype, cfg.rollout.kv_cache_mb, cfg.seed, cfg.model.max_seq_len,
                                engine=to_dict(cfg.rollout.engine), trust_remote_code=cfg.model.trust_remote_code)
    sampling = vllm_engine.Sampling(max_tokens=cfg.data.max_response_len, temperature=cfg.rollout.temperature,
                                    top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k or 0, n=cfg.rollout.n_samples,
                                    seed=cfg.seed)
    t0 = time.perf_counter()
    columns = [rollout.encode_columns(r["prompt"], r["columns"]) for r in rows]
    samples = vllm_engine.generate(llm, ids, sampling, prompts=[data.prompt_text(r["prompt"]) for r in rows],
                                   columns=columns)
    seconds = time.perf_counter() - t0
    table = rollout.to_table(samples, list(columns[0]))
    (out / "rollouts").mkdir(exist_ok=True)
    pq.write_table(table, out / "rollouts" / "sample.parquet")

    n_tokens = sum(len(s["response_ids"]) for s in samples)
    for s in samples[: args.show]:
        print(f"\n> {s['prompt']}\n{s['response'].strip()}")
    print(f"\n{len(samples)} responses, {n_tokens} tokens in {seconds:.1f} s ({n_tokens / seconds:.0f} tokens/s), "
          f"{sum(s['finish_reason'] == 'stop' for s in samples)} ended with EOS; "
          f"written to {out / 'rollouts' / 'sample.parquet'}")
    return 0


def cmd_submit(args) -> int:
    from rlhf_ray.runtime import jobs

    from rlhf_ray.stages import inputs

    cfg = _load(args)
    inputs.before_ray(cfg, args.config)  # as run and validate: before anything is uploaded or connects
    job_id = jobs.submit(cfg, args.config, args.overrides, args.address, args.run_dir, args.env, args.job_id,
                         args.insecure_http)
    where = args.address or os.environ.get("RAY_ADDRESS") or "the local dashboard"
    print(f"submitted {job_id} to {where}\n  rlhf-ray status {job_id}\n  rlhf-ray logs {job_id} --follow\n"
          f"  rlhf-ray stop {job_id}", flush=True)
    if not args.follow:
        return 0
    return 0 if jobs.logs(job_id, args.address, True, args.insecure_http) == "SUCCEEDED" else 1


def cmd_status(args) -> int:
    from rlhf_ray.runtime import jobs

    status, text = jobs.describe(args.job_id, args.address, args.insecure_http)
    print(text)
    return 0 if status in ("SUCCEEDED", "RUNNING", "PENDING") else 1


def cmd_logs(args) -> int:
    from rlhf_ray.runtime import jobs

    out = jobs.logs(args.job_id, args.address, args.follow, args.insecure_http)
    if not args.follow:
        print(out, end="")
        return 0
    return 0 if out == "SUCCEEDED" else 1


def cmd_stop(args) -> int:
    from rlhf_ray.runtime import jobs

    stopping = jobs.stop(args.job_id, args.address, args.insecure_http)
    print(f"{args.job_id}: " + ("stopping" if stopping else "already ended"))
    return 0


def cmd_scale(args) -> int:
    """The generator or scorer count a running PPO run should have, from its next step boundary on."""
    from rlhf_ray.runtime import control, jobs

    counts = control.parse(args.counts)  # refused before anything is written or submitted
    if args.address or not Path(args.target).is_dir():
        job, run_dir = jobs.scale(args.target, args.counts, args.address, args.insecure_http)
        print(f"{args.target}: asked {' '.join(args.counts)} through job {job} (it writes {run_dir}/{control.FILE} on "
              f"the driver's node); the run applies it at its next step boundary: `rlhf-ray logs {args.target}`")
        return 0
    run_dir = Path(args.target)
    if not (run_dir / "config.yaml").exists():
        raise control.ControlError(f"{run_dir}: not a run directory (no config.yaml)")
    wanted = control.ask(run_dir, counts)
    print(f"{run_dir}: asks {' '.join(f'{r}={n}' for r, n in wanted.items())}; the run applies it at its next step "
          f"boundary (its log says `scale: ...`, placement.jsonl where each new actor went)")
    return 0


def cmd_report(args) -> int:
    from rlhf_ray.runtime import report

    return report.main([args.run_dir])


def _sections(text: str) -> list[str]:
    """`bench --only`: known section names, comma-separated."""
    from rlhf_ray.bench.table import SECTIONS

    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown section(s) {', '.join(unknown) or '(none)'}; choose from "
                                         f"{', '.join(SECTIONS)}")
    return names


def cmd_bench(args) -> int:
    from rlhf_ray.bench import cli as bench

    bench.run(args.model, args.out, fast=args.quick, with_peer=not args.no_peer, dtype=args.dtype, only=args.only)
    return 0


def cmd_doctor(args) -> int:
    from rlhf_ray import doctor

    return doctor.main()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlhf-ray", description="Distributed RLHF on Ray.")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(name: str, help: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help)
        s.add_argument("config", help="YAML config (overrides of the defaults in rlhf_ray/config.py)")
        s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. ppo.kl_coef=0.05")
        return s

    insecure = ("allow the cluster token to cross a network in clear text: plain http:// (submit, status, logs, stop) "
                "or Ray's protocol without TLS (run) to a host that is not this machine's (also "
                "RLHF_RAY_INSECURE_HTTP=1); https://, Ray's TLS or a tunnel to 127.0.0.1 need no flag")
    with_config("validate", "print the resolved config, or every error with its key and file").set_defaults(
        fn=cmd_validate)
    s = with_config("run", "run the config's stages in order, skipping stages already finished in the run dir")
    s.add_argument("--run-dir", help="output folder (default runs/<name>/)")
    s.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else an embedded local cluster)")
    s.add_argument("--force", action="store_true", help="rerun stages even when final/<stage>/ marks them finished")
    s.add_argument("--insecure-http", action="store_true", help=insecure)
    s.set_defaults(fn=cmd_run)
    s = with_config("sample", "sample responses to the config's prompts from the policy with vLLM")
    s.add_argument("--run-dir", help="output folder (default runs/<name>/)")
    s.add_argument("--num-prompts", type=int, help="use only the first N prompts")
    s.add_argument("--show", type=int, default=4, help="print this many samples")
    s.set_defaults(fn=cmd_sample)

    s = with_config("submit", "run the config as a Ray Job on the cluster at --address (the dashboard, :8265)")
    s.add_argument("--address", help="dashboard address, http://HOST:8265 (default: RAY_ADDRESS, else local)")
    s.add_argument("--insecure-http", action="store_true", help=insecure)
    s.add_argument("--run-dir", help="output folder on the driver's node (default ~/rlhf-ray-runs/<name>)")
    s.add_argument("--env", action="append", metavar="KEY=VALUE", help="environment variable for the job")
    s.add_argument("--job-id", help="submission id (default: Ray picks one)")
    s.add_argument("--follow", action="store_true", help="stream the logs until the job ends; exit 1 unless it succeeded")
    s.set_defaults(fn=cmd_submit)
    for name, fn, help in [("status", cmd_status, "a submitted job's state and run directory"),
                           ("logs", cmd_logs, "a submitted job's driver log"),
                           ("stop", cmd_stop, "stop a submitted job")]:
        s = sub.add_parser(name, help=help)
        s.add_argument("job_id")
        s.add_argument("--address", help="dashboard address, http://HOST:8265 (default: RAY_ADDRESS, else local)")
        s.add_argument("--insecure-http", action="store_true", help=insecure)
        if name == "logs":
            s.add_argument("--follow", action="store_true", help="stream until the job ends")
        s.set_defaults(fn=fn)
    s = sub.add_parser("scale", help="change a running PPO run's generator or scorer count at its next step")
    s.add_argument("target", help="the run directory, or a submitted job's id (with --address)")
    s.add_argument("counts", nargs="+", metavar="ROLE=N", help="generator, reference, reward or reward_fn")
    s.add_argument("--address", help="dashboard address of a submitted job, http://HOST:8265")
    s.add_argument("--insecure-http", action="store_true", help=insecure)
    s.set_defaults(fn=cmd_scale)
    sub.add_parser("doctor", help="versions of torch, vLLM, Ray, DeepSpeed and transformers, the devices, and "
                   "whether this is the tested set").set_defaults(fn=cmd_doctor)
    s = sub.add_parser("report", help="redraw the plots of a run directory from its metrics.jsonl")
    s.add_argument("run_dir")
    s.set_defaults(fn=cmd_report)
    s = sub.add_parser("bench", help="measure rlhf-ray beside raw vLLM, plain torch and TRL on the embedded cluster")
    s.add_argument("--model", choices=["tiny", "smollm2", "random-0.5b"], default="tiny",
                   help="the workload (default tiny; random-0.5b: Qwen2.5-0.5B's shape with random weights, for "
                        "--only sync)")
    s.add_argument("--only", type=_sections, help="comma-separated sections to measure (default all): "
                   "engines, sync, memory, steps, peer (peer runs steps too: its rows compare with them)")
    s.add_argument("--out", help="folder for bench.json and bench.md (default runs/bench-<model>)")
    s.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: proves it runs (CI)")
    s.add_argument("--no-peer", action="store_true", help="skip TRL (its venv needs the package index once)")
    s.add_argument("--dtype", choices=["float32", "bfloat16"], help="engine, learner and peer dtype (default float32)")
    s.set_defaults(fn=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.fn(args)
    except (UserError, ConnectionError, NonFiniteLoss, LearnerLost) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Stopped as e:
        print(str(e), file=sys.stderr)
        return 130
    except RuntimeError as e:  # an actor's call failed: one line when the user's input caused it (errors.py)
        if user_error(e) is None:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
