"""The config of a baseline detector (`pgray.detectors`): which one, at which size, on which
backbone, and its own options. PatchGuard itself is configured by `ExperimentConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pgray.config.base import check


@dataclass
class DetectorConfig:
    name: str = "patchcore"
    img_size: int = 224
    backbone: str | None = None  # timm name of its feature backbone; None: the detector's own
    layers: list[Any] | None = None  # None: the detector's own default layers
    # False (the default here and in tests): random backbone weights, and every row says so.
    # True: timm hub weights (needs network access); `weights`: a local file instead.
    pretrained: bool = False
    weights: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # per detector, e.g. epochs, lr

    def validate(self) -> None:
        check(bool(self.name), "name", "must name a detector (python -m pgray.detectors list)")
        check(self.img_size >= 16, "img_size", f"must be >= 16, got {self.img_size}")
        check(self.layers is None or len(self.layers) >= 1, "layers",
              "needs at least one layer (or null: the detector's default)")
