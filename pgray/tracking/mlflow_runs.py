"""MLflow: one place that opens runs, logs params/metrics/artifacts, and retries with back-off.

Runs are found again by a deterministic key (tag `pgray.run_key`), so a resumed training, sweep
or benchmark continues its MLflow run instead of starting a second one.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from pgray.errors import ClusterError

T = TypeVar("T")
RUN_KEY_TAG = "pgray.run_key"
DEFAULT_EXPERIMENT = "pgray"


def resolve_tracking_uri(cli_value: str | None = None) -> str:
    """--mlflow-uri, then MLFLOW_TRACKING_URI, then an SQLite file in the working directory."""
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


BASE_DELAY_S = 0.5  # first back-off; doubles with each attempt (0.5 + 1 + 2 s over 4 tries)


def retry(fn: Callable[[], T], what: str, attempts: int = 4) -> T | None:
    """Call fn with exponential back-off; on final failure warn, naming what was not logged."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - any tracking failure must not kill training
            if attempt == attempts - 1:
                warnings.warn(f"MLflow: {what} was not logged ({type(err).__name__}: {err})",
                              stacklevel=2)
                return None
            time.sleep(BASE_DELAY_S * 2**attempt)
    return None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= flatten(v, f"{key}.")
        else:
            out[key] = str(v)[:6000]
    return out


_PREPARED: set[str] = set()


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock beside an SQLite store's file (nothing for other stores)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    db = Path(uri.removeprefix("sqlite:///"))
    with open(db.with_name(db.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_store(uri: str) -> None:
    """Open the store once per process under the store lock. MLflow creates a new SQLite
    store's tables when it first opens it, and two processes doing that at the same moment
    collide ("table experiments already exists"); whoever comes second now finds the tables.
    MLflow caches the opened store per URI, so later clients skip the creation."""
    if uri in _PREPARED:
        return
    from mlflow.tracking import MlflowClient

    with _store_lock(uri):
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    _PREPARED.add(uri)


def client_for(uri: str):
    """An MlflowClient of a store that is ready (every client of pgray comes from here)."""
    from mlflow.tracking import MlflowClient

    prepare_store(uri)
    return MlflowClient(tracking_uri=uri)


class Tracker:
    """A thin, retrying view of one MLflow run."""

    def __init__(self, uri: str, run_id: str, experiment_id: str | None = None):
        self.uri = uri
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.client = client_for(uri)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = flatten(params)
        existing = self._existing_params()
        items = [Param(k, v) for k, v in flat.items() if k not in existing]
        for i in range(0, len(items), 90):
            chunk = items[i : i + 90]
            retry(lambda c=chunk: self.client.log_batch(self.run_id, params=c), "params")

    def _existing_params(self) -> dict[str, str]:
        run = retry(lambda: self.client.get_run(self.run_id), "params lookup")
        return dict(run.data.params) if run else {}

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if isinstance(v, int | float) and v == v  # drop NaN: undefined metrics
        ]
        retry(lambda: self.client.log_batch(self.run_id, metrics=items),
              f"metrics {sorted(metrics)} at step {step}")

    def last_step(self, key: str) -> int:
        history = retry(lambda: self.client.get_metric_history(self.run_id, key), "history")
        return max((m.step for m in history or []), default=-1)

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            retry(lambda k=k, v=v: self.client.set_tag(self.run_id, k, str(v)), f"tag {k}")

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        retry(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path),
              f"artifact {Path(path).name}")

    def finish(self, status: str = "FINISHED") -> None:
        retry(lambda: self.client.set_terminated(self.run_id, status), "run status")


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
    with _store_lock(uri):
        exp = client.get_experiment_by_name(name)
        if exp is None:
            return client.create_experiment(name, artifact_location=artifact_location(uri),
                                            tags={KIND_TAG: KIND})
        if exp.tags.get(KIND_TAG) != KIND:
            retry(lambda: client.set_experiment_tag(exp.experiment_id, KIND_TAG, KIND),
                  "experiment kind tag")
        return exp.experiment_id


