"""`rlhf-ray submit / status / logs / stop`: a run as a Ray Job, through Ray's job API (the dashboard port, 8265).

`submit` packages the current directory as the job's working_dir, so the code and configs you have are what runs
(.venv, runs/ and .git stay behind), and the job's entrypoint is `python -m rlhf_ray.cli run CONFIG ...` on the
head node, with the cluster's Python: the cluster needs rlhf-ray's dependencies (deploy/Dockerfile.*). The run
directory lives on the node that runs the driver (default ~/rlhf-ray-runs/<name>; give shared storage for more).
Ray's token authentication is handled by Ray's client: it reads RAY_AUTH_TOKEN or ~/.ray/auth_token.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Optional

from rlhf_ray.config import ConfigError, load_config

EXCLUDES = [".venv", "venv", "runs", ".git", "**/__pycache__", "*.egg-info", ".pytest_cache"]


def client(address: Optional[str]):
    """A job client for `address` (http://HOST:8265), else RAY_ADDRESS, else the local dashboard."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address or os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265")


def entrypoint(config: str, overrides: list[str], run_dir: str) -> str:
    return shlex.join(["python", "-m", "rlhf_ray.cli", "run", config, *overrides, "--run-dir", run_dir])


def submit(config: str, overrides: list[str], address: Optional[str], run_dir: Optional[str] = None,
           env: Optional[list[str]] = None, job_id: Optional[str] = None) -> str:
    """Validate the config here (before anything is uploaded), then submit; returns the job id."""
    cfg = load_config(config, overrides)
    rel = Path(config).resolve()
    if not rel.is_relative_to(Path.cwd()):
        raise ConfigError([f"{config}: the config must lie under the current directory ({Path.cwd()}), which is "
                           "what the job carries to the cluster"])
    env_vars = {}
    for item in env or []:
        key, sep, value = item.partition("=")
        if not (sep and key):
            raise ConfigError([f"--env {item!r}: expected KEY=VALUE"])
        env_vars[key] = value
    # `stop` sends SIGTERM, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S (Ray's default: 3 s). The run needs the
    # step in progress plus a checkpoint write to stop cleanly (stopping.py), so give it what a call may take.
    env_vars.setdefault("RAY_JOB_STOP_WAIT_TIME_S", str(int(cfg.cluster.call_timeout_s)))
    run_dir = run_dir or f"~/rlhf-ray-runs/{cfg.name}"
    return client(address).submit_job(
        entrypoint=entrypoint(str(rel.relative_to(Path.cwd())), overrides, run_dir),
        submission_id=job_id,
        runtime_env={"working_dir": ".", "excludes": EXCLUDES, "env_vars": env_vars},
        metadata={"rlhf_ray_config": config, "run_dir": run_dir, "name": cfg.name},
    )


def describe(job_id: str, address: Optional[str]) -> tuple[str, str]:
    """(status, a few lines about the job) for `rlhf-ray status`."""
    info = client(address).get_job_info(job_id)
    meta = info.metadata or {}

    def when(ms: Optional[int]) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"

    lines = [f"job {job_id}: {info.status.value}" + (f" ({info.message})" if info.message else ""),
             f"  entrypoint: {info.entrypoint}",
             f"  run directory (on the driver's node): {meta.get('run_dir', '?')}",
             f"  started {when(info.start_time)}, ended {when(info.end_time)}"]
    return info.status.value, "\n".join(lines)


def logs(job_id: str, address: Optional[str], follow: bool = False) -> str:
    """The job's driver log so far; with `follow`, stream it to stdout until the job ends and return its status."""
    c = client(address)
    if not follow:
        return c.get_job_logs(job_id)

    async def tail() -> None:
        async for chunk in c.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    asyncio.run(tail())
    return c.get_job_status(job_id).value


def stop(job_id: str, address: Optional[str]) -> bool:
    """Ask Ray to stop the job (SIGTERM to its driver, then SIGKILL); False if it had already ended."""
    return client(address).stop_job(job_id)
