"""The local cluster's worker nodes (each `ray start` in a mount namespace of its own, seeing
only its own disk and the shared datasets) and what Ray's State API says about them.
`Nodes` is mixed into `localcluster.LocalCluster`, which holds their state."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path

from cluster_base import BIN, HERE, REPO, ClusterSetupError, alive, free_ports, under, wait_for


class Nodes:
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
