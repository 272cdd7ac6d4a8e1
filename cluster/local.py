"""Connect to a Ray cluster, or start the embedded loopback-only one.

The embedded cluster binds every Ray server (GCS, raylets, object manager, dashboard) to 127.0.0.1:
`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` makes Ray treat the node as a single-machine cluster whose node IP is
127.0.0.1 (without it Ray binds all interfaces and talks to the machine's own non-loopback address). Ray's token
authentication stays on. Env vars set here are inherited by every worker process Ray starts. Its temp dir (Ray's
session: sockets, logs, the cluster file) lies in a directory private to this user: a fresh `mkdtemp` per
process, removed at exit, or RLHF_RAY_TMP once checked.

An address to join is parsed and checked by cluster/address.py, and `ray.init` is given the address rebuilt from
its parts; after connecting, a cluster that took this driver without a token is named in a warning.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import stat
import sys
import tempfile
from typing import Optional

from cluster import quiet
from cluster.address import for_ray, warn_once

TMP_ENV = "RLHF_RAY_TMP"
CLUSTER_FILE = "ray_current_cluster"

LOOPBACK_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "MASTER_ADDR": "127.0.0.1",
    "GLOO_SOCKET_IFNAME": "lo",
    "VLLM_HOST_IP": "127.0.0.1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "TOKENIZERS_PARALLELISM": "false",
}


def init_ray(address: Optional[str] = None, num_cpus: Optional[int] = None, object_store_mb: int = 512,
             dashboard: bool = True, resources: Optional[dict] = None, metrics_export_port: Optional[int] = None,
             insecure_http: bool = False):
    """`ray.init` on `address` (or `RAY_ADDRESS`; `insecure_http` lets the cluster token cross a network in clear
    text, see cluster/address.py); with neither, an embedded cluster bound to 127.0.0.1.

    Returns the ray context (its `dashboard_url` is set when the dashboard runs)."""
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context()
    quiet.driver_start()  # Ray's lines that describe_cluster says again; actors get theirs from ActorGroup
    where = "address" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        target = for_ray(address, where, insecure_http)  # parsed, checked, rebuilt from its parts
        ctx = ray.init(address=target)
        _warn_without_token(f"the Ray cluster at {target}")
        return ctx
    for key, value in LOOPBACK_ENV.items():
        os.environ.setdefault(key, value)
    temp_dir = ray_temp_dir()
    os.makedirs(temp_dir, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):  # an earlier cluster's: ray.init would try to join it
        os.unlink(os.path.join(temp_dir, CLUSTER_FILE))  # (a symlink is removed, not followed)
    ctx = ray.init(
        num_cpus=num_cpus,
        resources=resources,
        object_store_memory=object_store_mb << 20,
        include_dashboard=dashboard,
        dashboard_host="127.0.0.1",
        _node_ip_address="127.0.0.1",
        _temp_dir=temp_dir,
        runtime_env={"env_vars": {k: os.environ[k] for k in LOOPBACK_ENV}},
        log_to_driver=True,
        _metrics_export_port=metrics_export_port,
    )
    # Ray's job supervisor points a job's driver at the cluster named in this file, which only `ray start` writes;
    # without it the driver joins *any* Ray cluster running on the machine (seen with two test workers).
    write_cluster_file(temp_dir, ray.get_runtime_context().gcs_address)
    _warn_without_token("the embedded cluster")
    return ctx


def _warn_without_token(cluster: str) -> None:
    """A driver without a token that got in means the cluster asks for none (one with token auth refuses it)."""
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    if not is_token_auth_enabled():
        warn_once(f"{cluster} runs without token authentication (RAY_AUTH_MODE is not token): anyone who can reach "
                  f"its ports can run code on it as the user running Ray")


class UnsafeTempDir(ConnectionError):
    """RLHF_RAY_TMP is not a directory of this user's that only it can change: Ray is not started there. (A
    ConnectionError, printed as one `error:` line: this layer sits below rlhf_ray.errors.)"""


_own_dirs: dict[int, str] = {}  # pid -> its private temp dir (a forked child makes its own)


def ray_temp_dir() -> str:
    """Ray's temp dir for an embedded cluster: `ray` in a directory private to this user, RLHF_RAY_TMP once checked,
    else one made for this process (mkdtemp: mode 0700, an unguessable name, short enough for Ray's socket paths)
    and removed when the process exits. (Ray makes its temp dir and everything in it mode 777, for a /tmp/ray that
    several users share: the private directory above it is what keeps others out.)"""
    given = os.environ.get(TMP_ENV)
    if given:
        try:
            if not os.path.lexists(given):
                os.makedirs(given, mode=0o700)
        except OSError as e:
            raise UnsafeTempDir(f"{TMP_ENV} {given}: cannot create it: {e.strerror}") from None
        check_private(given, TMP_ENV)
        return os.path.join(given, "ray")
    pid = os.getpid()
    if pid not in _own_dirs:
        _own_dirs[pid] = tempfile.mkdtemp(prefix="rlhf-ray-")
        atexit.register(_remove_own_dir, pid, _own_dirs[pid])
    return os.path.join(_own_dirs[pid], "ray")


def check_private(path: str, where: str) -> None:
    """UnsafeTempDir unless `path` is a directory (not a symlink) owned by this user and not writable by group or
    others: whoever can change Ray's session files can swap its sockets or the cluster file a job's driver joins."""
    st = os.lstat(path)
    problem = ("is a symlink" if stat.S_ISLNK(st.st_mode) else
               "is not a directory" if not stat.S_ISDIR(st.st_mode) else
               f"is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})" if st.st_uid != os.geteuid() else
               f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})" if st.st_mode & 0o022 else None)
    if problem:
        raise UnsafeTempDir(f"{where} {path} {problem}: Ray's session (sockets, logs, the cluster file) needs a "
                            f"directory that only this user can change; give one of yours with mode 700, or unset "
                            f"{where} for a private one")


def write_cluster_file(temp_dir: str, gcs_address: str) -> None:
    """Write `temp_dir`/ray_current_cluster through a new file renamed over it: a symlink planted at that name is
    replaced, never followed."""
    fd, tmp = tempfile.mkstemp(dir=temp_dir, prefix=f".{CLUSTER_FILE}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(gcs_address)
        os.replace(tmp, os.path.join(temp_dir, CLUSTER_FILE))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _remove_own_dir(pid: int, path: str) -> None:
    """At exit: stop this process's Ray first (its processes write logs there until they end), then remove the
    directory. Runs before Ray's own exit handler, which was registered earlier."""
    if os.getpid() != pid:
        return
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown(wait_for_processes=True)
    shutil.rmtree(path, ignore_errors=True)


POOL_RESOURCE = "rlhf_pool_{}"
"""The custom resource a node of a pool advertises (`cluster.pools.<pool>.node_resource`), as deploy/ does."""
FAST_NODE_LOSS = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3,
                  "health_check_initial_delay_ms": 1000}
