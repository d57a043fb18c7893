"""`ray job submit -- python -m pgray.sweep` against a real `ray start --head` on this machine.

The sweep is small but whole: two trials at once, ASHA on a proxy measured every second epoch
(Tune must accept the epochs between proxies; every stopping decision sees a measured proxy),
and Tune's trial table leading with the objective.

The head runs in a private temp dir on free ports, so only what this test started is stopped
(by the temp dir in the processes' command lines; `ray stop` would end every Ray of the user).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml
from helpers import kill_processes_mentioning

from pgray.config import tiny_model_config
from pgray.config.base import to_dict

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


def _free_ports(n: int) -> list[int]:
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _job_space(root: Path) -> dict:
    return {
        "name": "jobsweep",
        "fixed": {
            "data": {"dataset": "synthetic", "root": str(root), "category": "weave"},
            "model": to_dict(tiny_model_config(img_size=32)),
            "loss": {"attention_layers": [1, 2], "attention_weights": [0.01, 0.05]},
            "train": {"batch_size": 4, "holdout_fraction": 0.25, "proxy_steps": 2,
                      "max_steps_per_epoch": 2, "attack": {"eps": 8.0, "steps": 2},
                      "proxy_every": 2},
        },
        "search": {"loss.attention_lambda": {"type": "loguniform", "low": 0.01, "high": 10.0}},
        "objectives": [{"metric": "proxy_score", "mode": "max"}],
        "budget": {"trials": 2, "epochs": 4},
        "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 2},
        "resources": {"workers_per_trial": 1, "cpus_per_worker": 0.5, "trial_cpus": 0.25,
                      "max_concurrent": 2},
    }


def job_excludes() -> list[str]:
    """The .rayignore patterns, also passed as runtime_env excludes (one source)."""
    lines = (REPO / ".rayignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def test_job_submit_runs_the_sweep_on_a_ray_head(synthetic_root, tmp_path):
    temp = tempfile.mkdtemp(prefix="pgjs", dir="/tmp")  # short: socket paths are limited
    gcs, dash, client, nm, om, agent, agent_grpc, renv, metrics = _free_ports(9)
    api = f"http://127.0.0.1:{dash}"
    # Token auth on: the head and every client take the session's token from the environment.
    env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0", "RAY_API_SERVER_ADDRESS": api}
    env.pop("RAY_ADDRESS", None)
    config, out = tmp_path / "job.yaml", tmp_path / "out"
    config.write_text(yaml.safe_dump(_job_space(synthetic_root)))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # The job runs in a temporary copy of the repo; without an explicit artifact location an
    # SQLite store puts artifacts under the job's working dir (./mlruns), lost with it.
    from mlflow.tracking import MlflowClient

    MlflowClient(uri).create_experiment("pgray", artifact_location=str(tmp_path / "artifacts"))
    try:
        start = subprocess.run(
            [RAY, "start", "--head", f"--port={gcs}", "--num-cpus=2",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
             f"--ray-client-server-port={client}", f"--node-manager-port={nm}",
             f"--object-manager-port={om}", f"--dashboard-agent-listen-port={agent}",
             f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={renv}",
             f"--metrics-export-port={metrics}", f"--temp-dir={temp}",
             "--object-store-memory=100000000", "--disable-usage-stats"],
            env=env, capture_output=True, text=True, timeout=180)
        assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:]
        runtime_env = {"excludes": job_excludes()}
        started = time.monotonic()
        submit = subprocess.run(
            [RAY, "job", "submit", "--address", api, "--submission-id", "pgray-sweep-test",
             "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env), "--",
             sys.executable, "-m", "pgray.sweep", "--config", str(config), "--out", str(out),
             "--mlflow-uri", uri, "--no-final-eval"],
            env=env, capture_output=True, text=True, timeout=420, cwd=tmp_path)
        wall = time.monotonic() - started
        from ray.job_submission import JobStatus, JobSubmissionClient

        jobs = JobSubmissionClient(api)
        status = jobs.get_job_status("pgray-sweep-test")
        assert status == JobStatus.SUCCEEDED, (status, submit.stdout[-4000:],
                                               submit.stderr[-2000:])
        logs = jobs.get_job_logs("pgray-sweep-test")
        assert "sweep finished in" in logs and "MLflow: sweep run" in logs
        # the table's metric columns (fixed by Tune from the first result) lead with the objective
        headers = [ln for ln in logs.splitlines() if "Trial name" in ln and "iter" in ln]
        assert headers and all("proxy_score" in h for h in headers), headers[:3]
        _check_package(Path(temp))
    finally:
        kill_processes_mentioning(temp)
        shutil.rmtree(temp, ignore_errors=True)
    _check_proxy_epochs(out)
    _check_store(uri, out)
    assert wall < 400


def _check_proxy_epochs(out: Path) -> None:
    """Every Tune result carries the objective, NaN between proxy epochs; the proxy runs at
    the first epoch, every second one and the last; a trial's objective is its last proxy."""
    summary = json.loads((out / "sweep_summary.json").read_text())
    assert len(summary["trials"]) == 2
    for trial in summary["trials"]:
        folder = next((out / "ray" / "jobsweep").glob(f"*{trial['trial_id']}*"))
        results = [json.loads(ln) for ln in (folder / "result.json").read_text().splitlines()]
        assert [int(r["epoch"]) for r in results] == list(range(1, trial["epochs"] + 1))
        assert all("proxy_score" in r for r in results)
        measured = [int(r["epoch"]) for r in results if math.isfinite(r["proxy_score"])]
        assert measured == [e for e in (1, 2, 4) if e <= trial["epochs"]], results
        assert trial["metrics"]["proxy_score"] == results[-1]["proxy_score"]


