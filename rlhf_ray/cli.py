"""`rlhf-ray`: the command line.

  rlhf-ray validate CONFIG [key=value ...]             print the resolved config, or every error (exit 1)
  rlhf-ray run CONFIG [key=value ...] [--run-dir D] [--address A] [--force]   run the config's stages in order
                                                       (sft, label, rm, dpo, ppo), skipping finished ones
  rlhf-ray sample CONFIG [key=value ...] [--run-dir D]  sample responses to the config's prompts with vLLM
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rlhf_ray.config import Config, ConfigError, dump_yaml, load_config
from rlhf_ray.data import DataError
from rlhf_ray.run_dir import RunDir


def _load(args) -> Config:
    return load_config(args.config, args.overrides)


def cmd_validate(args) -> int:
    print(dump_yaml(_load(args)), end="")
    return 0


def run_dir_for(cfg: Config, run_dir: str | None) -> Path:
    return RunDir(run_dir or Path("runs") / cfg.name, cfg).path


def cmd_run(args) -> int:
    """Run the config's stages in order on the cluster at --address / RAY_ADDRESS, else an embedded local one.

    Stages already finished in the run directory are skipped (their outputs reused) unless --force."""
    from rlhf_ray import pipeline

    cfg = _load(args)
    pipeline.check_inputs(cfg, args.config)  # before any actor: missing datasets, stages not built yet
    run_dir = RunDir(args.run_dir or Path("runs") / cfg.name, cfg)

    def connect() -> None:
        from cluster.local import init_ray

        ctx = init_ray(args.address or cfg.cluster.address, num_cpus=None,
                       object_store_mb=cfg.cluster.object_store_mb)
        if getattr(ctx, "dashboard_url", None):
            print(f"Ray dashboard: http://{ctx.dashboard_url} (token in ~/.ray/auth_token)", flush=True)

    results = pipeline.run(cfg, run_dir, force=args.force, connect=connect)
    print(f"\nsummary ({run_dir.path}):\n" + "\n".join(f"  {r.summary}" for r in results), flush=True)
    return 0


def cmd_sample(args) -> int:
    """Sample `rollout.n_samples` responses per prompt from the policy; write rollouts/sample.parquet."""
    import pyarrow.parquet as pq

    from rlhf_ray import data, models, rollout, vllm_engine

    cfg = _load(args)
    ds = cfg.data.prompts
    if ds.path is None:
        raise ConfigError([f"{args.config}: data.prompts.path: `sample` needs a prompts dataset"])
    rows, report = data.load_rows(ds.path, "prompts", ds.split, cfg.data.skip_malformed, args.num_prompts or ds.max_rows)
    policy = models.resolve_model(cfg.model.policy)
    tok = models.load_tokenizer(cfg.model.tokenizer or policy)
    limits = data.Limits(cfg.data.max_prompt_len, cfg.data.max_response_len, cfg.data.truncation)
    ids = data.encode_rows(tok, rows, "prompts", limits, report, cfg.data.apply_chat_template)
    print(report)
    out = run_dir_for(cfg, args.run_dir)

    llm = vllm_engine.build_llm(policy, cfg.model.dtype, cfg.rollout.kv_cache_mb, cfg.seed, cfg.model.max_seq_len)
    sampling = vllm_engine.Sampling(max_tokens=cfg.data.max_response_len, temperature=cfg.rollout.temperature,
                                    top_p=cfg.rollout.top_p, n=cfg.rollout.n_samples, seed=cfg.seed)
    t0 = time.perf_counter()
    samples = vllm_engine.generate(llm, ids, sampling, prompts=[r["prompt"] for r in rows])
    seconds = time.perf_counter() - t0
    table = rollout.to_table(samples)
    (out / "rollouts").mkdir(exist_ok=True)
    pq.write_table(table, out / "rollouts" / "sample.parquet")

    n_tokens = sum(len(s["response_ids"]) for s in samples)
    for s in samples[: args.show]:
        print(f"\n> {s['prompt']}\n{s['response'].strip()}")
    print(f"\n{len(samples)} responses, {n_tokens} tokens in {seconds:.1f} s ({n_tokens / seconds:.0f} tokens/s), "
          f"{sum(s['finish_reason'] == 'stop' for s in samples)} ended with EOS; "
          f"written to {out / 'rollouts' / 'sample.parquet'}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlhf-ray", description="Distributed RLHF on Ray.")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(name: str, help: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help)
        s.add_argument("config", help="YAML config (overrides of the defaults in rlhf_ray/config.py)")
        s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. ppo.kl_coef=0.05")
        return s

    with_config("validate", "print the resolved config, or every error with its key and file").set_defaults(
        fn=cmd_validate)
    s = with_config("run", "run the config's stages in order, skipping stages already finished in the run dir")
    s.add_argument("--run-dir", help="output folder (default runs/<name>/)")
    s.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else an embedded local cluster)")
    s.add_argument("--force", action="store_true", help="rerun stages even when final/<stage>/ marks them finished")
    s.set_defaults(fn=cmd_run)
    s = with_config("sample", "sample responses to the config's prompts from the policy with vLLM")
    s.add_argument("--run-dir", help="output folder (default runs/<name>/)")
    s.add_argument("--num-prompts", type=int, help="use only the first N prompts")
    s.add_argument("--show", type=int, default=4, help="print this many samples")
    s.set_defaults(fn=cmd_sample)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