"""The GCS marks a silent node dead after ~3 s, not Ray's default ~15 s (period 3 s x 5 misses)."""


class LocalNodes:
    """A Ray cluster of several nodes on this machine, for the tests and benchmark scripts: a head that runs no
    actors (0 CPUs; the drivers join it) and worker nodes, each its own raylet and object store, bound to
    127.0.0.1, each advertising `rlhf_pool_<pool>` (1000 units), so `cluster.pools.<pool>.node_resource` pins a
    pool to its nodes as on a real cluster.

    Built on `ray.cluster_utils.Cluster` rather than `ray start` processes: the nodes are real raylets all the same,
    but they start in ~7 s instead of ~25 s, need no `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1` (several `ray start`
    nodes on one machine refuse to start without it), and one is removed by killing its raylet and every worker on
    it (a node lost), where `ray stop` stops every Ray on the machine, a neighbouring test's too. Runs join with
    `--address` (`address`)."""

    def __init__(self, pools: dict[str, float], object_store_mb: int = 200, fast_node_loss: bool = True):
        """pools: pool name -> CPUs of its one node (more nodes: `add`)."""
        from ray.cluster_utils import Cluster

        for key, value in LOOPBACK_ENV.items():  # every raylet and worker inherits them
            os.environ.setdefault(key, value)
        temp_dir, before = ray_temp_dir(), os.environ.get("RAY_TMPDIR")
        os.makedirs(temp_dir, exist_ok=True)
        os.environ["RAY_TMPDIR"] = os.path.dirname(temp_dir)  # where Cluster writes the address: a private dir
        try:
            self.cluster = Cluster(initialize_head=True, head_node_args={
                "num_cpus": 0, "object_store_memory": object_store_mb << 20, "node_ip_address": "127.0.0.1",
                "include_dashboard": False, "_system_config": FAST_NODE_LOSS if fast_node_loss else {}})
        finally:
            os.environ.pop("RAY_TMPDIR") if before is None else os.environ.update(RAY_TMPDIR=before)
        self.object_store_mb, self.nodes = object_store_mb, {}
        for pool, cpus in pools.items():
            self.add(pool, cpus)

    @property
    def address(self) -> str:
        """The head's GCS address (127.0.0.1:PORT), for `rlhf-ray run --address`."""
        return self.cluster.address

    def add(self, pool: str, cpus: float = 1) -> str:
        """A new node of `pool`; its node id once it has joined."""
        node = self.cluster.add_node(num_cpus=cpus, resources={POOL_RESOURCE.format(pool): 1000},
                                     object_store_memory=self.object_store_mb << 20, node_ip_address="127.0.0.1")
        self.cluster.wait_for_nodes()
        self.nodes.setdefault(pool, []).append(node)
        return node.node_id

    def remove(self, pool: str) -> str:
        """Kill the oldest node of `pool` (its raylet, object store and every worker on it, no warning); its id."""
        node = self.nodes[pool].pop(0)
        self.cluster.remove_node(node, allow_graceful=False)
        return node.node_id

    def node_ids(self, pool: str) -> list[str]:
        return [n.node_id for n in self.nodes.get(pool, [])]

    def shutdown(self) -> None:
        self.cluster.shutdown()


