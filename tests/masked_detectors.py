"""Detectors built to break an attack, around any patch-logit detector: a step function, one
run under no_grad, one whose gradient points the wrong way, and one whose gradient vanishes
under bf16 autocast only. Their scores are the inner detector's (rounded for the step)."""

from __future__ import annotations

import torch
from torch import nn


class StepDetector(nn.Module):
    """Patch units that are a step function of the input: zero gradient almost everywhere,
    yet a good detector of the dark defects of the generated discs (Square still moves it)."""

    patch_size = 8

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(self.inner(x) * 4) / 4

    def image_scores(self, units: torch.Tensor) -> torch.Tensor:
        return units.topk(3, dim=1).values.mean(dim=1)

    def anomaly_maps(self, units: torch.Tensor) -> torch.Tensor:
        return self.inner.anomaly_maps(units)


class NoGradDetector(StepDetector):
    """Features under torch.no_grad, as several anomalib models compute them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.inner(x)


class ReversedGradientDetector(StepDetector):
    """The same scores, with the gradient pointing the other way: every white-box step helps
    the detector, so its AUROC rises with the budget."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        units = self.inner(x)
        return 2 * units.detach() - units


class Bf16MaskedDetector(StepDetector):
    """Exact scores always, but no input gradient while bf16 autocast is on (when `masked`):
    a detector whose gradients bf16 ruins, for the precision probe. Black-box attacks, which
    read scores only, work as well in bf16 as in fp32 on it."""

    def __init__(self, inner: nn.Module, masked: bool = True) -> None:
        super().__init__(inner)
        self.masked = masked

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        units = self.inner(x)
        if self.masked and torch.is_autocast_enabled(x.device.type):
            return units.detach()
        return units
