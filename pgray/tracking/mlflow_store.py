"""The MLflow tracking store: which one (URI), whether it can be used, one client per store
that is ready, and the experiment runs go into.

Several processes may open one SQLite store at the same moment: its tables are created, and an
experiment made, by one process at a time (a lock beside the file).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from pgray.errors import ClusterError

DEFAULT_EXPERIMENT = "pgray"


def resolve_tracking_uri(cli_value: str | None = None) -> str:
    """--mlflow-uri, then MLFLOW_TRACKING_URI, then an SQLite file in the working directory."""
    import logging

    # MLflow announces at INFO each time it creates or upgrades a store's tables
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    uri = cli_value or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        uri = f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"
    return uri


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> None:
    """Fail before any work starts when the tracking store cannot be used."""
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as resp:
                if resp.status != 200:
                    raise ClusterError(f"MLflow server {uri} answered /health with {resp.status}")
        except (urllib.error.URLError, OSError) as err:
            raise ClusterError(
                f"MLflow tracking server {uri} is unreachable ({err}); start it or set"
                " --mlflow-uri / MLFLOW_TRACKING_URI"
            ) from None
    elif uri.startswith("sqlite:///"):
        parent = Path(uri.removeprefix("sqlite:///")).parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise ClusterError(f"MLflow store folder {parent} does not exist or is not writable")
    elif "://" in uri and not uri.startswith(("file://", "databricks", "postgresql", "mysql")):
        raise ClusterError(f"unsupported MLflow tracking URI scheme: {uri}")


# MLflow's own retries of one HTTP request (defaults: 7 tries over minutes); pgray's buffer
# and back-off take over, so a request to a server that is down fails fast.
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                  "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


_PREPARED: set[str] = set()


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock beside an SQLite store's file (nothing for other stores)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    from pgray.io import file_lock

    db = Path(uri.removeprefix("sqlite:///"))
    with file_lock(db.with_name(db.name + ".lock")):
        yield


def prepare_store(uri: str) -> None:
    """Open the store once per process under the store lock. MLflow creates a new SQLite
    store's tables when it first opens it, and two processes doing that at the same moment
    collide ("table experiments already exists"); whoever comes second now finds the tables.
    MLflow caches the opened store per URI, so later clients skip the creation."""
    if uri in _PREPARED:
        return
    from mlflow.tracking import MlflowClient

    with store_lock(uri):
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    _PREPARED.add(uri)


def client_for(uri: str, *, existing: bool = False):
    """An MlflowClient of a store that is ready (every client of pgray comes from here).
    `existing`: the store must already be there (a process on another node than the one that
    created it would otherwise start an empty SQLite file of its own)."""
    from mlflow.tracking import MlflowClient

    for key, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if existing and uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not db.is_file():
            import socket

            raise ClusterError(
                f"MLflow store {db} does not exist on {socket.gethostname()}: a node that"
                " cannot see the driver's SQLite file (one that joined later, say) would log"
                " into a file of its own; use an MLflow server (MLFLOW_TRACKING_URI=http://...)")
    prepare_store(uri)
    return MlflowClient(tracking_uri=uri)


def artifact_location(uri: str) -> str | None:
    """Artifacts of an SQLite store live beside the .db file, not in ./mlruns of whatever
    folder the process runs in (under `ray job submit` that is a throwaway copy)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///")).resolve()
        return (db.parent / "mlartifacts").as_uri()
    return None  # a tracking server chooses its own artifact store


# Marks an experiment as model training, so the MLflow UI shows its runs table.
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"


def ensure_experiment(uri: str, name: str = DEFAULT_EXPERIMENT) -> str:
    """The experiment's id, created on first use (by one process at a time).

    The kind tag is written with the experiment, or once under the lock when missing: an
    unguarded tag write from several processes starting together races on the store's
    unique key."""
    client = client_for(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None and exp.tags.get(KIND_TAG) == KIND:
        return exp.experiment_id
    with store_lock(uri):
        exp = client.get_experiment_by_name(name)
        if exp is None:
            return client.create_experiment(name, artifact_location=artifact_location(uri),
                                            tags={KIND_TAG: KIND})
        if exp.tags.get(KIND_TAG) != KIND:
            client.set_experiment_tag(exp.experiment_id, KIND_TAG, KIND)
        return exp.experiment_id