def describe_cluster() -> str:
    """Where to watch the run: the dashboard (and how to sign in), Prometheus metrics, the cluster's size."""
    import ray

    ctx = ray.get_runtime_context()
    me = [n for n in ray.nodes() if n["Alive"] and n["NodeID"] == ctx.get_node_id()]
    total = ray.cluster_resources()
    lines = [f"Ray cluster: {len([n for n in ray.nodes() if n['Alive']])} node(s), {total.get('CPU', 0):g} CPUs, "
             f"{total.get('GPU', 0):g} GPUs"]
    url = ray._private.worker.get_dashboard_url()  # "" when the cluster runs without one
    if url:
        lines.append(f"  dashboard: http://{url}")
        from ray._private.authentication.authentication_utils import is_token_auth_enabled

        if is_token_auth_enabled():
            lines.append("    token authentication is on: the page asks for the token, which `ray get-auth-token` "
                         "prints (or ~/.ray/auth_token; API calls send `Authorization: Bearer <token>`)")
    if me:
        lines.append(f"  Prometheus metrics (ray_rlhf_*): http://{me[0]['NodeManagerAddress']}:"
                     f"{me[0]['MetricsExportPort']}/metrics")
    return "\n".join(lines)


def listening_socket(host: str) -> socket.socket:
    """A TCP socket listening on `host` only (the node IP; 127.0.0.1 locally), on a free port, for a torch
    TCPStore's `master_listen_fd`: given a host name, the store itself would listen on every interface. Holding
    the socket from here on also means nobody can take the port before the store opens."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(128)
    return sock
