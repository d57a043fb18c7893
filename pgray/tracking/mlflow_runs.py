"""MLflow: one place that opens runs, logs params/metrics/artifacts, and rides out outages.

Runs are found again by a deterministic key (tag `pgray.run_key`), so a resumed training, sweep
or benchmark continues its MLflow run instead of starting a second one.

A tracking server that goes away for a while costs nothing: what a run logs is buffered and
sent in order once the server answers again (training never waits on it), and opening a run or
closing one waits the outage out for up to PATIENCE_S. Only a server gone for longer loses
data, with a warning naming each item. MLflow's own HTTP retries are kept short, so pgray's
buffer, not a blocked request, absorbs the wait.
"""

from __future__ import annotations

import os
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from pgray.tracking.lineage import log_dataset_input
from pgray.tracking.mlflow_store import (
    DEFAULT_EXPERIMENT,
    client_for,
    ensure_experiment,
    store_lock,
)

T = TypeVar("T")
RUN_KEY_TAG = "pgray.run_key"


BASE_DELAY_S = 0.5  # first back-off; doubles with each attempt, up to MAX_DELAY_S
MAX_DELAY_S = 5.0
# How long an unreachable tracking store is waited for before what waits on it is dropped.
PATIENCE_S = float(os.environ.get("PGRAY_MLFLOW_PATIENCE_S", "120"))
BACKLOG_LIMIT = 10_000  # buffered calls per run; beyond it the oldest are dropped (warned)


class _Outage:
    """Shared by every run of the process: after one wait of PATIENCE_S ended in vain, later
    calls try once instead of waiting again (a store that is gone for good must not stall
    every job of a benchmark); the first success ends the outage."""

    gave_up = False


def _patience() -> float:
    return 0.0 if _Outage.gave_up else PATIENCE_S


def _warn_lost(what: str, err: BaseException) -> None:
    warnings.warn(f"MLflow: {what} was not logged ({type(err).__name__}: {err})", stacklevel=3)


def retry(fn: Callable[[], T], what: str, patience: float | None = None) -> T | None:
    """Call fn, backing off while it fails, for up to `patience` seconds (PATIENCE_S); then
    warn, naming what was not logged, and return None."""
    deadline = time.monotonic() + (_patience() if patience is None else patience)
    attempt = 0
    while True:
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 - any tracking failure must not kill training
            delay = min(MAX_DELAY_S, BASE_DELAY_S * 2**attempt)
            if time.monotonic() + delay > deadline:
                _Outage.gave_up = True
                _warn_lost(what, err)
                return None
            time.sleep(delay)
            attempt += 1
            continue
        _Outage.gave_up = False
        return result


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= flatten(v, f"{key}.")
        else:
            out[key] = str(v)[:6000]
    return out


