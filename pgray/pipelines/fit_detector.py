"""Fit a baseline detector (`python -m pgray.train --detector NAME`) on the normal training
images of one category, in this process or as a Ray task on a GPU, and leave a checkpoint that
`pgray.evaluate` and the benchmark load, plus an MLflow run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgray.config import DataConfig
from pgray.config.detector import DetectorConfig

DETECTOR_FILE = "detector.pt"


@dataclass
class FitRequest:
    detector: DetectorConfig
    data: DataConfig
    out: Path
    name: str
    use_ray: bool = False
    gpus: float | None = None  # None: one when the cluster has GPUs
    address: str | None = None
    mlflow_uri: str | None = None
    parent_run_id: str | None = None
    batch_size: int = 16
    progress: bool = True
    file: str = DETECTOR_FILE  # the checkpoint's name in `out`


@dataclass
class FitResult:
    checkpoint: Path
    mlflow_run_id: str
    fit_s: float


def fit_payload(detector: dict[str, Any], data: dict[str, Any], batch_size: int,
                assigned_gpus: list | None = None) -> dict[str, Any]:
    """Build and fit the detector; its state and timing as plain data (what a Ray task
    returns to the driver, which writes the file)."""
    import time

    import torch
    from torch.utils.data import DataLoader

    from pgray.config.base import from_dict
    from pgray.core.device import pick_device
    from pgray.data.dataset import load_split
    from pgray.detectors.registry import build

    cfg = from_dict(DetectorConfig, detector, "detector")
    data_cfg = from_dict(DataConfig, data, "data")
    device = pick_device(assigned_gpus=assigned_gpus)
    train = load_split(data_cfg, "train", cfg.img_size)
    normals = [i for i, s in enumerate(train.samples) if s.label == 0]
    loader = DataLoader(torch.utils.data.Subset(train, normals), batch_size=batch_size,
                        shuffle=False)
    model = build(cfg).to(device)
    started = time.perf_counter()
    model.fit([{"image": b["image"].to(device)} for b in loader])
    return {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "fit_s": time.perf_counter() - started, "n_images": len(normals),
            "device": str(device)}


def _fit_task(detector: dict[str, Any], data: dict[str, Any], batch_size: int):
    import ray

    return fit_payload(detector, data, batch_size, assigned_gpus=ray.get_gpu_ids())


def fit_detector(req: FitRequest) -> FitResult:
    from pgray.config.base import to_dict
    from pgray.data.dataset import discover_split, portable_root
    from pgray.detectors.registry import build, get
    from pgray.errors import ConfigError
    from pgray.io import ensure_dir
    from pgray.tracking.mlflow_store import check_tracking_uri, resolve_tracking_uri

    if not get(req.detector.name).fitted:
        raise ConfigError(f"--detector {req.detector.name}: not a fitted baseline; train"
                          " PatchGuard without --detector")
    # the root as a Ray task on another node finds it (absolute path, or a URI as given)
    req = dataclasses.replace(req, data=dataclasses.replace(req.data,
                                                            root=portable_root(req.data)))
    discover_split(req.data, "train")  # a bad dataset fails before any work
    build(req.detector)  # and so do bad detector options
    ensure_dir(req.out)
    uri = resolve_tracking_uri(req.mlflow_uri)
    check_tracking_uri(uri)
    args = (to_dict(req.detector), to_dict(req.data), req.batch_size)
    if req.use_ray:
        payload = _fit_on_ray(req, uri, args)
    else:
        payload = fit_payload(*args)
    return record_fit(req, payload, uri)


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


def fit_task(cpus: float, gpus: float):
    """The fit as a Ray task asking for these resources (the device follows Ray's GPUs)."""
    import ray

    return ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=2)(_fit_task)


def _fit_on_ray(req: FitRequest, uri: str, args: tuple) -> dict[str, Any]:
    import ray

    from pgray.distributed.cluster import (
        check_tracking_reachable,
        connect,
        resolve_worker_gpus,
    )
    from pgray.distributed.preflight import check_nodes

    connect(req.address)
    check_tracking_reachable(uri)
    check_nodes(None, [req.data.root] if req.data.root else [])
    gpus = resolve_worker_gpus(req.gpus, allow_cpu=True, where="--gpus-per-worker")
    return ray.get(fit_task(1.0, gpus).remote(*args))


class BaselineFits:
    """The missing baselines, fitted as Ray tasks beside the trainings (in this process when
    sequential); each one's evaluation jobs join the pool when its fit lands."""

    def __init__(self, cfg, run, evaluations, missing: list,
                 *, sequential: bool) -> None:
        self.run, self.evaluations, self.done = run, evaluations, 0
        self.pending: dict[Any, tuple] = {}
        if not missing:
            return
        from pgray.config.base import to_dict

        for entry, category, detector in missing:
            req = self._request(entry, category, detector)
            args = (to_dict(req.detector), to_dict(req.data), req.batch_size)
            if sequential:
                self._land((entry, category, detector, req), fit_payload(*args))
            else:
                task = fit_task(cfg.actors.cpus, cfg.actors.gpus)
                self.pending[task.remote(*args)] = (entry, category, detector, req)
        evaluations.also_poll(self.poll)

    def _request(self, entry, category: str, detector):
        from pgray.pipelines.benchmark import fit_config
        from pgray.pipelines.benchmark_jobs import checkpoint_path, entry_root

        path = checkpoint_path(entry, category, detector)
        det = fit_config(detector)
        data = DataConfig(dataset=entry.dataset, root=entry_root(entry), category=category,
                          options=dict(entry.options))
        return FitRequest(detector=det, data=data, out=path.parent, file=path.name,
                          name=f"{self.run.cfg.name}-{detector.name}-{entry.dataset}-{category}",
                          mlflow_uri=self.run.uri, parent_run_id=self.run.parent.run_id)

    def _land(self, item: tuple, payload: dict[str, Any]) -> None:
        entry, category, detector, req = item
        record_fit(req, payload, self.run.uri, wait=False)  # the driver's loop goes on
        self.done += 1
        self.evaluations.add(self.run.jobs_of(entry, category, detector), self.run.on_result)

    def poll(self) -> bool:
        """Land the fits that have finished, without waiting; whether any is still running."""
        import ray

        while self.pending:
            ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=0)
            if not ready:
                break
            self._land(self.pending.pop(ready[0]), ray.get(ready[0]))
        return bool(self.pending)
