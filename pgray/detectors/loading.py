"""Reading any detector checkpoint pgray can evaluate, and writing baseline checkpoints.

Three kinds of file, told apart by their content (all read with weights_only=True):
- a pgray PatchGuard checkpoint (`pgray.core.checkpoint`, format tag
  `pgray-patchguard-checkpoint`), written by `python -m pgray.train`;
- a pgray baseline checkpoint (format tag `pgray-detector-checkpoint`), written by
  `python -m pgray.train --detector NAME`: the detector config, the data it was fitted on, and
  its fitted state;
- a state dict saved by the PatchGuard reference code (no tag; keys `feature_extractor.*`,
  `discriminator.*`): rebuilt as the reference architecture (DINOv2 ViT-S/14 at 224, one
  discriminator block) unless a model config says otherwise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pgray.config import DataConfig, ModelConfig
from pgray.config.detector import DetectorConfig
from pgray.config.passes import TRAIN_ATTACKS
from pgray.errors import CheckpointError, ConfigError
from pgray.io import atomic_write

DETECTOR_FORMAT = "pgray-detector-checkpoint"
DETECTOR_FORMAT_VERSION = 1


@dataclass
class Loaded:
    model: torch.nn.Module  # in eval mode, on the CPU
    detector: str  # patchguard | patchguard_reference | an anomalib name
    data: DataConfig | None  # what it was trained or fitted on (None: a reference file)
    # trained (PatchGuard: the whole model is trained), pretrained (a baseline on hub or local
    # weights) or random (a baseline whose feature extractor kept its random init: labelled
    # in every row, since such numbers are not those of the published baselines)
    backbone: str
    config: Any  # ExperimentConfig, DetectorConfig or ModelConfig (reference)

    def describe(self) -> dict[str, Any]:
        """What the model is, as result-row columns (robustness cards read them): its
        backbone and the weights that backbone started from, and how it was trained."""
        from pgray.config import ExperimentConfig

        cfg = self.config
        model_cfg = cfg.model if isinstance(cfg, ExperimentConfig) else cfg
        name = getattr(model_cfg, "backbone", None) or f"{self.detector} default"
        out = {"backbone": name, "backbone_source": weights_source(model_cfg, name),
               "train_method": None, "train_attack": None, "train_eps": None,
               "train_steps": None}
        if isinstance(cfg, ExperimentConfig):
            train = cfg.train
            if not train.adversarial:
                return out | {"train_method": "clean"}
            steps = TRAIN_ATTACKS[train.attack_method].get("steps", train.attack.steps)
            return out | {"train_method": "adversarial", "train_attack": train.attack_method,
                          "train_eps": float(train.attack.eps), "train_steps": int(steps)}
        if isinstance(cfg, DetectorConfig):  # a baseline fitted on normal images only
            return out | {"train_method": "clean"}
        # released weights: the whole model comes from the file, which says no more
        return out | {"backbone_source": "reference state dict", "train_method": "reference"}


def weights_source(model_cfg: Any, backbone: str) -> str:
    """Where a backbone's initial weights came from: a local file, the timm hub, or none."""
    weights = getattr(model_cfg, "weights", None)
    if weights:
        return f"file:{weights}"
    if getattr(model_cfg, "pretrained", False):
        return f"hub:{backbone}"
    return "random init"


def save_detector(path: str | Path, model: torch.nn.Module, cfg: DetectorConfig,
                  data: DataConfig, extra: dict[str, Any] | None = None) -> Path:
    """A fitted baseline as a self-describing file (plain data and tensors only)."""
    from pgray.config.base import to_dict

    payload = {
        "format": DETECTOR_FORMAT, "format_version": DETECTOR_FORMAT_VERSION,
        "detector": to_dict(cfg), "data": to_dict(data),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }
    return atomic_write(path, lambda f: torch.save(payload, f))


def _read(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for bad bytes: report them as one
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__})") from err


def is_reference_state(data: Any) -> bool:
    """A plain state dict (or {"state_dict": ...}) with the reference code's key names."""
    from pgray.core.checkpoint import map_reference_key

    state = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not state:
        return False
    return any(isinstance(k, str) and map_reference_key(k) is not None for k in state)


def load_detector(path: str | Path, reference_model: ModelConfig | None = None) -> Loaded:
    """Any of the three kinds, as a detector ready to evaluate. `reference_model` describes
    the architecture of a reference state dict (default: the reference's own)."""
    from pgray.core.checkpoint import FORMAT_TAG, load_checkpoint

    path = Path(path)
    data = _read(path)
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt == FORMAT_TAG:
        model, cfg, _ = load_checkpoint(path)
        return Loaded(model, "patchguard", cfg.data, "trained", cfg)
    if fmt == DETECTOR_FORMAT:
        return _baseline(path, data)
    if is_reference_state(data):
        return _reference(path, data, reference_model or ModelConfig())
    raise CheckpointError(f"{path}: neither a pgray checkpoint (PatchGuard or baseline) nor a"
                          " PatchGuard reference state dict")


def _baseline(path: Path, data: dict[str, Any]) -> Loaded:
    from pgray.config.base import from_dict
    from pgray.detectors.registry import build

    if data.get("format_version") != DETECTOR_FORMAT_VERSION:
        raise CheckpointError(f"{path}: detector checkpoint version {data.get('format_version')}"
                              f" is not supported (this pgray reads {DETECTOR_FORMAT_VERSION})")
    try:
        cfg = from_dict(DetectorConfig, data["detector"], "detector")
        data_cfg = from_dict(DataConfig, data["data"], "data")
    except ConfigError as err:
        raise CheckpointError(f"{path}: stored config is not valid here: {err}") from err
    # The fitted state comes from the file: never fetch or read backbone weights again.
    model = build(dataclasses.replace(cfg, pretrained=False, weights=None))
    try:
        model.load_state_dict(data["state_dict"], strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: its state does not fit {cfg.name}: {err}") from None
    backbone = "pretrained" if cfg.pretrained or cfg.weights else "random"
    return Loaded(model.eval(), cfg.name, data_cfg, backbone, cfg)


def _reference(path: Path, data: dict[str, Any], model_cfg: ModelConfig) -> Loaded:
    from pgray.core.checkpoint import load_reference_state_dict
    from pgray.core.model import PatchGuard

    model_cfg = dataclasses.replace(model_cfg, pretrained=False, weights=None)
    model = PatchGuard(model_cfg)
    try:
        load_reference_state_dict(model, data)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err} (give the architecture it was trained with:"
                              " --config with a model section)") from None
    return Loaded(model.eval(), "patchguard_reference", None, "trained", model_cfg)
