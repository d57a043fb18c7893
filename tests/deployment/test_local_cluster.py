"""The deployment tier: pgray on a cluster shaped like a real one (clusters/local/), used as a
team with a GPU cluster uses it.

A Ray head on 127.0.0.1 that runs nothing, worker nodes on 127.0.0.2 and up that each see only
their own disk (the dataset is the one shared, read-only folder), S3 storage (SeaweedFS), an
MLflow server on PostgreSQL. Jobs go in through `ray job submit`; faults come from stopping
nodes and services by process id. The tests look only where a user can: exit codes and
messages, the driver's output folder, the S3 bucket, the MLflow server.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from cluster_base import alive, free_ports
from localcluster import LocalCluster

from pgray.config import tiny_model_config
from pgray.config.base import to_dict

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
CATEGORIES = ("disc", "weave")
TINY = {
    "model": to_dict(tiny_model_config(img_size=32)),
    "loss": {"attention_layers": [1, 2], "attention_weights": [0.01, 0.05]},
    "train": {"batch_size": 4, "holdout_fraction": 0.25, "proxy_steps": 2,
              "max_steps_per_epoch": 2, "attack": {"eps": 8.0, "steps": 2}},
}


class Deployment:
    """The running cluster, and what a client outside it can do."""

    def __init__(self, cluster: LocalCluster, data: Path):
        self.cluster, self.data = cluster, data

    def env(self, **changes: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RAY_", "AWS_", "MLFLOW_"))}
        env |= self.cluster.client_env() | {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "RAY_USAGE_STATS_ENABLED": "0"}
        for key, value in changes.items():
            env.pop(key, None) if value is None else env.__setitem__(key, value)
        return env

    def submit(self, job_id: str, argv: list[str], log: Path) -> subprocess.Popen:
        """`ray job submit` of this checkout (what .rayignore leaves out stays behind)."""
        excludes = [ln.strip() for ln in (REPO / ".rayignore").read_text().splitlines()
                    if ln.strip() and not ln.startswith("#")]
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "ray"), "job", "submit", "--submission-id",
             job_id, "--working-dir", str(REPO), "--runtime-env-json",
             json.dumps({"excludes": excludes}), "--", "python", "-m", *argv],
            env=self.env(), stdout=log.open("w"), stderr=subprocess.STDOUT)

    def s3(self):
        from pyarrow import fs

        s3 = self.cluster.state["s3"]
        return fs.S3FileSystem(access_key=s3["access_key"], secret_key=s3["secret_key"],
                               endpoint_override=self.cluster.s3_endpoint, scheme="http",
                               region="us-east-1")

    def s3_files(self, prefix: str) -> list[str]:
        from pyarrow import fs

        infos = self.s3().get_file_info(fs.FileSelector(prefix, recursive=True,
                                                        allow_not_found=True))
        return sorted(i.path for i in infos if i.type == fs.FileType.File)

    def mlflow(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.cluster.client_env()["MLFLOW_TRACKING_URI"])

    def only_nodes(self, *names: str) -> None:
        """Exactly these worker nodes up (what earlier tests stopped or added is undone)."""
        for name in list(self.cluster.state["nodes"]):
            if name not in names and alive(self.cluster.pid(name)):
                self.cluster.stop_node(name)
        for name in names:
            if not alive(self.cluster.pid(name)):
                self.cluster.start_node(name)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    from pgray.data.synthetic import generate

    shared = tmp_path_factory.mktemp("shared")  # the one folder every node sees (read-only)
    data = generate(shared / "synthetic", seed=0, size=32, n_train=12, n_test=8,
                    categories=CATEGORIES)
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"))
    cluster.up(nodes=2, cpus=2, datasets=[str(shared)], say=print)
    try:
        yield Deployment(cluster, data)
    finally:
        cluster.down()
        assert not any(alive(p) for p in cluster.state.get("pids", {}).values())


def wait_until(check: Callable[[], object], what: str, timeout_s: float,
               job: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (found := check()):
            return found
        if job is not None and job.poll() is not None:
            tail = log.read_text()[-3000:] if log else ""
            pytest.fail(f"the job ended (exit {job.returncode}) before {what}:\n{tail}")
        time.sleep(0.5)
    pytest.fail(f"not seen within {timeout_s:g} s: {what}")


def benchmark_yaml(path: Path, name: str, root: Path, ckpt: Path, *, epochs: int,
                   baseline: bool = False, **overrides) -> Path:
    train = json.loads(json.dumps(TINY))
    train["train"]["epochs"] = epochs
    entry = {"dataset": "synthetic", "root": str(root), "categories": list(CATEGORIES),
             "checkpoint": str(ckpt / "{category}" / "checkpoint.pt")}
    if baseline:
        entry["detectors"] = [{"name": "padim", "fit": {"img_size": 32},
                               "checkpoint": str(ckpt / "{category}" / "padim.pt")}]
    cfg = {"name": name, "eps": [8.0], "steps": [2], "suite": "protocol", "n_panels": 1,
           "batch_size": 8, "train_missing": True, "datasets": [entry], "train": train,
           "train_resources": {"workers_per_trial": 1, "cpus_per_worker": 0.5,
                               "trial_cpus": 0.25},
           "actors": {"count": 2, "cpus": 0.5}} | overrides
    path.write_text(yaml.safe_dump(cfg))
    return path


# --- bad set-ups -----------------------------------------------------------------------------
REFUSE = r"""
import contextlib, io, json, os, sys
from pgray.benchmark import main
from pgray.errors import run_cli
out = {}
for name, (argv, env) in json.loads(sys.argv[1]).items():
    saved = dict(os.environ)
    for key, value in env.items():
        os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = run_cli(main, argv)
    os.environ.clear(); os.environ.update(saved)
    out[name] = [code, [ln for ln in err.getvalue().splitlines() if ln.startswith("error:")]]
