"""Operating a run on a Ray cluster, for real, on an embedded loopback cluster with its dashboard and token auth:
`rlhf-ray submit` sends a tiny PPO run through Ray's job API; while it runs, the state API lists its actors by
role and rank and its phases by method, and Ray's Prometheus endpoint serves the project's gauges; `status` and
`logs` read the job back; the plots exist; `stop` ends a second job and its actors."""

import ipaddress
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXE = str(Path(sys.executable).with_name("rlhf-ray"))
ACTORS = {"generator-0", "reference-0", "policy-learner-0", "critic-learner-0", "reward-fn-0"}
TASKS = {"Generator.generate", "Learner.train_step", "Reference.logprobs", "Generator.update_weights"}


@pytest.fixture(scope="module")
def cluster():
    """The embedded cluster with its dashboard (the job API lives there). Jobs run `python -m rlhf_ray.cli`, so
    the cluster's PATH must find this venv's python, as a cluster image's would."""
    import ray

    from cluster.local import init_ray

    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    ctx = init_ray(num_cpus=2, object_store_mb=256, dashboard=True)
    node = ray.nodes()[0]
    yield {"dashboard": f"http://{ctx.dashboard_url}",
           "metrics": f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"}
    ray.shutdown()


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def wait_for(what: str, check, timeout: float, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def alive_actors(cluster) -> set[str]:
    from ray.util.state import list_actors

    # The address, not discovery: discovery fails when another Ray runs on the machine (seen in CI beside a run).
    return {a.name for a in list_actors(cluster["dashboard"], filters=[("state", "=", "ALIVE")])}


def gauges(url: str) -> dict[str, dict[str, float]]:
    """{metric name: {labels: value}} of the ray_rlhf_* series the endpoint serves now."""
    out: dict[str, dict[str, float]] = {}
    for line in urllib.request.urlopen(url, timeout=10).read().decode().splitlines():
        m = re.match(r"(ray_rlhf_\w+)\{(.*)\} (\S+)$", line)
        if m:
            out.setdefault(m[1], {})[m[2]] = float(m[3])
    return out


def test_submit_watch_and_read_back_a_tiny_ppo_job(cluster, tmp_path):
    from ray.util.state import list_tasks

    run_dir = tmp_path / "run"
    proc = cli("submit", "configs/tiny/ppo.yaml", "ppo.steps=6", "logging.plots_every_s=1",
               "--address", cluster["dashboard"], "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = re.search(r"submitted (\S+)", proc.stdout)[1]

    alive = wait_for("the run's named actors", lambda: ACTORS <= alive_actors(cluster), timeout=240)
    assert alive
    # Read the endpoint once the run is a few steps in: every key of a row has been exported several times by then.
    served = wait_for("the project's gauges on the metrics endpoint", lambda: max(
        (g := gauges(cluster["metrics"])).get("ray_rlhf_policy_version", {}).values(), default=0) >= 3 and g,
        timeout=300)
    labels = next(iter(served["ray_rlhf_reward_mean"]))
    assert 'run="tiny-ppo"' in labels and 'stage="ppo"' in labels, labels
    for key in ("kl_mean", "tokens_per_s", "staleness_max", "buffer_depth", "time_generate_s", "time_score_s",
                "time_train_s", "time_sync_s", "sync_bytes", "policy_loss", "value_loss", "policy_version"):
        assert f"ray_rlhf_{key}" in served, (key, sorted(served))
    assert next(iter(served["ray_rlhf_sync_bytes"].values())) > 0

    status = wait_for("the job to end", lambda: (s := cli("status", job, "--address", cluster["dashboard"]))
                      and "RUNNING" not in s.stdout and "PENDING" not in s.stdout and s, timeout=600, every=3)
    assert f"job {job}: SUCCEEDED" in status.stdout and str(run_dir) in status.stdout, status.stdout
    phases = {t.name for t in list_tasks(cluster["dashboard"], limit=10000)}
    assert TASKS <= phases, sorted(phases)
    log = cli("logs", job, "--address", cluster["dashboard"]).stdout
    assert "ppo step 6/6" in log and re.search(r"role\s+rank\s+pool\s+bundle\s+node\s+GPU", log), log[-3000:]

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in rows if "reward_mean" in r]) == 6
    # The Grafana dashboard in deploy/ charts series this run really served (PPO keys the rows hold).
    charted = set(re.findall(r"ray_rlhf_(\w+)", (ROOT / "deploy/grafana/rlhf-ray.json").read_text()))
    ppo_keys = set().union(*rows)
    assert len(charted & ppo_keys) >= 15 and {f"ray_rlhf_{k}" for k in charted & ppo_keys} <= set(served), \
        sorted(charted & ppo_keys - {k.removeprefix("ray_rlhf_") for k in served})
    plots = sorted((run_dir / "plots").glob("*.png"))
    assert {"ppo_reward.png", "ppo_kl.png", "ppo_phase_times.png"} <= {p.name for p in plots}
    assert all(p.stat().st_size > 5000 for p in plots), [(p.name, p.stat().st_size) for p in plots]
    for p in plots:
        p.unlink()
    again = cli("report", str(run_dir))
    assert again.returncode == 0 and (run_dir / "plots" / "ppo_reward.png").stat().st_size > 5000, again.stderr


def test_scale_a_running_job_then_stop_it_and_its_actors_end(cluster, tmp_path):
    proc = cli("submit", "configs/tiny/ppo.yaml", "ppo.steps=200", "--address", cluster["dashboard"],
               "--run-dir", str(tmp_path / "run"))
    job = re.search(r"submitted (\S+)", proc.stdout)[1]
    metrics = tmp_path / "run" / "metrics.jsonl"
    wait_for("the first step", lambda: metrics.exists() and metrics.read_text().strip(), timeout=300)
    # `scale JOB_ID` reaches the run directory on the driver's node through a job of its own.
    scale = cli("scale", job, "generator=2", "--address", cluster["dashboard"])
    assert scale.returncode == 0 and "through job" in scale.stdout, scale.stdout + scale.stderr

    def sizes() -> list:
        return [json.loads(line).get("fleet_size_generator") for line in metrics.read_text().splitlines()]

    wait_for("a second generator", lambda: 2 in sizes(), timeout=300)
    assert "generator-1" in wait_for("generator-1 alive", lambda: alive_actors(cluster), timeout=30)
    served = wait_for("the fleet-size gauge at 2", lambda: max(
        gauges(cluster["metrics"]).get("ray_rlhf_fleet_size", {"": 0}).values()) == 2 and gauges(cluster["metrics"]),
        timeout=60)
    assert any('role="generator"' in labels for labels in served["ray_rlhf_fleet_size"]), served["ray_rlhf_fleet_size"]
    stop = cli("stop", job, "--address", cluster["dashboard"])
    assert stop.returncode == 0 and "stopping" in stop.stdout, stop.stdout + stop.stderr
    wait_for("STOPPED", lambda: "STOPPED" in cli("status", job, "--address", cluster["dashboard"]).stdout,
             timeout=120, every=2)
    # SIGTERM, not SIGKILL: the run finished its step and checkpointed (submit gives it the time to).
    log = cli("logs", job, "--address", cluster["dashboard"]).stdout
    assert "stopped by SIGTERM after step" in log, log[-3000:]
    assert list((tmp_path / "run" / "checkpoints" / "ppo").glob("step_*/state.json"))
    wait_for("its actors to go", lambda: not ((ACTORS | {"generator-1"}) & alive_actors(cluster)), timeout=120,
             every=2)


def test_run_joins_an_existing_cluster_by_address(cluster, tmp_path):
    """`rlhf-ray run --address HOST:PORT` drives the run from this process on the running cluster (no embedded
    one): its driver shows in the cluster's jobs and its learner in the cluster's actors."""
    import ray
    from ray.util.state import list_actors, list_jobs

    gcs = ray.get_runtime_context().gcs_address
    proc = cli("run", "configs/tiny/sft.yaml", "train.epochs=1", "--address", gcs, "--run-dir", str(tmp_path / "r"),
               timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Ray cluster: 1 node(s), 2 CPUs" in proc.stdout and "sft: loss" in proc.stdout
    drivers = [j for j in list_jobs(cluster["dashboard"]) if j.type == "DRIVER" and "rlhf-ray" in (j.entrypoint or "")]
    assert drivers and drivers[-1].status == "SUCCEEDED", drivers
    assert "sft-learner-0" in {a.name for a in list_actors(cluster["dashboard"])}  # dead now, still listed


def test_errors_name_what_is_wrong(cluster, tmp_path):
    bad = cli("submit", "configs/tiny/ppo.yaml", "ppo.stepz=3", "--address", cluster["dashboard"])
    assert bad.returncode == 1 and "ppo.stepz" in bad.stderr, bad.stderr
    nobody = cli("status", "raysubmit_nope", "--address", "http://127.0.0.1:9")
    assert nobody.returncode == 1 and "127.0.0.1:9" in nobody.stderr, nobody.stderr[-2000:]
    http = cli("run", "configs/tiny/ppo.yaml", "--address", cluster["dashboard"])
    assert http.returncode == 1 and "submit" in http.stderr, http.stderr


def test_jobs_join_this_cluster_and_no_other_on_the_machine(cluster):
    """A job's driver joins the cluster named in the cluster file of the temp dir (Ray's job supervisor reads it;
    without one it picks any Ray cluster running on the machine, which broke jobs when two test workers ran)."""
    import ray

    temp_dir = Path(ray._private.worker._global_node.get_temp_dir_path())
    assert (temp_dir / "ray_current_cluster").read_text() == ray.get_runtime_context().gcs_address


def test_the_embedded_cluster_listens_on_loopback_only_and_keeps_token_auth(cluster):
    """The threat model's two promises (docs/reliability.md): nothing of Ray's is reachable from another machine,
    and on this one the dashboard / job API answers only with the token."""
    import psutil

    ray_pids = {p.pid for p in psutil.process_iter(["cmdline"])
                if any(w in " ".join(p.info["cmdline"] or []) for w in ("ray", "gcs_server", "raylet"))}
    listening = {(c.laddr.ip, c.laddr.port) for c in psutil.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.pid in ray_pids}
    assert len(listening) >= 5, listening  # GCS, raylet, object manager, dashboard, agents, metrics...
    def loopback(ip: str) -> bool:  # 127.0.0.1, ::1, or an IPv4-mapped ::ffff:127.0.0.1 (gRPC's dual-stack form)
        addr = ipaddress.ip_address(ip)
        return addr.is_loopback or bool(getattr(addr, "ipv4_mapped", None) and addr.ipv4_mapped.is_loopback)

    assert all(loopback(ip) for ip, _ in listening), sorted(listening)

    url = cluster["dashboard"] + "/api/jobs/"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url, timeout=10)
    assert e.value.code == 401
    token = (Path.home() / ".ray" / "auth_token").read_text().strip()
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": "Bearer wrong"}), timeout=10)
    assert e.value.code == 403
    ok = urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"}), timeout=10)
    assert ok.status == 200
