"""Screenshots of the Ray dashboard during a tiny rlhf-ray run, in a real headless browser (Debian's chromium).

    apt-get install chromium && pip install playwright      # no browser download: it drives /usr/bin/chromium
    python deploy/dashboard_screenshot.py --out shots/      # embedded loopback cluster + a tiny PPO job
    python deploy/dashboard_screenshot.py --address http://HEAD:8265 --job JOB_ID --out shots/   # an existing run

The dashboard keeps Ray's token authentication: the browser carries the token as the `ray-authentication-token`
cookie, which is what the dashboard's sign-in sets (token from RAY_AUTH_TOKEN or ~/.ray/auth_token).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
PAGES = {"overview": "#/overview", "jobs": "#/jobs", "actors": "#/actors", "cluster": "#/cluster"}
# Without these, chromium reaches for Google's services at start (refused on a closed network, many times over).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def token() -> str:
    return os.environ.get("RAY_AUTH_TOKEN") or (Path.home() / ".ray" / "auth_token").read_text().strip()


def start_tiny_run(steps: int) -> tuple[str, str]:
    """The embedded cluster and a tiny PPO job on it; returns (dashboard URL, job id) once its actors are up."""
    sys.path.insert(0, str(ROOT))
    from ray.util.state import list_actors

    from cluster.local import init_ray
    from rlhf_ray.runtime import jobs

    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # the job's `python`
    url = "http://" + init_ray(num_cpus=2, object_store_mb=256).dashboard_url
    os.chdir(ROOT)
    job = jobs.submit("configs/tiny/ppo.yaml", [f"ppo.steps={steps}"], url, "/tmp/rlhf-ray-screenshot-run")
    while "critic-learner-0" not in {a.name for a in list_actors(url, filters=[("state", "=", "ALIVE")])}:
        time.sleep(2)
    time.sleep(20)  # a few PPO steps, so the task and job pages have something to show
    return url, job


def shoot(url: str, job: str | None, out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    pages = dict(PAGES, **({"job": f"#/jobs/{job}"} if job else {}))
    shots = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1600, "height": 1000})
        context.add_cookies([{"name": "ray-authentication-token", "value": token(),
                              "domain": urlparse(url).hostname, "path": "/"}])
        page = context.new_page()
        for name, route in pages.items():
            page.goto(f"{url}/{route}", wait_until="networkidle")
            page.wait_for_timeout(3000)  # the dashboard fills its tables after the first paint
            shots.append(out / f"dashboard_{name}.png")
            page.screenshot(path=str(shots[-1]), full_page=True)
        browser.close()
    return shots


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--address", help="dashboard of a running cluster (default: start an embedded one with a job)")
    ap.add_argument("--job", help="a job id whose page to capture too")
    ap.add_argument("--steps", type=int, default=60, help="PPO steps of the tiny job (embedded mode)")
    ap.add_argument("--out", default="dashboard_shots", help="folder for the PNGs")
    args = ap.parse_args()
    url, job = (args.address.rstrip("/"), args.job) if args.address else start_tiny_run(args.steps)
    try:
        for path in shoot(url, job, Path(args.out)):
            print(path)
    finally:
        if not args.address:
            from rlhf_ray.runtime import jobs

            jobs.stop(job, url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