class Tracker:
    """One MLflow run. Calls are buffered and sent in order: while the store is unreachable
    they wait in the buffer (training goes on), `flush()` sends them once it answers, and
    `finish()` waits an outage out for up to PATIENCE_S before dropping what is left, with a
    warning naming each item."""

    def __init__(self, uri: str, run_id: str, experiment_id: str | None = None, *,
                 existing: bool = False, opens: tuple[str, dict[str, Any]] | None = None):
        self.uri = uri
        self.run_id = run_id  # "" until the run of `opens` is found (open_run_later)
        self.experiment_id = experiment_id
        self._existing = existing
        self._client = None
        self._backlog: deque[tuple[str, Callable[[Any], None]]] = deque()
        self._steps: dict[str, int] = {}  # metric key -> last step logged or buffered
        self._failed_at = -1e9
        self._opens = opens
        if opens is not None:  # the first call sent: everything else needs its run id
            self._send(f"run {opens[0]}", self._find_or_create)

    def _find_or_create(self, client) -> None:
        run_key, kwargs = self._opens
        opened = open_run(self.uri, run_key, **kwargs)
        self.run_id, self.experiment_id = opened.run_id, opened.experiment_id

    @property
    def client(self):
        if self._client is None:
            self._client = client_for(self.uri, existing=self._existing)
        return self._client

    def _send(self, what: str, call: Callable[[Any], None], *, wait: bool = False) -> None:
        self._backlog.append((what, call))
        while len(self._backlog) > BACKLOG_LIMIT:
            dropped, _ = self._backlog.popleft()
            warnings.warn(f"MLflow: {dropped} was not logged (more than {BACKLOG_LIMIT} calls"
                          " waiting for the tracking store)", stacklevel=3)
        if not self.flush(wait=wait):
            _UNSENT.add(self)

    def flush(self, wait: bool = True) -> bool:
        """Send what is buffered, oldest first. Without `wait`, one try (at most every few
        seconds while the store is down) and the rest stays buffered; with it, back off for
        up to PATIENCE_S. Returns whether the buffer is empty."""
        if not wait and time.monotonic() - self._failed_at < MAX_DELAY_S:
            return not self._backlog
        deadline = time.monotonic() + (_patience() if wait else 0.0)
        attempt = 0
        while self._backlog:
            what, call = self._backlog[0]
            try:
                call(self.client)
            except Exception as err:  # noqa: BLE001 - any tracking failure must not kill training
                self._failed_at = time.monotonic()
                delay = min(MAX_DELAY_S, BASE_DELAY_S * 2**attempt)
                if not wait:
                    return False
                if time.monotonic() + delay > deadline:
                    _Outage.gave_up = True
                    for lost, _ in self._backlog:
                        _warn_lost(lost, err)
                    self._backlog.clear()
                    return False
                time.sleep(delay)
                attempt += 1
                continue
            _Outage.gave_up = False
            self._backlog.popleft()
            attempt = 0
        return True

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = flatten(params)

        def log(client) -> None:
            # a resumed run keeps the params it has (MLflow refuses a changed value)
            existing = dict(client.get_run(self.run_id).data.params)
            items = [Param(k, v) for k, v in flat.items() if k not in existing]
            for i in range(0, len(items), 90):
                client.log_batch(self.run_id, params=items[i : i + 90])

        self._send("params", log)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        items = _metric_items(metrics, step)
        for item in items:
            self._steps[item.key] = max(step, self._steps.get(item.key, -1))
        self._send(f"metrics {sorted(metrics)} at step {step}",
                   lambda client: client.log_batch(self.run_id, metrics=items))

    def log_history(self, history: Iterable[tuple[int, dict[str, float]]],
                    key: str = "loss") -> None:
        """Log the epochs of `history` (the full per-epoch history a checkpoint holds) that the
        run does not have yet: a resumed run's series continues exactly once, whatever the
        point of failure. Where this process has not logged `key` before, the run's last step
        is read when the call is sent (the training does not wait for the store)."""
        history = list(history)
        if not history:
            return
        if key in self._steps:
            for step, metrics in history:
                if step > self._steps[key]:
                    self.log_metrics(metrics, step)
            return
        for step, metrics in history:  # known from here on: later calls log only new epochs
            for name in metrics:
                self._steps[name] = max(step, self._steps.get(name, -1))

        def log_missing(client) -> None:
            seen = max((m.step for m in client.get_metric_history(self.run_id, key)),
                       default=-1)
            for step, metrics in history:
                if step > seen:
                    client.log_batch(self.run_id, metrics=_metric_items(metrics, step))

        self._send(f"history of {len(history)} epochs", log_missing)

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self._send(f"tag {k}", lambda client, k=k, v=v: client.set_tag(self.run_id, k,
                                                                            str(v)))

    def log_input(self, dataset, context: str) -> None:
        """A data split the run used (`pgray.tracking.lineage`), buffered like the rest."""
        self._send(f"input {dataset.name}",
                   lambda client: log_dataset_input(client, self.run_id, dataset, context))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Buffered like the rest: a copy of the file waits with the call (the original may
        be temporary) and is removed once sent or given up."""
        import shutil

        from pgray.io import spool_copy

        copy = spool_copy(path)

        def send(client) -> None:
            client.log_artifact(self.run_id, str(copy), artifact_path)
            shutil.rmtree(copy.parent, ignore_errors=True)

        self._send(f"artifact {copy.name}", send)

    def finish(self, status: str = "FINISHED", *, wait: bool = True) -> None:
        """Close the run once everything before it is sent. Without `wait` (a run closed
        mid-work, a benchmark job's) an outage is not waited out here: `flush_all()` at the
        end of the work sends what is left."""
        self._send("run status", lambda client: client.set_terminated(self.run_id, status),
                   wait=wait)


_UNSENT: set[Tracker] = set()  # runs with calls still buffered (sent by flush_all)


def flush_all() -> None:
    """Send every run's buffered calls, waiting an outage out (PATIENCE_S in all)."""
    while _UNSENT:
        _UNSENT.pop().flush(wait=True)


def open_run(
    uri: str,
    run_key: str,
    *,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, Any] | None = None,
    existing: bool = False,
) -> Tracker:
    """The run tagged with `run_key`, created on first use and reopened afterwards (found and
    created under the store lock, so two processes never make two runs of one key)."""
    client = client_for(uri, existing=existing)
    exp_id = ensure_experiment(uri, experiment)
    safe_key = run_key.replace("'", "")
    with store_lock(uri):
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
    return Tracker(uri, run_id, exp_id, existing=existing)


def open_run_later(uri: str, run_key: str, **kwargs) -> Tracker:
    """open_run for runs opened mid-work (a trial, a benchmark job, a fit): the run is found
    or created by its key when the store first answers (at once when it is up), and the work
    never waits on it: what it logs meanwhile waits in the buffer. A store gone for longer
    than PATIENCE_S costs that run, with a warning naming it; the results still reach the
    result files."""
    return Tracker(uri, "", existing=bool(kwargs.get("existing")), opens=(run_key, kwargs))


def find_runs(uri: str, experiment_id: str, tags: dict[str, str]) -> list[str]:
    """Ids of the runs carrying all these tags."""
    where = " and ".join(f"tags.`{k}` = '{str(v).replace(chr(39), '')}'" for k, v in tags.items())
    runs = retry(lambda: client_for(uri).search_runs([experiment_id], filter_string=where,
                                                     max_results=1000), "run search") or []
    return [r.info.run_id for r in runs]


# Wall-clock stamps a training reports for its timing (distributed.trial_times): not metrics
WALL_CLOCK_KEYS = frozenset({"epoch_began_at", "trial_began_at"})


def _metric_items(metrics: dict[str, float], step: int) -> list:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in metrics.items()
            if isinstance(v, int | float) and v == v  # drop NaN: undefined metrics
            and k not in WALL_CLOCK_KEYS]


def close_lost_runs(uri: str, experiment_id: str, tags: dict[str, str], known: set[str],
                    id_tag: str) -> list[str]:
    """Tag `pgray.trial_state: lost` the runs carrying `tags` whose `id_tag` is not in `known`,
    and end those still RUNNING as KILLED: runs a killed driver opened for work its restored
    state never recorded (a trial started, or even finished, after Tune last saved the
    experiment). Returns their ids."""
    def lost() -> list:
        client = client_for(uri)
        where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = client.search_runs([experiment_id], filter_string=where, max_results=1000)
        gone = [r for r in runs if r.data.tags.get(id_tag) not in known]
        for run in gone:
            client.set_tag(run.info.run_id, "pgray.trial_state", "lost")
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, "KILLED")
        return [r.info.run_id for r in gone]

    return retry(lost, "closing runs of work a restored run lost") or []
