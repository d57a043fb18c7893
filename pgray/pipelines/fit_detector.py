"""Fit a baseline detector (`python -m pgray.train --detector NAME`) on the normal training
images of one category, in this process or as a Ray task on a GPU, and leave a checkpoint that
`pgray.evaluate` and the benchmark load, plus an MLflow run."""

from __future__ import annotations

import dataclasses

from pgray.pipelines.components.fits import FitRequest, FitResult, fit_payload
from pgray.pipelines.runners.fits import fit_args, record_fit


def fit_detector(req: FitRequest) -> FitResult:
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
    if req.use_ray:
        from pgray.distributed.cluster import resolve_worker_gpus
        from pgray.distributed.preflight import join_checked
        from pgray.distributed.tasks import run_task

        join_checked(req.address, uri, None, [req.data.root])
        gpus = resolve_worker_gpus(req.gpus, allow_cpu=True, where="--gpus-per-worker")
        payload = run_task(fit_payload, *fit_args(req), cpus=1.0, gpus=gpus)
    else:
        payload = fit_payload(*fit_args(req))
    return record_fit(req, payload, uri)
