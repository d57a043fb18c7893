"""The detector interface: what pgray's attacks, metrics, suite and benchmark need of any
anomaly detector, PatchGuard or a baseline.

A detector is an `nn.Module` with
- `img_size` (int): the square input size it takes;
- `score(x) -> (image_scores (B,), units (B, U))`: images in [0, 1] (B, 3, H, W) to one score
  per image and U localization units, both differentiable with respect to x. PatchGuard's
  units are its patch logits; a pixel-level detector's are its anomaly map, flattened;
- `anomaly_maps(units) -> (B, 1, H, W)`: the pixel maps at the input size;
- `unit_labels(masks (B, 1, H, W)) -> (B, U)`: ground-truth masks as unit labels in {0, 1}.
The attacks' localization objective is then the mean of the normal units minus the mean of
the anomalous ones: at patch level for PatchGuard, at pixel level for pixel-map detectors.

Detectors fitted on normal images (memory banks, Gaussian statistics, students) also have
`fit(batches)`, taking a list of dict batches with an "image" tensor of normal images (on the
detector's device; a list, so that a detector trained for several epochs can go over it
again).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PixelMapDetector(nn.Module):
    """Base for detectors whose output is a pixel anomaly map (B, 1, h, w) and an image score:
    subclasses implement `maps_and_scores(x)`, differentiable in x; units are the map at the
    input size, flattened."""

    img_size: int

    def maps_and_scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps, scores = self.maps_and_scores(x)
        if maps.shape[-2:] != (self.img_size, self.img_size):
            maps = F.interpolate(maps, size=(self.img_size, self.img_size), mode="bilinear",
                                 align_corners=False)
        return scores, maps.flatten(1)

    def anomaly_maps(self, units: torch.Tensor) -> torch.Tensor:
        return units.reshape(-1, 1, self.img_size, self.img_size)

    def unit_labels(self, masks: torch.Tensor) -> torch.Tensor:
        if masks.shape[-2:] != (self.img_size, self.img_size):
            masks = F.interpolate(masks.float(), size=(self.img_size, self.img_size),
                                  mode="nearest")
        return (masks.flatten(1) > 0.5).float()