def open_run(
    uri: str,
    run_key: str,
    *,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, Any] | None = None,
) -> Tracker:
    """The run tagged with `run_key`, created on first use and reopened afterwards (found and
    created under the store lock, so two processes never make two runs of one key)."""
    client = client_for(uri)
    exp_id = ensure_experiment(uri, experiment)
    safe_key = run_key.replace("'", "")
    with _store_lock(uri):
        found = client.search_runs([exp_id], max_results=1,
                                   filter_string=f"tags.`{RUN_KEY_TAG}` = '{safe_key}'")
        if found:
            run_id = found[0].info.run_id
            if found[0].info.status != "RUNNING":
                client.update_run(run_id, status="RUNNING")
        else:
            all_tags = {RUN_KEY_TAG: safe_key} | {k: str(v) for k, v in (tags or {}).items()}
            if parent_run_id:
                all_tags["mlflow.parentRunId"] = parent_run_id
            run_id = client.create_run(exp_id, run_name=run_name or safe_key,
                                       tags=all_tags).info.run_id
    return Tracker(uri, run_id, exp_id)


class NullTracker:
    """Stands in for a run that could not be opened: logging calls do nothing."""

    def __init__(self, uri: str):
        self.uri, self.run_id, self.experiment_id = uri, "", None

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def set_tags(self, tags: dict[str, Any]) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def last_step(self, key: str) -> int:
        return -1

    def finish(self, status: str = "FINISHED") -> None:
        pass


def open_run_or_warn(uri: str, run_key: str, **kwargs) -> Tracker | NullTracker:
    """open_run for runs opened mid-work (a trial, a benchmark job): if the store has gone
    away, warn naming the run and carry on; the results still reach the result files."""
    for attempt in range(3):
        try:
            return open_run(uri, run_key, **kwargs)
        except Exception as err:  # noqa: BLE001 - the store may fail in many ways
            if attempt == 2:
                warnings.warn(f"MLflow: run {run_key} was not logged ({type(err).__name__}:"
                              f" {err})", stacklevel=2)
            else:
                time.sleep(BASE_DELAY_S * 2**attempt)
    return NullTracker(uri)


def runs_url(uri: str, experiment_id: str) -> str:
    """Where to look: the 'Training runs' table, not the GenAI overview the UI opens first."""
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs"
    return (
        f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000, then open "
        f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs"
    )


def ui_base(uri: str) -> str:
    """Where the MLflow UI answers: the tracking server itself, or `mlflow ui` started on
    127.0.0.1:5000 for a local store (runs_url says how)."""
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    return "http://127.0.0.1:5000"


def compare_url(uri: str, experiment_id: str, run_ids: list[str]) -> str:
    """The MLflow UI's compare view of these runs (parameters, metrics, curves side by side)."""
    import json
    from urllib.parse import quote

    def listed(items) -> str:  # as the UI writes it: JSON.stringify, no spaces
        return quote(json.dumps([str(i) for i in items], separators=(",", ":")))

    runs, experiments = listed(run_ids), listed([experiment_id])
    return f"{ui_base(uri)}/#/compare-runs?runs={runs}&experiments={experiments}"


def find_runs(uri: str, experiment_id: str, tags: dict[str, str]) -> list[str]:
    """Ids of the runs carrying all these tags."""
    where = " and ".join(f"tags.`{k}` = '{str(v).replace(chr(39), '')}'" for k, v in tags.items())
    runs = retry(lambda: client_for(uri).search_runs([experiment_id], filter_string=where,
                                                     max_results=1000), "run search") or []
    return [r.info.run_id for r in runs]


def log_history(tracker: Tracker, history: Iterable[tuple[int, dict[str, float]]],
                key: str = "loss") -> int:
    """Log the epochs of `history` that MLflow has not seen yet; returns how many were logged.

    Called with the full per-epoch history held in the checkpoint, it makes a resumed run's
    metric series continue exactly once, whatever the point of failure.
    """
    seen = tracker.last_step(key)
    n = 0
    for step, metrics in history:
        if step > seen:
            tracker.log_metrics(metrics, step)
            n += 1
    return n
