"""Baseline fits on the driver's side: each fitted detector written to its file with its MLflow
run, and a benchmark's missing baselines fitted as Ray tasks beside the trainings (in this
process when sequential), each handed on the moment it lands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pgray.pipelines.components.fits import FitRequest, FitResult, fit_payload


def fit_args(req: FitRequest) -> tuple:
    """What `fit_payload` is called with: plain data a Ray task carries."""
    from pgray.config.base import to_dict

    return to_dict(req.detector), to_dict(req.data), req.batch_size


def record_fit(req: FitRequest, payload: dict[str, Any], uri: str, *,
               wait: bool = True) -> FitResult:
    """Write the fitted detector to OUT/<file> (detector.pt) and its MLflow run. Without
    `wait` (a fit landing mid-benchmark) an absent tracking store is not waited for here."""
    from pgray.config.base import to_dict
    from pgray.detectors.loading import save_detector
    from pgray.detectors.registry import build
    from pgray.tracking.mlflow_runs import open_run_later

    tracker = open_run_later(uri, f"fit:{req.name}", run_name=req.name,
                             parent_run_id=req.parent_run_id,
                             tags={"pgray.kind": "fit", "detector": req.detector.name,
                                   "dataset": req.data.dataset,
                                   "category": req.data.category})
    tracker.log_params({"detector": to_dict(req.detector), "data": to_dict(req.data)})
    model = build(req.detector)
    model.load_state_dict(payload["state_dict"])
    path = save_detector(req.out / req.file, model, req.detector, req.data,
                         extra={"fit_s": payload["fit_s"], "n_images": payload["n_images"]})
    tracker.log_metrics({"fit_s": payload["fit_s"], "n_images": payload["n_images"]}, step=0)
    tracker.log_artifact(path)
    tracker.finish(wait=wait)
    return FitResult(path, tracker.run_id, payload["fit_s"])


class BaselineFits:
    """Fits of (target, request) pairs, each target handed to `on_fitted` the moment its
    detector is written (its evaluations queue then); `poll()` lands those finished."""

    def __init__(self, fits: list[tuple[Any, FitRequest]], on_fitted: Callable[[Any], None],
                 *, sequential: bool, cpus: float, gpus: float) -> None:
        from pgray.distributed.tasks import Tasks

        self._on_fitted, self.done = on_fitted, 0
        self._tasks = None if sequential or not fits else Tasks(fit_payload, cpus=cpus,
                                                                  gpus=gpus)
        for target, req in fits:
            if self._tasks is None:
                self._land((target, req), fit_payload(*fit_args(req)))
            else:
                self._tasks.submit((target, req), *fit_args(req))

    def _land(self, item: tuple[Any, FitRequest], payload: dict[str, Any]) -> None:
        target, req = item
        record_fit(req, payload, req.mlflow_uri, wait=False)  # the driver's loop goes on
        self.done += 1
        self._on_fitted(target)

    def poll(self) -> bool:
        """Land the fits that have finished, without waiting; whether any is still running."""
        if self._tasks is None:
            return False
        for item, payload in self._tasks.ready():
            self._land(item, payload)
        return self._tasks.pending > 0