print("RESULT" + json.dumps(out))
"""


def test_bad_setups_are_refused_before_anything_is_submitted(deployment, tmp_path):
    """Each in one line, before any training, fit or MLflow run starts: a local storage on
    several nodes, a dataset root the nodes lack, an S3 storage without credentials, an MLflow
    server that does not answer, a config the model cannot be built from."""
    import shutil

    d = deployment
    local_copy = tmp_path / "data"  # on the driver's disk only
    shutil.copytree(d.data, local_copy)
    good = benchmark_yaml(tmp_path / "good.yaml", "refused", d.data, tmp_path / "ckpt",
                          epochs=1)
    missing = benchmark_yaml(tmp_path / "missing.yaml", "refused", local_copy,
                             tmp_path / "ckpt", epochs=1)
    bad_layer = benchmark_yaml(tmp_path / "layer.yaml", "refused", d.data, tmp_path / "ckpt",
                               epochs=1)
    cfg = yaml.safe_load(bad_layer.read_text())
    cfg["train"]["loss"] = {"attention_layers": [7], "attention_weights": [0.1]}
    bad_layer.write_text(yaml.safe_dump(cfg))
    s3 = "s3://pgray-runs/refused"
    args = ["--out", str(tmp_path / "out")]
    cases = {
        "local storage": (["--config", str(good), "--storage", str(tmp_path / "store"), *args],
                          {}),
        "dataset missing on the nodes": (["--config", str(missing), "--storage", s3, *args], {}),
        "S3 without credentials": (["--config", str(good), "--storage", s3, *args],
                                   {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}),
        "MLflow not answering": (["--config", str(good), "--storage", s3, *args],
                                 {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_ports(1)[0]}"}),
        "attention layer beyond the depth": (["--config", str(bad_layer), "--storage", s3,
                                              *args], {}),
    }
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", REFUSE, json.dumps(cases)], env=d.env(),
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    found = json.loads(proc.stdout.split("RESULT", 1)[1])
    expect = {
        "local storage": (3, ["not readable", "node 127.0.0.", "every node mounts"]),
        "dataset missing on the nodes": (2, [f"dataset root {local_copy} is missing",
                                             "node 127.0.0."]),
        "S3 without credentials": (3, [f"storage {s3} cannot be written", "AWS_ACCESS_KEY_ID"]),
        "MLflow not answering": (3, ["MLflow tracking server", "unreachable"]),
        "attention layer beyond the depth": (2, ["attention layer 7 is out of range"]),
    }
    for name, (code, words) in expect.items():
        got_code, lines = found[name]
        assert got_code == code and len(lines) == 1, (name, found[name], proc.stderr[-2000:])
        assert all(w in lines[0] for w in words), (name, lines[0])
    print(f"five refusals in {time.monotonic() - started:.0f} s")
    assert not d.s3_files("pgray-runs/refused")  # nothing was trained or stored
    refused = d.mlflow().search_runs(
        [e.experiment_id for e in d.mlflow().search_experiments()],
        filter_string="tags.`pgray.run_key` LIKE '%refused%'")
    assert not refused


# --- the benchmark through faults -------------------------------------------------------------
def test_benchmark_job_survives_lost_nodes_and_outages(deployment, tmp_path):
    """`ray job submit -- python -m pgray.benchmark` (two categories, PatchGuard trained, a
    PaDiM baseline fitted) with S3 storage, while: the node training it is stopped after the
    first checkpoint reached S3 and MLflow is away for 30 s (the training resumes from S3 on
    another node, a node that joins later takes work, no metric is lost); S3 stops once the
    first category's checkpoint is on the driver (the job fails naming the storage); after S3
    is back, `--resume` trains only the missing category while a node running evaluations is
    stopped (its jobs are retried). Every row lands once, evaluated on worker nodes."""
    d = deployment
    d.only_nodes("node1", "node2")
    ckpt, out, storage = tmp_path / "ckpt", tmp_path / "out", "s3://pgray-runs/faults"
    cfg = benchmark_yaml(tmp_path / "bench.yaml", "faults", d.data, ckpt, epochs=8,
                         baseline=True,
                         train_resources={"workers_per_trial": 1, "cpus_per_worker": 0.5,
                                          "trial_cpus": 0.25, "max_concurrent": 1})
    argv = ["pgray.benchmark", "--config", str(cfg), "--out", str(out), "--storage", storage]
    log = tmp_path / "first.log"
    job = d.submit("faults-1", argv, log)
    started = time.monotonic()
    wait_until(lambda: any("/checkpoint_" in p for p in d.s3_files("pgray-runs/faults")),
               "a first checkpoint in S3", 240, job, log)
    lost = d.cluster.nodes_running("ImplicitFunc")  # a one-worker trial trains in its actor
    assert lost, "no node was training"
    d.cluster.stop_node(lost[0])
    d.cluster.stop_service("mlflow")
    d.cluster.start_node("node3", wait=False)  # joins while the job runs
    time.sleep(30)
    d.cluster.start_service("mlflow")
    first = wait_until(lambda: [c for c in CATEGORIES if (ckpt / c / "checkpoint.pt").is_file()],
                       "a first category's checkpoint on the driver", 300, job, log)[0]
    kept = (ckpt / first / "checkpoint.pt").read_bytes()
    d.cluster.stop_service("s3")
    job.wait(timeout=400)
    text = log.read_text()
    assert job.returncode != 0, text[-3000:]
    assert f"storage {storage} does not answer" in text and "--resume" in text, text[-3000:]
    print(f"first run: {time.monotonic() - started:.0f} s, then S3 stopped")

    d.cluster.start_service("s3")
    log = tmp_path / "resumed.log"
    job = d.submit("faults-2", [*argv, "--resume"], log)
    evaluating = wait_until(lambda: d.cluster.nodes_running("PoolWorker"),
                            "an evaluation actor", 300, job, log)
    d.cluster.stop_node(evaluating[0])
    job.wait(timeout=400)
    text = log.read_text()
    assert job.returncode == 0, text[-4000:]
    assert "1 checkpoint(s) trained or fitted" in text  # the finished category was kept
    assert (ckpt / first / "checkpoint.pt").read_bytes() == kept
    print(f"whole test: {time.monotonic() - started:.0f} s")
    _check_rows(d, out)
    _check_training_runs(d, "faults", lost_node=lost[0], epochs=8)
    _check_results_in_mlflow(d, "benchmark:faults", ["results.parquet", "results.md",
                                                      "auroc_vs_eps.png"])


def _check_rows(d: Deployment, out: Path) -> None:
    from pgray.tracking.tables import read_rows

    rows = read_rows(out)
    # clean and the protocol suite per category and detector: 2 x 2 x 2 jobs
    assert len({r["job_key"] for r in rows}) == 8
    assert len({r["row_key"] for r in rows}) == len(rows)  # nothing counted twice
    assert {(r["category"], r["detector"]) for r in rows} == {
        (c, det) for c in CATEGORIES for det in ("patchguard", "padim")}
    head = next(n["node_id"] for n in d.cluster.state_api("nodes")
                if n["node_ip"] not in {x["ip"] for x in d.cluster.state["nodes"].values()})
    assert head not in {r["node"] for r in rows}  # every evaluation ran on a worker node


def _check_training_runs(d: Deployment, name: str, lost_node: str, epochs: int) -> None:
    """Each category's completed training has one MLflow run with every epoch's metrics
    exactly once, and one of them resumed from a checkpoint after its node was lost."""
    client = d.mlflow()
    experiments = [e.experiment_id for e in client.search_experiments()]
    trials = client.search_runs(experiments, filter_string=(
        f"tags.`pgray.kind` = 'trial' and tags.`pgray.sweep` = '{name}-train'"))
    # a trial that S3's outage ended before its first epoch stays in MLflow as an error
    seen = [(t.data.tags.get("category"), t.data.tags.get("pgray.trial_id"),
             t.data.tags.get("pgray.trial_state"), t.data.tags.get("pgray.epochs_done"),
             t.info.status, len(client.get_metric_history(t.info.run_id, "loss")))
            for t in trials]
    assert {t.data.tags["pgray.trial_state"] for t in trials} <= {"completed", "error"}, seen
    trials = [t for t in trials if t.data.tags["pgray.trial_state"] == "completed"]
    assert sorted(t.data.tags["category"] for t in trials) == sorted(CATEGORIES)
    resumed = 0.0
    for trial in trials:
        losses = client.get_metric_history(trial.info.run_id, "loss")
        assert sorted(m.step for m in losses) == list(range(epochs)), trial.data.tags
        assert trial.data.tags["pgray.epochs_done"] == str(epochs), trial.data.tags
        history = client.get_metric_history(trial.info.run_id, "resumed_from_epoch")
        resumed = max([resumed, *[m.value for m in history]])
    assert resumed > 0, f"no training resumed from a checkpoint after {lost_node} was lost"


def _check_results_in_mlflow(d: Deployment, run_key: str, names: list[str]) -> None:
    client = d.mlflow()
    experiments = [e.experiment_id for e in client.search_experiments()]
    run = client.search_runs(experiments, filter_string=f"tags.`pgray.run_key` = '{run_key}'")[0]
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert set(names) <= logged, logged


# --- the sweep ------------------------------------------------------------------------------
def test_sweep_job_runs_to_the_end_on_s3(deployment, tmp_path):
    """`ray job submit -- python -m pgray.sweep` with the dataset and the storage in S3: each
    node stages the dataset once into its own cache, two trials run at once with ASHA on a
    proxy measured every second epoch, the best trial is evaluated on a worker node from its
    S3 checkpoint, and the results reach MLflow's artifact store. With --register its pick is
    the champion of deploysweep-weave (artifacts in S3 through the server), its Optuna study
    is in PostgreSQL where optuna reads it, and `pgray.evaluate --checkpoint
    models:/deploysweep-weave@champion`, submitted with no other flag, reproduces the
    registered worst case within its interval."""
    from pyarrow import fs

    d = deployment
    optuna_url = _optuna_database(d)
    d.only_nodes("node1", "node2")
    files = [p for p in d.data.rglob("*") if p.is_file()]
    fs.copy_files(str(d.data), "pgray-runs/datasets/synthetic", destination_filesystem=d.s3())
    space = {
        "name": "deploysweep",
        "fixed": TINY | {"train": TINY["train"] | {"proxy_every": 2}},
        "datasets": [{"dataset": "synthetic", "root": "s3://pgray-runs/datasets/synthetic",
                      "categories": ["weave"]}],
        "search": {"loss.attention_lambda": {"type": "loguniform", "low": 0.01, "high": 10.0}},
        "objectives": [{"metric": "proxy_score", "mode": "max"}],
        "budget": {"trials": 2, "epochs": 4},
        "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 2},
        "resources": {"workers_per_trial": 1, "cpus_per_worker": 0.5, "max_concurrent": 2,
                      "optuna_storage": optuna_url},
        "final_eval": {"eps": [8.0], "steps": 2, "suite": "protocol", "batch_size": 8,
                       "n_panels": 1, "cpus_per_actor": 0.5},
    }
    config = tmp_path / "space.yaml"
    config.write_text(yaml.safe_dump(space))
    out, log = tmp_path / "out", tmp_path / "sweep.log"
    started = time.monotonic()
    job = d.submit("sweep-1", ["pgray.sweep", "--config", str(config), "--out", str(out),
                               "--storage", "s3://pgray-runs/sweep", "--register",
                               "deploysweep"], log)
    job.wait(timeout=600)
    text = log.read_text()
    assert job.returncode == 0, text[-4000:]
    print(f"sweep job: {time.monotonic() - started:.0f} s")
    assert "sweep finished in" in text and "Tune experiment: s3://pgray-runs/sweep" in text
    # pgray's own line per finished trial, with the objective it was searched on
    ended = [ln for ln in text.splitlines() if re.match(r"trial [12]/2 ", ln)]
    assert len(ended) == 2 and all("proxy_score" in ln for ln in ended), text[-3000:]
    _check_proxy_epochs(d, out)
    staged = [p for n in d.cluster.state["nodes"] for p in
              (d.cluster.dir / "nodes" / n / "home" / ".cache" / "pgray" / "datasets").glob("*")
              if p.is_dir()]
    assert staged, "no node staged the S3 dataset into its own cache"
    for copy in staged:  # whole copies, nothing half-written
        assert sorted(p.relative_to(copy) for p in copy.rglob("*") if p.is_file()) == sorted(
            p.relative_to(d.data) for p in files)
    _check_package(d)
    _check_results_in_mlflow(d, "sweep:deploysweep", ["results.md", "trials.md",
                                                       "sweep_summary.json"])
    _check_results_in_mlflow(d, "benchmark:deploysweep-final", ["results.parquet",
                                                                 "results.md"])
    _check_model_and_study(d, text, optuna_url, tmp_path)


def _optuna_database(d: Deployment) -> str:
    """A database of its own for Optuna on the deployment's PostgreSQL (MLflow's and
    Optuna's tables would share `alembic_version`)."""
    import psycopg2

    url = d.cluster.backend_store_uri()
    pg, port = d.cluster.state["postgres"], d.cluster.state["ports"]["postgres"]
    conn = psycopg2.connect(host="127.0.0.1", port=port, user=pg["user"],
                            password=pg["password"], dbname=pg["db"])
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = 'optuna'")
        if cur.fetchone() is None:
            cur.execute("CREATE DATABASE optuna")
    conn.close()
    return url.rsplit("/", 1)[0] + "/optuna"


