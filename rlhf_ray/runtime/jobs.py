"""`rlhf-ray submit / status / logs / stop`: a run as a Ray Job, through Ray's job API (the dashboard port, 8265).

`submit` packages the current directory as the job's working_dir, so the code and configs you have are what runs
(.venv, runs/ and .git stay behind), and the job's entrypoint is `python -m rlhf_ray.cli run CONFIG ...` on the
head node, with the cluster's Python: the cluster needs rlhf-ray's dependencies (deploy/Dockerfile.*). The run
directory lives on the node that runs the driver (default ~/rlhf-ray-runs/<name>; give shared storage for more).
Ray's token authentication is handled by Ray's client: with RAY_AUTH_MODE=token it sends the token from
RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token in every request's header.

The address is parsed once (cluster/address.py: only forms every HTTP parser reads alike) and Ray's client is given
the URL rebuilt from its parts. Plain http leaves this machine only when asked: http:// to a host that is not
this machine's would carry that token, the packaged code and the logs in clear text, so it is refused (before any
connection) unless --insecure-http or RLHF_RAY_INSECURE_HTTP=1 says the network is trusted; https://, or a tunnel
to http://127.0.0.1:8265, needs neither. Whatever the job API answers (401, 403, 404, no answer) becomes one
JobAPIError line, not a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

from cluster.address import INSECURE_ENV, Address, insecure_allowed, parse
from rlhf_ray.config import Config, ConfigError
from rlhf_ray.runtime import lock

EXCLUDES = [".venv", "venv", "runs", ".git", "**/__pycache__", "*.egg-info", ".pytest_cache"]
API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"


class JobAPIError(ConnectionError):
    """The job API refused a request, could not be reached, or was not tried (plain http off this machine)."""


API_FORM = ("the job API is the dashboard's address, http(s)://HOST:8265 (`run` is the command that joins a cluster "
            "at HOST:6379 or ray://HOST:10001)")


def resolve_address(address: Optional[str]) -> tuple[Address, str]:
    """(the dashboard's address, parsed, and where it came from): `address`, else RAY_API_SERVER_ADDRESS, else
    RAY_ADDRESS (the two Ray's client reads, in its order), else the local dashboard. Without a scheme, http, as
    Ray's client reads it."""
    given, where = next((g, w) for g, w in [(address, "--address"),
                                            (os.environ.get(API_SERVER_ENV), API_SERVER_ENV),
                                            (os.environ.get("RAY_ADDRESS"), "RAY_ADDRESS"),
                                            ("http://127.0.0.1:8265", "the default address")] if g)
    if given == "auto":  # `run` takes it; as a host name it would be looked up
        raise JobAPIError(f"{where} auto: {API_FORM}")
    return parse(given, where, ("http", "https"), "http", API_FORM), where


def _token_source() -> Optional[str]:
    """Where Ray's client would take the token from, when it sends one (RAY_AUTH_MODE=token)."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return None
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return os.environ["RAY_AUTH_TOKEN_PATH"]
    return "~/.ray/auth_token" if (Path.home() / ".ray" / "auth_token").is_file() else None


def check_address(target: Address, where: str, insecure_http: bool = False) -> None:
    """Refuse, before any connection, plain http to a host that is not this machine's unless the user said the
    network is trusted."""
    if target.scheme == "https" or target.is_local():
        return
    token = _token_source()
    carried = (f"the cluster token (RAY_AUTH_MODE=token, from {token}), the job's code and its logs" if token else
               "the job's code and its logs (no token is configured here; with one, it would go too)")
    if insecure_allowed(insecure_http):
        print(f"warning: {where} {target.url}: plain http: {carried} travel in clear text "
              f"(--insecure-http / {INSECURE_ENV}=1)", file=sys.stderr, flush=True)
        return
    raise JobAPIError(f"{where} {target.url}: plain http to another host would carry {carried} in clear text; use "
                      f"https://, or a tunnel (ray dashboard, ssh -L, kubectl port-forward) to http://127.0.0.1:8265, "
                      f"or on a trusted network pass --insecure-http (or set {INSECURE_ENV}=1)")


@contextlib.contextmanager
def _ray_env_unset() -> Iterator[None]:
    """Ray's job client replaces the address it is given with RAY_API_SERVER_ADDRESS or RAY_ADDRESS when either is
    set: without them, the address it uses is the one checked here."""
    saved = {k: os.environ.pop(k) for k in (API_SERVER_ENV, "RAY_ADDRESS") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


@contextlib.contextmanager
def answers(url: str) -> Iterator[None]:
    """What Ray's job client raises, as one JobAPIError line naming the address. (Its RuntimeErrors are all the
    server's refusals: `Request failed with status code 404: Job ... does not exist.`, a version too old.)"""
    import aiohttp
    import requests
    from ray.exceptions import AuthenticationError

    def first_line(e: Exception) -> str:
        return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]  # a body may be a whole HTML page

    try:
        yield
    except AuthenticationError as e:
        raise JobAPIError(f"{url}: {_auth_problem(e)}") from None
    except (requests.ConnectionError, requests.Timeout, ConnectionError, aiohttp.ClientConnectionError) as e:
        raise JobAPIError(f"{url}: no answer from the job API (is the dashboard up, is the address right?): "
                          f"{first_line(e)}") from None
    except (requests.RequestException, aiohttp.ClientError, RuntimeError) as e:
        raise JobAPIError(f"{url}: the job API refused: {first_line(e)}") from None


def _auth_problem(e: Exception) -> str:
    """Ray's message spans lines: 401 means no token reached the server, 403 a token it does not know."""
    if getattr(e, "message", str(e)).startswith("Authentication failed"):
        return (f"the job API refused the token (403) from {_token_source() or 'RAY_AUTH_TOKEN / ~/.ray/auth_token'}"
                f": it is not this cluster's")
    return ("the job API asks for the cluster token (401) and none was sent: set RAY_AUTH_MODE=token and the token "
            "in RAY_AUTH_TOKEN or ~/.ray/auth_token")


def client(address: Optional[str], insecure_http: bool = False):
    """A job client for `address` (http://HOST:8265), else RAY_API_SERVER_ADDRESS or RAY_ADDRESS, else the local
    dashboard; the address is parsed and checked before Ray's client connects (it asks the server's version on
    creation), and the client is given the address rebuilt from its parts."""
    from ray.job_submission import JobSubmissionClient

    target, where = resolve_address(address)
    check_address(target, where, insecure_http)
    with answers(target.url), _ray_env_unset():
        return JobSubmissionClient(target.url)  # rebuilt from the parsed parts: requests and aiohttp read it alike


def entrypoint(config: str, overrides: list[str], run_dir: str) -> str:
    return shlex.join(["python", "-m", "rlhf_ray.cli", "run", config, *overrides, "--run-dir", run_dir])


def submit(cfg: Config, config: str, overrides: list[str], address: Optional[str], run_dir: Optional[str] = None,
           env: Optional[list[str]] = None, job_id: Optional[str] = None, insecure_http: bool = False) -> str:
    """Submit `cfg`, loaded from `config` with `overrides` and checked by the caller as `run` checks it (the CLI:
    before anything is uploaded or any connection); returns the job id."""
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
    # When the run directory is visible here (shared storage, or this is the head), a held one is refused now
    # rather than by the job; the job's `run` takes the lock itself on the driver's node either way.
    lock.check_free(Path(run_dir).expanduser())
    c = client(address, insecure_http)
    with answers(c.get_address()):
        return c.submit_job(
            entrypoint=entrypoint(str(rel.relative_to(Path.cwd())), overrides, run_dir),
            submission_id=job_id,
            runtime_env={"working_dir": ".", "excludes": EXCLUDES, "env_vars": env_vars},
            metadata={"rlhf_ray_config": config, "run_dir": run_dir, "name": cfg.name},
        )


def describe(job_id: str, address: Optional[str], insecure_http: bool = False) -> tuple[str, str]:
    """(status, a few lines about the job) for `rlhf-ray status`."""
    c = client(address, insecure_http)
    with answers(c.get_address()):
        info = c.get_job_info(job_id)
    meta = info.metadata or {}

    def when(ms: Optional[int]) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"

    lines = [f"job {job_id}: {info.status.value}" + (f" ({info.message})" if info.message else ""),
             f"  entrypoint: {info.entrypoint}",
             f"  run directory (on the driver's node): {meta.get('run_dir', '?')}",
             f"  started {when(info.start_time)}, ended {when(info.end_time)}"]
    return info.status.value, "\n".join(lines)


def scale(job_id: str, asked: list[str], address: Optional[str], insecure_http: bool = False) -> tuple[str, str]:
    """`rlhf-ray scale JOB_ID ROLE=N`: a job of its own runs `rlhf-ray scale RUN_DIR ROLE=N` on the head node, where
    the job's driver and run directory are (the job API has no channel into a running job); (its id, the run
    directory)."""
    c = client(address, insecure_http)
    with answers(c.get_address()):
        info = c.get_job_info(job_id)
        run_dir = (info.metadata or {}).get("run_dir")
        if not run_dir:
            raise JobAPIError(f"job {job_id} was not submitted by `rlhf-ray submit` (no run_dir in its metadata)")
        if info.status.is_terminal():
            raise JobAPIError(f"job {job_id} has ended ({info.status.value}): there is no run to scale")
        entry = shlex.join(["python", "-m", "rlhf_ray.cli", "scale", run_dir, *asked])
        return c.submit_job(entrypoint=entry, runtime_env={"working_dir": ".", "excludes": EXCLUDES},
                            metadata={"scales": job_id}), run_dir


def logs(job_id: str, address: Optional[str], follow: bool = False, insecure_http: bool = False) -> str:
    """The job's driver log so far; with `follow`, stream it to stdout until the job ends and return its status."""
    c = client(address, insecure_http)
    with answers(c.get_address()):
        if not follow:
            return c.get_job_logs(job_id)

        async def tail() -> None:
            async for chunk in c.tail_job_logs(job_id):
                sys.stdout.write(chunk)
                sys.stdout.flush()

        asyncio.run(tail())
        return c.get_job_status(job_id).value


def stop(job_id: str, address: Optional[str], insecure_http: bool = False) -> bool:
    """Ask Ray to stop the job (SIGTERM to its driver, then SIGKILL); False if it had already ended."""
    c = client(address, insecure_http)
    with answers(c.get_address()):
        return c.stop_job(job_id)