def _check_package(temp: Path) -> None:
    """The uploaded working dir holds the code and none of the excluded folders."""
    packages = [p for p in temp.glob("session_2*/runtime_resources/working_dir_files/*")
                if p.is_dir()]
    assert len(packages) == 1, packages
    pkg = packages[0]
    assert (pkg / "pgray" / "sweep.py").is_file() and (pkg / "search_spaces").is_dir()
    for excluded in (".venv", ".git", "runs", "mlruns", ".pytest_cache"):
        assert not (pkg / excluded).exists(), excluded


def _check_store(uri: str, out: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("pgray")
    runs = client.search_runs([exp.experiment_id], max_results=50)
    sweeps = [r for r in runs if r.data.tags.get("pgray.kind") == "sweep"]
    trials = [r for r in runs if r.data.tags.get("pgray.kind") == "trial"]
    assert len(sweeps) == 1 and sweeps[0].info.status == "FINISHED"
    assert sweeps[0].data.tags["pgray.sweep"] == "jobsweep"
    assert len(trials) == 2
    assert {t.data.tags["mlflow.parentRunId"] for t in trials} == {sweeps[0].info.run_id}
    best = [a.path for a in client.list_artifacts(sweeps[0].info.run_id, "best")]
    assert best == ["best/synthetic-weave.yaml"]
    states = {t.data.tags["pgray.trial_state"] for t in trials}
    assert "completed" in states and states <= {"completed", "stopped_early"}
    for trial in trials:
        # MLflow holds the measured proxies only, never the NaN between them
        history = client.get_metric_history(trial.info.run_id, "proxy_score")
        steps = [0, 1, 3] if trial.data.tags["pgray.trial_state"] == "completed" else [0, 1]
        assert sorted({m.step for m in history}) == steps
        assert all(0.0 <= m.value <= 1.0 for m in history)
    lam = float(trials[0].data.params["loss.attention_lambda"])
    assert 0.01 <= lam <= 10.0
    summary = json.loads((out / "sweep_summary.json").read_text())
    assert sorted(t["state"] for t in summary["trials"]) == sorted(
        t.data.tags["pgray.trial_state"] for t in trials)
    assert Path(summary["best_configs"]["synthetic/weave"][0]).is_file()