def _check_model_and_study(d: Deployment, text: str, optuna_url: str, tmp_path: Path) -> None:
    import optuna

    assert "registered: deploysweep-weave version 1 (" in text, text[-3000:]
    client = d.mlflow()
    champion = client.get_model_version_by_alias("deploysweep-weave", "champion")
    model_id = champion.tags["pgray.model_id"]
    files = {a.path for a in client.list_logged_model_artifacts(model_id)}
    assert {"checkpoint.pt", "pgray_model.json", "cards"} <= files
    study = optuna.load_study(study_name="deploysweep:synthetic/weave", storage=optuna_url)
    assert len(study.trials) == 2 and all(t.state.name == "COMPLETE" for t in study.trials)

    again, log = tmp_path / "again", tmp_path / "evaluate.log"
    job = d.submit("evaluate-1", ["pgray.evaluate", "--checkpoint",
                                  "models:/deploysweep-weave@champion", "--out", str(again),
                                  "--quiet"], log)
    job.wait(timeout=300)
    said = log.read_text()
    assert job.returncode == 0, said[-3000:]
    assert "inside the recorded interval" in said, said[-3000:]
    metrics = json.loads((again / "metrics.json").read_text())
    assert metrics["model_id"] == model_id


def _check_proxy_epochs(d: Deployment, out: Path) -> None:
    """Every Tune result (in S3) carries the objective, NaN between proxy epochs; the proxy
    runs at the first epoch, every second one and the last; a trial's objective is its last
    proxy."""
    summary = json.loads((out / "sweep_summary.json").read_text())
    assert len(summary["trials"]) == 2
    s3 = d.s3()
    for trial in summary["trials"]:
        path = next(p for p in d.s3_files("pgray-runs/sweep/deploysweep")
                    if trial["trial_id"] in p and p.endswith("/result.json"))
        with s3.open_input_stream(path) as f:
            results = [json.loads(ln) for ln in f.readall().decode().splitlines()]
        assert [int(r["epoch"]) for r in results] == list(range(1, trial["epochs"] + 1))
        measured = [int(r["epoch"]) for r in results if math.isfinite(r["proxy_score"])]
        assert measured == [e for e in (1, 2, 4) if e <= trial["epochs"]], results
        assert trial["metrics"]["proxy_score"] == results[-1]["proxy_score"]


