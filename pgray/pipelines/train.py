"""Train one category end to end: validate inputs, open the MLflow run, run in-process or on Ray
Train, and leave a checkpoint, a metrics file and the config in the output folder."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgray.config import ExperimentConfig
from pgray.core.checkpoint import CHECKPOINT_FILE, SELECTED_FILE
from pgray.errors import CheckpointError
from pgray.pipelines.components.targets import validate_inputs


@dataclass
class TrainRequest:
    config: ExperimentConfig
    out: Path
    name: str
    workers: int = 1
    use_ray: bool = False
    # None: one GPU per worker when the cluster has GPUs; 0 there only with allow_cpu
    gpus_per_worker: float | None = None
    allow_cpu: bool = False
    cpus_per_worker: float = 1.0
    storage: str | None = None
    address: str | None = None
    max_failures: int = 2
    mlflow_uri: str | None = None
    progress: bool = True
    parent_run_id: str | None = None
    # The one test seam of training: called after every step as step_hook(rank, epoch, step)
    # on every worker (monitoring; the fault-tolerance tests kill a worker from it).
    step_hook: Callable[[int, int, int], None] | None = None


@dataclass
class TrainResult:
    checkpoint: Path
    metrics_file: Path
    history: list[dict[str, float]]
    mlflow_run_id: str
    mlflow_hint: str
    # the proxy-selected weights (train.select_metric), None when nothing was selected
    selected_checkpoint: Path | None = None


def _batch_params(cfg: ExperimentConfig, req: TrainRequest) -> dict[str, int]:
    """batch.global, batch.per_worker, ...: train.batch_size is the global batch."""
    from pgray.core.training_data import batch_params

    return batch_params(cfg.train.batch_size, req.workers if req.use_ray else 1)


def absolute_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """Ray workers start in other folders: make the dataset root (unless a URI) and the
    weights absolute."""
    from pgray.data.dataset import portable_root

    data, model = cfg.data, cfg.model
    data = dataclasses.replace(data, root=portable_root(data))
    if model.weights:
        model = dataclasses.replace(model, weights=str(Path(model.weights).expanduser().resolve()))
    return dataclasses.replace(cfg, data=data, model=model)


def train_category(req: TrainRequest) -> TrainResult:
    import yaml

    from pgray.config.base import check_worker_gpus
    from pgray.core.checkpoint import write_selected
    from pgray.io import ensure_dir, write_json, write_text
    from pgray.tracking.mlflow_links import runs_url
    from pgray.tracking.mlflow_runs import open_run
    from pgray.tracking.mlflow_store import check_tracking_uri, resolve_tracking_uri

    req = dataclasses.replace(req, config=absolute_paths(req.config))
    cfg = req.config
    validate_inputs(cfg)
    check_worker_gpus(req.workers, req.gpus_per_worker, "--gpus-per-worker")
    out = ensure_dir(req.out)
    uri = resolve_tracking_uri(req.mlflow_uri)
    check_tracking_uri(uri)
    if req.use_ray:
        storage, gpus = _connect_ray(req, uri)
        req = dataclasses.replace(req, gpus_per_worker=gpus)
    tracker = open_run(uri, f"train:{req.name}", run_name=req.name,
                       parent_run_id=req.parent_run_id,
                       tags={"pgray.kind": "train", "dataset": cfg.data.dataset,
                             "category": cfg.data.category})
    tracker.log_params(cfg.to_dict() | {"batch": _batch_params(cfg, req)})
    checkpoint = out / CHECKPOINT_FILE
    if req.use_ray:
        history = _train_on_ray(req, storage, uri, tracker.run_id, checkpoint)
    else:
        history = _train_in_process(req, tracker, checkpoint)
    selected = write_selected(checkpoint, out / SELECTED_FILE)
    rows = [{"epoch": e + 1, **m} for e, m in history]
    metrics_file = write_json(out / "metrics.json", {"run_name": req.name, "epochs": rows})
    config_file = write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    for path in (checkpoint, selected, config_file, metrics_file):
        if path is not None:
            tracker.log_artifact(path)
    collapsed = [r for r in rows if r.get("robust_collapse")]
    if collapsed:
        tracker.set_tags({"pgray.robust_collapse": ", ".join(
            f"epoch {r['epoch']:.0f}: worst-case {r['proxy_worst_image_auroc']:.3f} clean"
            f" {r['proxy_clean_image_auroc']:.3f}" for r in collapsed)[:5000]})
    tracker.finish()
    hint = runs_url(uri, tracker.experiment_id)
    return TrainResult(checkpoint, metrics_file, rows, tracker.run_id, hint, selected)


def _train_in_process(req: TrainRequest, tracker, checkpoint: Path) -> list:
    from pgray.core.device import pick_device
    from pgray.core.fit import FitContext, fit
    from pgray.tracking.lineage import TRAINING, system_metrics, training_dataset

    resume = _local_resume_state(checkpoint, req.name)
    history: list = list((resume or {}).get("extra", {}).get("history", []))
    tracker.log_history(history)

    def report(epoch: int, metrics: dict[str, float], save) -> None:
        history.append((epoch, metrics))
        if save is not None:
            save(checkpoint, {"history": history, "run_name": req.name})
        tracker.log_history(history)

    split = training_dataset(req.config.data)
    if split is not None:
        tracker.log_input(split, TRAINING)
    hook = req.step_hook
    with system_metrics(tracker.uri, tracker.run_id):
        fit(req.config, FitContext(
            device=pick_device(), report=report, resume_state=resume, progress=req.progress,
            step_hook=None if hook is None else (lambda epoch, step: hook(0, epoch, step)),
        ))
    return history


def _local_resume_state(checkpoint: Path, name: str) -> dict[str, Any] | None:
    from pgray.core.checkpoint import read_checkpoint

    if not checkpoint.exists():
        return None
    state = read_checkpoint(checkpoint)
    if state.get("extra", {}).get("run_name") != name:
        raise CheckpointError(
            f"{checkpoint} belongs to another run"
            f" ({state.get('extra', {}).get('run_name')!r}, not {name!r}); use another --out"
        )
    return state


def _connect_ray(req: TrainRequest, uri: str) -> tuple[str, float]:
    """Check the storage URI, join (or start) Ray, check that every node can log to `uri`;
    returns the resolved storage and GPUs per worker."""
    from pgray.distributed.cluster import resolve_storage, resolve_worker_gpus
    from pgray.distributed.preflight import join_checked

    storage = resolve_storage(req.storage, req.out / "ray_storage")
    join_checked(req.address, uri, storage, [req.config.data.root])
    gpus = resolve_worker_gpus(req.gpus_per_worker, allow_cpu=req.allow_cpu,
                               where="--gpus-per-worker")
    return storage, gpus


def _train_on_ray(req: TrainRequest, storage: str, uri: str, run_id: str,
                  checkpoint: Path) -> list:
    from pgray.core.checkpoint import read_checkpoint
    from pgray.distributed.train import TrainLaunch, train_to_file

    launch = TrainLaunch(
        name=req.name, storage=storage, workers=req.workers,
        gpus_per_worker=req.gpus_per_worker, cpus_per_worker=req.cpus_per_worker,
        max_failures=req.max_failures, mlflow_uri=uri, mlflow_run_id=run_id,
        progress=req.progress, step_hook=req.step_hook,
    )
    train_to_file(req.config.to_dict(), launch, checkpoint)
    return list(read_checkpoint(checkpoint)["extra"].get("history", []))
