"""Connect to a Ray cluster, or start the embedded loopback-only one.

The embedded cluster binds every Ray server (GCS, raylets, object manager, dashboard) to 127.0.0.1:
`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` makes Ray treat the node as a single-machine cluster whose node IP is
127.0.0.1 (without it Ray binds all interfaces and talks to the machine's own non-loopback address). Ray's token
authentication stays on. Env vars set here are inherited by every worker process Ray starts.
"""

from __future__ import annotations

import os
import socket
import tempfile
from typing import Optional

from cluster import quiet

LOOPBACK_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "MASTER_ADDR": "127.0.0.1",
    "GLOO_SOCKET_IFNAME": "lo",
    "VLLM_HOST_IP": "127.0.0.1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "TOKENIZERS_PARALLELISM": "false",
}


def init_ray(address: Optional[str] = None, num_cpus: Optional[int] = None, object_store_mb: int = 512,
             dashboard: bool = True, resources: Optional[dict] = None, metrics_export_port: Optional[int] = None):
    """`ray.init` on `address` (or `RAY_ADDRESS`); with neither, an embedded cluster bound to 127.0.0.1.

    Returns the ray context (its `dashboard_url` is set when the dashboard runs)."""
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context()
    quiet.driver_start()  # Ray's lines that describe_cluster says again; actors get theirs from ActorGroup
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        return ray.init(address=address)
    for key, value in LOOPBACK_ENV.items():
        os.environ.setdefault(key, value)
    temp_dir = os.environ.get("RLHF_RAY_TMP") or _own_temp_dir()
    cluster_file = os.path.join(temp_dir, "ray_current_cluster")
    if os.path.exists(cluster_file):  # an earlier cluster's: ray.init would try to join it
        os.remove(cluster_file)
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
    with open(cluster_file, "w") as f:
        f.write(ray.get_runtime_context().gcs_address)
    return ctx


def _own_temp_dir() -> str:
    """A temp dir per process that starts embedded clusters: each has its own cluster file (see init_ray)."""
    return os.path.join(tempfile.gettempdir(), "rlhf-ray", str(os.getpid()))


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