def _check_package(d: Deployment) -> None:
    """The uploaded working dir holds the code and none of what .rayignore leaves out."""
    run_dir = Path(d.cluster.state["run_dir"])
    packages = [p for p in run_dir.glob("ray/session_*/runtime_resources/working_dir_files/*")
                if p.is_dir()]
    assert packages
    for pkg in packages:
        assert (pkg / "pgray" / "sweep.py").is_file() and (pkg / "search_spaces").is_dir()
        for excluded in (".venv", ".git", "runs", "mlruns", ".pytest_cache"):
            assert not (pkg / excluded).exists(), excluded


STAGE = r"""
import json, sys
from pgray.config import DataConfig
from pgray.data.dataset import resolve_root
print("ROOT" + str(resolve_root(DataConfig(dataset="synthetic", root=sys.argv[1]))))
"""


def test_an_s3_dataset_is_staged_once_by_processes_starting_together(deployment, tmp_path):
    """Four processes of one machine ask for the same s3:// dataset at once: one complete copy
    in the cache; a file changed in the bucket makes the next use stage it again (the old copy
    goes)."""
    from pyarrow import fs

    d = deployment
    uri = "s3://pgray-runs/datasets/staged"
    fs.copy_files(str(d.data / "weave"), uri.removeprefix("s3://") + "/weave",
                  destination_filesystem=d.s3())
    env = d.env(PGRAY_CACHE=str(tmp_path / "cache"))
    procs = [subprocess.Popen([sys.executable, "-c", STAGE, uri], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(4)]
    roots = {p.communicate(timeout=120)[0].split("ROOT", 1)[1].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(roots) == 1
    copies = sorted((tmp_path / "cache" / "datasets").glob("*-*"))
    assert [str(c) for c in copies] == list(roots)
    expected = sorted(p.relative_to(d.data) for p in (d.data / "weave").rglob("*")
                      if p.is_file())
    assert sorted(p.relative_to(copies[0]) for p in copies[0].rglob("*")
                  if p.is_file()) == expected
    with d.s3().open_output_stream("pgray-runs/datasets/staged/weave/train/good/000.png") as f:
        f.write((d.data / "weave" / "train" / "good" / "001.png").read_bytes())
    again = subprocess.run([sys.executable, "-c", STAGE, uri], env=env, text=True,
                           capture_output=True, timeout=120)
    fresh = Path(again.stdout.split("ROOT", 1)[1].strip())
    assert fresh != copies[0] and not copies[0].exists()
    assert (fresh / "weave" / "train" / "good" / "000.png").read_bytes() == (
        d.data / "weave" / "train" / "good" / "001.png").read_bytes()
