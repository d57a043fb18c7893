"""The results side of one benchmark: its folder, its MLflow run, the jobs it has done before,
and each job's result written the moment it lands (rows, an MLflow child run, panels). The
jobs themselves come from the producers (`pgray.pipelines.runners.queue`)."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

from pgray.core.certify import SIDES
from pgray.errors import ClusterError
from pgray.tracking.lineage import system_metrics

METRIC_KEYS = ("image_auroc", "pixel_auroc", "aupro")
# each metric's bootstrap 95 % interval (pgray.core.intervals), logged beside it
INTERVAL_KEYS = tuple(f"{m}_ci_{end}" for m in METRIC_KEYS for end in ("low", "high"))
# a certified row's (pgray.core.certify): each side of its bracket, with intervals
SIDE_KEYS = tuple(f"{side}_{k}" for side in SIDES for k in (*METRIC_KEYS, *INTERVAL_KEYS))
LOGGED = frozenset((*METRIC_KEYS, *INTERVAL_KEYS, *SIDE_KEYS))


class BenchmarkRun:
    """Opened before any job runs; `on_result(job, result)` for each that lands; closed by
    `pgray.tracking.benchmark_finish.finish_benchmark`."""

    def __init__(self, name: str, out: Path, *, mlflow_uri: str, parent_run_id: str | None,
                 force: bool) -> None:
        from pgray.io import ensure_dir
        from pgray.tracking.mlflow_runs import open_run, retry
        from pgray.tracking.row_store import read_rows

        self.name, self.out, self.uri = name, ensure_dir(out), mlflow_uri
        # opened mid-sweep too (the final evaluation): an outage is waited out here
        self.parent = retry(lambda: open_run(
            self.uri, f"benchmark:{name}", run_name=f"benchmark {name}",
            parent_run_id=parent_run_id, tags={"pgray.kind": "benchmark"}),
            f"run benchmark:{name}")
        if self.parent is None:
            raise ClusterError(f"MLflow tracking store {self.uri} did not answer; the"
                               f" benchmark {name} could not open its run")
        self.done = set() if force else {r["job_key"] for r in read_rows(self.out)}
        self.ran = 0
        # the driver node's system metrics on the benchmark's run while its jobs run (a
        # single node's actors included: the samples are the node's, not the process's)
        self._watch = contextlib.ExitStack()
        self._watch.enter_context(system_metrics(self.uri, self.parent.run_id))

    def stop_watching(self) -> None:
        """The system metrics' last sample sent (before the run is closed)."""
        self._watch.close()

    @property
    def run_id(self) -> str:
        return self.parent.run_id

    def on_result(self, job: Any, result: dict[str, Any]) -> None:
        from pgray.tracking.row_store import append_rows

        # Each finished job is in the table before the next one is awaited: an interrupted
        # benchmark loses nothing it finished.
        append_rows(self.out, result["rows"])
        log_job(self.uri, self.parent.run_id, job, result)
        self._keep_panels(job, result.get("panels") or {})
        self.ran += 1

    def _keep_panels(self, job: Any, panels: dict[str, bytes]) -> None:
        """OUT/panels/<job>/panel_NN.png: what the report shows (MLflow has them too)."""
        from pgray.io import atomic_write
        from pgray.tracking.report import PANELS_DIR

        folder = self.out / PANELS_DIR / re.sub(r"[^A-Za-z0-9_.-]+", "-", job.label())
        for name, data in panels.items():
            atomic_write(folder / Path(name).name, lambda f, d=data: f.write(d))


def log_job(uri: str, parent_id: str, job: Any, result: dict[str, Any]) -> None:
    """One MLflow child run per job: its parameters, and each row's metrics under its attack
    name (`worst_case/image_auroc`, `protocol/pixel_auroc`, ...), with their intervals
    (`worst_case/image_auroc_ci_low`, ...)."""
    import tempfile

    from pgray.tracking.mlflow_runs import open_run_later

    rows = result["rows"]
    child = open_run_later(uri, f"bench-job:{job.key}", run_name=job.label(),
                           parent_run_id=parent_id,
                           tags={"pgray.kind": "benchmark-job", "dataset": job.dataset,
                                 "category": job.category, "setting": job.setting,
                                 "threat": job.threat, "eps": job.eps})
    # a certified job's rows are one per radius: their keys carry it
    name = {id(r): r["attack"] if r.get("radius") is None else f"{r['attack']}_r{r['radius']:g}"
            for r in rows}
    child.log_params({f"{name[id(r)]}.{k}": v for r in rows for k, v in r.items()
                      if k not in LOGGED | {"wall_s", "time_s", "flags", "flag_notes"}})
    metrics = {f"{name[id(r)]}/{k}": r[k] for r in rows for k in LOGGED if k in r}
    child.log_metrics(metrics | {"wall_s": rows[0]["wall_s"]}, step=0)
    if result["panels"]:
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in result["panels"].items():
                path = Path(tmp) / name
                path.write_bytes(data)
                child.log_artifact(path, "panels")
    child.finish(wait=False)  # an outage is waited out once, when the benchmark ends
