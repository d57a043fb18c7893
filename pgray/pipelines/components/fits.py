"""A baseline detector's fit: its config and request, the checks before any fit starts, and the
fit itself (`fit_payload`: in this process or in a Ray task, returning plain data the driver
writes)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgray.config import DataConfig
from pgray.config.detector import DetectorConfig
from pgray.pipelines.components.targets import checkpoint_path, entry_root

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


def fit_config(detector) -> DetectorConfig:
    """The DetectorConfig a benchmark entry's baseline is fitted with."""
    from pgray.config.base import from_dict

    return from_dict(DetectorConfig, {"name": detector.name} | detector.fit, "fit")


def check_fits(detectors: list) -> None:
    """Build each distinct baseline config once before anything is fitted, so a bad option of
    the last detector fails the benchmark at once, not after the others have been fitted."""
    from pgray.detectors.registry import build
    from pgray.errors import ConfigError

    seen: set[str] = set()
    for detector in detectors:
        key = json.dumps([detector.name, detector.fit], sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        try:
            build(fit_config(detector))
        except ConfigError as err:
            raise ConfigError(f"detectors ({detector.name}) fit: {err}") from err


def check_missing(missing: list, train_missing: bool) -> None:
    """Refuse missing checkpoints nothing here can make (a file only its own code trains), or
    any with `train_missing` off; then check the baselines' fit options."""
    from pgray.detectors.registry import get
    from pgray.errors import CheckpointError

    for entry, category, detector in missing:
        name = "patchguard" if detector is None else detector.name
        where = f"{entry.dataset}/{category} ({name}) at {checkpoint_path(entry, category, detector)}"
        if detector is not None and not get(detector.name).fitted:
            raise CheckpointError(f"no checkpoint for {where}: a {name} file cannot be trained"
                                  " here; give its path")
        if not train_missing:
            raise CheckpointError(f"no checkpoint for {where}; train or fit one, or set"
                                  " train_missing: true")
    check_fits([d for _, _, d in missing if d is not None])


def fit_request(benchmark: str, entry, category: str, detector, mlflow_uri: str,
                parent_run_id: str) -> FitRequest:
    """The fit of a benchmark entry's missing baseline, written where the benchmark reads it."""
    path = checkpoint_path(entry, category, detector)
    data = DataConfig(dataset=entry.dataset, root=entry_root(entry), category=category,
                      options=dict(entry.options))
    return FitRequest(detector=fit_config(detector), data=data, out=path.parent, file=path.name,
                      name=f"{benchmark}-{detector.name}-{entry.dataset}-{category}",
                      mlflow_uri=mlflow_uri, parent_run_id=parent_run_id)
