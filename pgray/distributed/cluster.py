"""Connecting to Ray: an existing cluster when one is named, an in-process local one otherwise."""

from __future__ import annotations

import os
from pathlib import Path

from pgray.errors import ClusterError

STORAGE_SCHEMES = ("s3://", "gs://", "gcs://", "file://")


def resolve_storage(storage: str | None, default: Path) -> str:
    """Absolute local path, or an s3:// / gs:// URI (Ray Train needs shared storage on
    multi-node clusters). Anything else is refused with the scheme named."""
    if not storage:
        storage = str(default)
    if "://" in storage:
        if not storage.startswith(STORAGE_SCHEMES):
            scheme = storage.split("://", 1)[0]
            raise ClusterError(
                f"unsupported storage URI scheme {scheme!r} in {storage!r}; use a local path,"
                " s3:// or gs://"
            )
        return storage
    from pgray.io import OutputError, ensure_dir

    path = Path(storage).expanduser().resolve()
    try:
        ensure_dir(path)
    except OutputError as err:
        raise ClusterError(f"checkpoint storage: {err}") from None
    return str(path)


def _probe(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a host:port nobody listens on (ray.init would retry for minutes)."""
    import socket

    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"Ray address {address!r} is not of the form host:port")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ClusterError(f"cannot connect to Ray at {address}: {err.strerror or err}") from None


def connect(address: str | None = None, *, num_cpus: int | None = None,
            num_gpus: int | None = None, worker_logs: bool = True) -> str:
    """Join `address` (or RAY_ADDRESS, or the job's cluster under `ray job submit`), else start
    a local Ray in this process. Returns a description of what was joined. Without
    `worker_logs` Ray's own INFO lines are left out too (the caller says what was joined)."""
    import logging

    import ray

    if ray.is_initialized():
        return "existing Ray session"
    address = address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    level = logging.INFO if worker_logs else logging.WARNING
    if not worker_logs:  # Ray 2.60 says at WARNING that its default token auth is on
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
            logging.ERROR)
    if address:
        _probe(address)
        try:
            ray.init(address=address, log_to_driver=worker_logs, logging_level=level)
        except Exception as err:  # noqa: BLE001 - Ray raises several types for a bad address
            raise ClusterError(f"cannot connect to Ray at {address}: {err}") from None
        return f"Ray cluster at {address}"
    # A private Ray on this machine. Its GCS and raylet listen on the machine's address, so
    # Ray's token authentication stays on (Ray 2.60's default for a new local cluster: the
    # token lives in ~/.ray/auth_token); its dashboard listens on 127.0.0.1 only. Ray Train
    # frees the workers of stopped trials through the State API the dashboard serves;
    # RAY_API_SERVER_ADDRESS (inherited by Ray's workers) makes State API clients use this
    # instance even when several Ray instances share the machine.
    # address="local": a bare ray.init() would join whatever cluster Ray's temp folder last
    # recorded (ray_current_cluster: another program's `ray start`, even a dead one).
    port = _free_port()
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=True,
             dashboard_host="127.0.0.1", dashboard_port=port, log_to_driver=worker_logs,
             logging_level=level)
    _restrict_default_token()
    return f"local Ray (in-process, dashboard http://127.0.0.1:{port})"


def _restrict_default_token() -> None:
    """Ray writes its default token world-readable; the token is the key to the cluster."""
    token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        if token.is_file() and token.stat().st_uid == os.getuid():
            token.chmod(0o600)
    except OSError:
        pass


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cluster_resources() -> dict[str, float]:
    """The connected cluster's total resources (CPU, GPU, memory, custom)."""
    import ray

    return dict(ray.cluster_resources())


def resolve_worker_gpus(gpus: float | None, *, allow_cpu: bool, where: str) -> float:
    """GPUs per Ray Train worker on the connected cluster: None means one where the cluster
    has GPUs and none where it has none; 0 on a cluster with GPUs is refused unless
    `allow_cpu`, since it trains on CPUs while every GPU idles."""
    have = cluster_resources().get("GPU", 0.0)
    if gpus is None:
        return 1.0 if have > 0 else 0.0
    if gpus == 0 and have > 0 and not allow_cpu:
        raise ClusterError(
            f"{where}: 0 GPUs per worker on a cluster with {have:g} GPUs would train on CPUs"
            " with every GPU idle; ask for GPUs (or leave it unset: one per worker), or allow"
            " it explicitly (--allow-cpu / allow_cpu: true)")
    return float(gpus)


def resolve_resources(resources, where: str):
    """A run's trial resources (`pgray.config.search_sections.Resources`) with GPUs per worker
    decided on the connected cluster (`resolve_worker_gpus`; `where` names the key)."""
    import dataclasses

    return dataclasses.replace(resources, gpus_per_worker=resolve_worker_gpus(
        resources.gpus_per_worker, allow_cpu=resources.allow_cpu, where=where))


SHARED_TRACKING_ENV = "PGRAY_SHARED_TRACKING_FS"


def check_tracking_reachable(uri: str) -> None:
    """On a cluster of several nodes, rank-0 workers and evaluation actors on other nodes log
    to MLflow themselves; an SQLite or file store there is a different file (or none) on each
    node. Refuse it, unless the user says the path is on storage every node mounts."""
    import ray

    if not uri.startswith(("sqlite:", "file:")) or os.environ.get(SHARED_TRACKING_ENV) == "1":
        return
    alive = [n for n in ray.nodes() if n.get("Alive")]
    if len(alive) > 1:
        raise ClusterError(
            f"MLflow tracking URI {uri} is a file on this machine, but the Ray cluster has"
            f" {len(alive)} nodes: runs logged from the other nodes would land in their own"
            " files or nowhere. Run an MLflow server (mlflow server --host 127.0.0.1 ...,"
            " reached through a tunnel or an authenticating proxy) and set MLFLOW_TRACKING_URI"
            f" to it, or set {SHARED_TRACKING_ENV}=1 if that path is on storage every node"
            " mounts")
