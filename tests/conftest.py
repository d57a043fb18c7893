"""Shared fixtures: one local Ray per session, MLflow stores in tmp folders, tiny datasets."""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _test_ray_token() -> None:
    """Every Ray the tests start (ray.init, cluster_utils, `ray start` subprocesses, which
    inherit this environment) runs with token authentication, on a token of this session."""
    folder = Path(tempfile.mkdtemp(prefix="pgray-ray-token-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # one per session, not left
    token = folder / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
    os.environ.pop("RAY_AUTH_TOKEN", None)


_test_ray_token()


def _private_ray_tmpdir() -> None:
    """Every Ray the tests start keeps its sockets, logs and `ray_current_cluster` in a folder
    of this session: a bare ray.init() otherwise joins whatever cluster another process on
    the machine last started under /tmp/ray (seen: a test joined another session's cluster).
    Short, because Ray's socket paths are length-limited."""
    folder = tempfile.mkdtemp(prefix="pgt", dir="/tmp")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ.setdefault("RAY_TMPDIR", folder)


_private_ray_tmpdir()
os.environ.setdefault("TQDM_DISABLE", "1")
# One intra-op thread per process: the suite runs a driver beside Ray workers on 2 cores, and
# OpenMP threads spinning against each other made steps an order of magnitude slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def _session_mlflow_store(tmp_path_factory):
    """A safety net: nothing in the tests writes mlflow.db into the working directory."""
    path = tmp_path_factory.mktemp("mlflow-session") / "mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{path}"
    os.environ["PGRAY_CACHE"] = str(tmp_path_factory.mktemp("pgray-cache"))
    yield


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def start_local_ray():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024**2,
                 log_to_driver=False)
    return ray


@pytest.fixture(scope="session")
def _ray_shutdown_at_end():
    yield
    import ray

    ray.shutdown()


@pytest.fixture
def ray_session(_ray_shutdown_at_end):
    """One local Ray for the session (each init costs seconds and hundreds of MB); started
    again if a multi-node test replaced it with a cluster of its own."""
    return start_local_ray()


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A tiny generated MVTec-layout dataset: one object and one texture category, 32 px."""
    from pgray.data.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic")
    return generate(root, seed=0, size=32, n_train=12, n_test=8, categories=("disc", "weave"))
