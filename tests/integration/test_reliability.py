"""Faults: unreachable MLflow, concurrent writers, unwritable output, full disks."""

from __future__ import annotations

import multiprocessing as mp
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import warnings
from pathlib import Path

import pytest
from helpers import tiny_experiment

from pgray.errors import ClusterError, PgrayError
from pgray.io import OutputError, check_name, write_json
from pgray.tracking.tables import append_rows, read_rows


def _append_many(folder: str, writer: int, n: int) -> None:
    for i in range(n):
        append_rows(Path(folder), [{"job_key": f"w{writer}-{i}", "writer": writer, "i": i,
                                    "image_auroc": 0.5 + i / 1000}])


def test_two_writers_into_one_results_folder_lose_nothing(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), w, 25)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    rows = read_rows(tmp_path)
    assert sorted(r["job_key"] for r in rows) == sorted(
        f"w{w}-{i}" for w in range(2) for i in range(25))
    assert not list(tmp_path.glob(".*.tmp"))


def test_unreachable_mlflow_server_fails_before_any_work(synthetic_root, tmp_path, capsys):
    from pgray.errors import run_cli
    from pgray.train import main

    out = tmp_path / "never"
    code = run_cli(main, ["--dataset", "synthetic", "--root", str(synthetic_root), "--category",
                          "disc", "--tiny", "--epochs", "1", "--out", str(out),
                          "--mlflow-uri", "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == ClusterError.exit_code
    assert "http://127.0.0.1:9" in err and "unreachable" in err
    assert "Traceback" not in err
    assert not (out / "checkpoint.pt").exists()


def test_mlflow_lost_mid_run_warns_and_results_still_land(synthetic_root, tmp_path,
                                                          monkeypatch):
    """The tracking store breaks after the run is opened: training finishes, the checkpoint and
    metrics file are written, and a warning names what MLflow did not get."""
    import pgray.tracking.mlflow_runs as tracking
    from pgray.pipelines.train import TrainRequest, train_category

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    real_open = tracking.open_run

    def open_then_lose_store(*args, **kwargs):
        tracker = real_open(*args, **kwargs)
        tracker.client._tracking_client.store.engine.dispose()
        (tmp_path / "mlflow.db").unlink()
        (tmp_path / "mlflow.db").mkdir()  # the path now cannot be opened as a database
        return tracker

    monkeypatch.setattr(tracking, "open_run", open_then_lose_store)
    monkeypatch.setattr(tracking, "BASE_DELAY_S", 0.01)
    monkeypatch.setattr(tracking, "PATIENCE_S", 0.05)
    cfg = tiny_experiment(synthetic_root, train={"epochs": 1})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train_category(TrainRequest(config=cfg, out=tmp_path / "run", name="lost",
                                             progress=False))
    assert result.checkpoint.is_file() and result.metrics_file.is_file()
    messages = [str(w.message) for w in caught if "MLflow" in str(w.message)]
    assert any("metrics" in m and "not logged" in m for m in messages), messages


def test_output_under_a_file_is_a_clear_error_and_leaves_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match=str(blocker)):
        write_json(blocker / "sub" / "metrics.json", {"a": 1})


def test_full_disk_leaves_no_half_written_file(tmp_path):
    """RLIMIT_FSIZE makes writes past a size fail as a full disk would (EFBIG)."""
    target = tmp_path / "metrics.json"
    write_json(target, {"old": True})
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        from pgray.io import write_json, OutputError
        try:
            write_json({str(target)!r}, {{"rows": ["x" * 100] * 1000}})
        except OutputError as err:
            print("OUTPUT ERROR:", err)
            sys.exit(2)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "could not write" in proc.stdout and str(target) in proc.stdout
    assert target.read_text().strip() == '{\n  "old": true\n}'  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left


@pytest.mark.parametrize("name", ["../escape", "/abs", "a/b", ".hidden", "", "x" * 201,
                                  "semi;colon"])
def test_run_names_cannot_escape_the_output_folder(name):
    with pytest.raises(PgrayError, match="invalid"):
        check_name(name)


def _ray_client(gcs: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """A separate process that joins the Ray at `gcs` and runs one task."""
    script = textwrap.dedent(f"""
        import ray
        ray.init(address={gcs!r}, log_to_driver=False)
        print("RAN", ray.get(ray.remote(lambda: 42).remote(), timeout=60))
    """)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=env)


def test_embedded_ray_requires_its_token_and_serves_the_dashboard_on_loopback(tmp_path):
    """The embedded default (pgray's own local Ray, nothing set by the user) keeps Ray's token
    authentication on: a process without the token, or with a wrong one, cannot join it and
    run code; one with the token can. Its dashboard listens on 127.0.0.1 only. Run in
    subprocesses with their own HOME, so the session's Ray and ~/.ray are untouched."""
    import os

    home, stranger = tmp_path / "home", tmp_path / "stranger"
    home.mkdir()
    stranger.mkdir()
    # Ray's temp folder names a cluster nobody runs (another program's `ray start`, gone):
    # the embedded default starts its own rather than joining it.
    ray_tmp = Path(tempfile.mkdtemp(prefix="pgl", dir="/tmp"))  # short: socket paths
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:9\n")
    base = {k: v for k, v in os.environ.items()
            if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    head_script = textwrap.dedent("""
        import sys, ray
        from pgray.distributed.cluster import connect
        print(connect())
        print("GCS=" + ray.get_runtime_context().gcs_address)
        print("WEBUI=" + repr(ray._private.worker.global_worker.node.address_info.get("webui_url")))
        sys.stdout.flush()
        sys.stdin.read()  # keep the cluster up until the test closes stdin
        ray.shutdown()
    """)
    head = subprocess.Popen([sys.executable, "-c", head_script], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=base | {"HOME": str(home), "RAY_TMPDIR": str(ray_tmp)})
    try:
        lines = _first_lines(head, 3, within_s=300)  # a head that joined nothing hangs
        assert "local Ray (in-process" in lines[0], lines
        gcs = lines[1].strip().removeprefix("GCS=")
        assert lines[2].startswith("WEBUI='127.0.0.1:"), lines
        token = home / ".ray" / "auth_token"
        assert token.is_file() and token.stat().st_mode & 0o077 == 0  # written, owner-only
        quick = {"RAY_gcs_server_port_wait_time_s": "2"}  # give up joining after ~2 s
        for name, env in {
            "no token": base | quick | {"HOME": str(stranger), "RAY_AUTH_MODE": "disabled"},
            "wrong token": base | quick | {"HOME": str(stranger), "RAY_AUTH_MODE": "token",
                                           "RAY_AUTH_TOKEN": "0" * 64},
        }.items():
            refused = _ray_client(gcs, env)
            assert refused.returncode != 0 and "RAN" not in refused.stdout, name
        allowed = _ray_client(gcs, base | {"HOME": str(home), "RAY_AUTH_MODE": "token"})
        assert "RAN 42" in allowed.stdout, allowed.stderr[-2000:]
    finally:
        try:
            head.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _first_lines(proc: subprocess.Popen, n: int, within_s: float) -> list[str]:
    """The first `n` lines `proc` prints, or a failure naming what came when they do not
    come within `within_s` (a generous bound: it only turns a hang into a failure)."""
    lines: list[str] = []

    def read() -> None:
        for _ in range(n):
            lines.append(proc.stdout.readline())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(within_s)
    assert len(lines) == n, f"only {lines} within {within_s} s"
    return lines


def test_mlflow_lost_mid_benchmark_rows_still_reach_parquet(synthetic_root, tmp_path,
                                                            monkeypatch):
    """The store breaks after the benchmark's parent run is opened: every job's row still
    lands in results.parquet, and warnings name the runs MLflow did not get."""
    import pgray.tracking.mlflow_runs as tracking
    from pgray.config.base import from_dict
    from pgray.config.benchmark import BenchmarkConfig
    from pgray.pipelines.benchmark import run_benchmark
    from pgray.pipelines.train import TrainRequest, train_category
    from pgray.tracking.tables import read_rows

    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    cfg = tiny_experiment(synthetic_root, train={"epochs": 1})
    train_category(TrainRequest(config=cfg, out=tmp_path / "ckpt" / "disc", name="lost-bench",
                                progress=False))
    real_open = tracking.open_run
    calls = {"n": 0}

    def open_then_lose_store(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:  # the parent opened fine; the store is gone from then on
            raise ConnectionError("tracking store went away")
        return real_open(*args, **kwargs)

    monkeypatch.setattr(tracking, "open_run", open_then_lose_store)
    monkeypatch.setattr(tracking, "BASE_DELAY_S", 0.01)
    monkeypatch.setattr(tracking, "PATIENCE_S", 0.05)
    bench = from_dict(BenchmarkConfig, {
        "name": "lost", "eps": [8.0], "steps": [2], "n_panels": 0, "suite": "protocol",
        "datasets": [{"dataset": "synthetic", "root": str(synthetic_root), "categories": ["disc"],
                      "checkpoint": str(tmp_path / "ckpt" / "{category}" / "checkpoint.pt")}]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_benchmark(bench, tmp_path / "out", progress=False, sequential=True)
    # two jobs (clean, the protocol suite): three rows (clean, protocol, worst_case)
    assert result.ran == 2 and len(read_rows(tmp_path / "out")) == 3
    lost = [str(w.message) for w in caught if "was not logged" in str(w.message)]
    assert len([m for m in lost if "bench-job:" in m]) == 2, lost


@pytest.mark.slow
def test_four_trainings_started_together_on_a_new_store_all_succeed(synthetic_root, tmp_path):
    """Several pgray processes opening one fresh SQLite store at the same moment: MLflow's
    table creation used to collide ("table experiments already exists") and kill all but one."""
    import os

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = os.environ | {"MLFLOW_TRACKING_URI": uri}
    argv = ["--tiny", "--dataset", "synthetic", "--root", str(synthetic_root), "--category",
            "disc", "--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size", "2",
            "--steps-train", "1", "--quiet"]
    procs = [subprocess.Popen([sys.executable, "-m", "pgray.train", *argv, "--out",
                               str(tmp_path / f"run{i}"), "--name", f"together-{i}"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(4)]
    results = [(p, *p.communicate(timeout=300)) for p in procs]
    for proc, _out, err in results:
        assert proc.returncode == 0, err[-3000:]
    runs = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("pgray").experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"together-{i}" for i in range(4)]


def _ensure_after_barrier(uri, barrier, errors):
    from pgray.tracking.mlflow_store import ensure_experiment

    barrier.wait()
    try:
        ensure_experiment(uri)
    except Exception as err:  # noqa: BLE001 - reported to the parent
        errors.put(f"{type(err).__name__}: {err}")


@pytest.mark.parametrize("store", ["new", "untagged experiment"])
def test_processes_opening_the_experiment_together_all_succeed(tmp_path, store):
    """The experiment-kind tag was written by every process on every open; processes starting
    together collided on the tag table's unique key (UNIQUE constraint failed) and died."""
    import multiprocessing as mp

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    if store == "untagged experiment":
        MlflowClient(uri).create_experiment("pgray")  # as an older pgray or a user made it
    ctx = mp.get_context("fork")
    barrier, errors = ctx.Barrier(6), ctx.Queue()
    procs = [ctx.Process(target=_ensure_after_barrier, args=(uri, barrier, errors))
             for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 6
    assert errors.empty(), errors.get()
    exp = MlflowClient(uri).get_experiment_by_name("pgray")
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    assert len(MlflowClient(uri).search_experiments()) == 2  # Default and pgray, no twin


def test_reopening_a_tagged_experiment_writes_nothing(tmp_path):
    """Opening the experiment is a read once it exists with its tag, so it goes through while
    another process holds the store's write lock (a write here would wait and fail)."""
    import sqlite3

    from pgray.tracking.mlflow_store import ensure_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp_id = ensure_experiment(uri)
    writer = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # the write lock, as a training logging metrics holds it
    try:
        assert ensure_experiment(uri) == exp_id
    finally:
        writer.execute("ROLLBACK")
        writer.close()
