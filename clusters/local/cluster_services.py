"""The local cluster's services: S3 (SeaweedFS with an identities file), PostgreSQL, the
MLflow tracking server on it, and the Ray head; started, waited for and stopped by name.
`Services` is mixed into `localcluster.LocalCluster`, which holds their state."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

from cluster_base import BIN, ClusterSetupError, alive, http_status, wait_for

SERVICES = ("s3", "postgres", "mlflow", "head")
RESTARTABLE = ("s3", "postgres", "mlflow")
STORAGE_BUCKET, ARTIFACT_BUCKET = "pgray-runs", "mlflow-artifacts"
REGION = "us-east-1"


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


class Services:
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
