"""Lineage and system metrics of a run: the data splits a run used as MLflow dataset inputs
(name: dataset/category/split; digest: the split's fingerprint,
`pgray.data.samples.split_fingerprint`), and the node's CPU, memory, disk, network and, where
present, GPU sampled onto the run while it works (`system/<node>/...` metrics)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import warnings
from collections.abc import Iterator

from pgray.config import DataConfig

TRAINING, TEST = "training", "test"
# seconds between samples (MLflow's own MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL wins); 0: off
INTERVAL_ENV = "PGRAY_SYSTEM_METRICS_S"
DEFAULT_INTERVAL_S = 10.0


def split_dataset(dataset: str, category: str, split: str, fingerprint: str,
                  root: str | None, layout_split: str | None = None):
    """A split as an MLflow dataset."""
    from mlflow.entities import Dataset

    return Dataset(name=f"{dataset}/{category}/{split}", digest=fingerprint[:36],
                   source_type="local",
                   source=json.dumps({"uri": root or "", "split": layout_split or split}))


def training_dataset(data: DataConfig):
    """The training split of `data` as an MLflow dataset (None, with a warning, where its
    files cannot be listed here: lineage never stops a training)."""
    from pgray.data.dataset import discover_split, resolve_root
    from pgray.data.samples import split_fingerprint
    from pgray.errors import PgrayError

    try:
        samples = discover_split(data, "train")
        fingerprint = split_fingerprint(samples, resolve_root(data))
    except (PgrayError, OSError) as err:
        warnings.warn(f"the training split of {data.dataset}/{data.category} was not logged"
                      f" as the run's input: {err}", stacklevel=2)
        return None
    return split_dataset(data.dataset, data.category, "train", fingerprint, data.root)


def log_dataset_input(client, run_id: str, dataset, context: str) -> None:
    from mlflow.entities import DatasetInput, InputTag

    client.log_inputs(run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context",
                                                               context)])])


def _psutil_importable() -> bool:
    """MLflow's monitors need psutil (a dependency of pgray; a machine that runs pgray from
    source without it logs no system metrics rather than failing)."""
    import importlib.util

    return importlib.util.find_spec("psutil") is not None


def _node_monitor(run_id: str, uri: str, node: str):
    """MLflow's monitor, publishing what it sampled since its last step when it stops (a
    run shorter than one interval still gets its sample); mlflow imported only here."""
    import logging

    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    # its start and stop INFO lines ("Started monitoring system metrics", "Skip logging GPU
    # metrics") would lead a command's stderr, where a bad input's `error:` line must be first
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)

    class NodeMonitor(SystemMetricsMonitor):
        def finish(self) -> None:
            if self._process is None:
                return
            # the sampling thread is not waited for (it ends at its next look at the event; a
            # trial Tune stops must end within Tune's 2 s): what it has is published from here
            self._shutdown_event.set()
            last = self.aggregate_metrics()
            if last:
                self.publish_metrics(last)
            self.mlflow_logger.flush()
            self._process = None

    # steps from 0 (resume_logging would ask the store first, and a start never waits on it)
    return NodeMonitor(run_id, sampling_interval=interval_s(), node_id=node,
                       tracking_uri=uri)


def interval_s() -> float:
    return float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL_S))


@contextlib.contextmanager
def system_metrics(uri: str, run_id: str | None, node: str | None = None) -> Iterator[None]:
    """Sample this node's system metrics onto the run while the block runs, as
    `system/<node>/cpu_utilization_percentage`, `.../system_memory_usage_megabytes`,
    `.../gpu_utilization_percentage` (where a GPU is present) and so on (each start's series
    from step 0). Nothing where the run is not known yet or the interval is 0."""
    if not run_id or interval_s() <= 0 or not _psutil_importable():
        yield
        return
    try:
        monitor = _node_monitor(run_id, uri, node or socket.gethostname())
        monitor.start()
    except Exception as err:  # noqa: BLE001 - monitoring must never stop the work
        warnings.warn(f"system metrics of run {run_id} are not sampled: {err}", stacklevel=3)
        yield
        return
    try:
        yield
    finally:
        try:
            monitor.finish()
        except Exception as err:  # noqa: BLE001 - nor its end
            warnings.warn(f"system metrics of run {run_id}: the last sample was lost: {err}",
                          stacklevel=3)
