"""Certified bounds of a percentile-smoothed detector (`pgray.core.smoothing`) per image and
per pixel, and the certified metrics built from them (docs/method.md, "Certification").

Percentile smoothing (Chiang et al. 2020): let h_q(x) be the q-th percentile of the base's
score at x + sigma * N(0, I). For every delta with ||delta||_2 <= r,
    h_low(x) <= h_p(x + delta) <= h_high(x),
    low = Phi(Phi^-1(p) - r / sigma),  high = Phi(Phi^-1(p) + r / sigma).
The outer percentiles are estimated at the clean image from the n sorted samples
y_(1) <= ... <= y_(n), conservatively: y_(k) <= h_low(x) unless at most k - 1 samples fall at
or below h_low, which happens with probability at most P(Binomial(n, low) <= k - 1); the lower
bound is the largest such k whose probability is at most alpha (`lower_index`), the upper one
the mirror image (`upper_index`). Where no k qualifies (n too small for r / sigma) the bound is
infinite: the score is not certified at that radius.

One row's bounds hold together with probability at least `confidence` (Bonferroni): the
failure probability 1 - confidence is halved between the images' bounds and the pixels', and
each half split evenly among them (`bound_alphas`). One set of samples serves every radius,
and a larger radius takes an order statistic further out at the same alpha, so no bound
tightens and no certified metric rises as the radius grows.

The certified metrics take each anomalous image (pixel) at its lower bound and each normal
one at its upper bound: AUROC and AUPRO fall when an anomalous score falls or a normal one
rises, and each score can sit anywhere in its interval whatever the others do, so no
perturbation within r (one per image) gives the smoothed detector a lower metric.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np
import torch
from scipy import stats

from pgray.core.scoring import EvalOutputs, progress_bar, test_loader
from pgray.core.smoothing import SmoothedDetector, point_index


def shifted_levels(percentile: float, radius: float, sigma: float) -> tuple[float, float]:
    """(low, high): the percentiles at the clean image that bound the `percentile` anywhere
    within L2 `radius`."""
    z = stats.norm.ppf(percentile)
    return float(stats.norm.cdf(z - radius / sigma)), float(stats.norm.cdf(z + radius / sigma))


def lower_index(samples: int, level: float, alpha: float) -> int | None:
    """The 0-based order statistic at or below the `level` percentile with probability
    >= 1 - alpha (the largest j with P(Binomial(n, level) <= j) <= alpha); None: none is."""
    j = np.arange(samples)
    ok = np.flatnonzero(stats.binom.cdf(j, samples, level) <= alpha)
    return int(ok[-1]) if ok.size else None


def upper_index(samples: int, level: float, alpha: float) -> int | None:
    """The 0-based order statistic at or above the `level` percentile with probability
    >= 1 - alpha (the smallest j with P(Binomial(n, level) > j) <= alpha); None: none is."""
    j = np.arange(samples)
    ok = np.flatnonzero(stats.binom.sf(j, samples, level) <= alpha)
    return int(ok[0]) if ok.size else None


def bound_alphas(confidence: float, n_images: int, n_pixels: int) -> tuple[float, float]:
    """Failure probability of each image bound and of each pixel bound of one row (all
    `n_pixels` pixels of each of the `n_images` images)."""
    half = (1.0 - confidence) / 2
    return half / n_images, half / (n_images * n_pixels)


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The order statistics of one radius: 0-based indices, None where unbounded."""

    radius: float
    level_low: float
    level_high: float
    image_lower: int | None
    image_upper: int | None
    pixel_lower: int | None
    pixel_upper: int | None


def radius_bounds(radii: Sequence[float], *, samples: int, percentile: float, sigma: float,
                  confidence: float, n_images: int, n_pixels: int) -> list[Bounds]:
    image_alpha, pixel_alpha = bound_alphas(confidence, n_images, n_pixels)
    out = []
    for r in radii:
        low, high = shifted_levels(percentile, r, sigma)
        out.append(Bounds(float(r), low, high, lower_index(samples, low, image_alpha),
                          upper_index(samples, high, image_alpha),
                          lower_index(samples, low, pixel_alpha),
                          upper_index(samples, high, pixel_alpha)))
    return out


def _at(sorted_values: torch.Tensor, index: int | None, fill: float) -> torch.Tensor:
    """The order statistic `index` along the last dim (`fill`, an infinity, where None)."""
    if index is None:
        return torch.full(sorted_values.shape[:-1], fill, device=sorted_values.device)
    return sorted_values[..., index]


def worst_bounds(sorted_values: torch.Tensor, anomalous: torch.Tensor, lower: int | None,
                 upper: int | None) -> torch.Tensor:
    """Anomalous entries at their lower bound, normal ones at their upper bound. sorted_values
    (B, n) or (B, P, n), samples last and sorted; anomalous (B,) or (B, P)."""
    return torch.where(anomalous, _at(sorted_values, lower, -torch.inf),
                       _at(sorted_values, upper, torch.inf))


class _Outputs:
    """Scores and maps of one setting (the point estimate, or one radius' bounds)."""

    def __init__(self) -> None:
        self.scores: list[torch.Tensor] = []
        self.maps: list[torch.Tensor] = []

    def add(self, scores: torch.Tensor, maps: torch.Tensor) -> None:
        self.scores.append(scores.float().cpu())
        self.maps.append(maps.float().cpu())

    def outputs(self, labels: np.ndarray, masks: np.ndarray) -> EvalOutputs:
        return EvalOutputs(scores=_finite(torch.cat(self.scores).numpy()), labels=labels,
                           maps=_finite(torch.cat(self.maps).numpy().reshape(masks.shape)),
                           masks=masks)


def _finite(values: np.ndarray) -> np.ndarray:
    """Infinite bounds as finite values below (above) every finite one: the metrics rank the
    same, and intervals can cut their bins."""
    finite = values[np.isfinite(values)]
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
    spread = max(float(high - low), 1.0)
    return np.nan_to_num(values, posinf=high + spread, neginf=low - spread).astype(np.float32)


@dataclasses.dataclass
class CertifiedSplit:
    """The smoothed detector on a split: its clean point estimate and, per radius, every
    image and pixel at its worst certified bound."""

    clean: EvalOutputs
    worst: dict[float, EvalOutputs]
    bounds: list[Bounds]
    time_s: float


def certify_split(smoothed: SmoothedDetector, dataset, radii: Sequence[float], *,
                  confidence: float, device: torch.device, progress: bool = True
                  ) -> CertifiedSplit:
    """Sample every image of the split once, and take from the same samples the point
    estimate and the bounds of every radius."""
    started = time.perf_counter()
    n_pixels = smoothed.img_size ** 2
    bounds = radius_bounds(radii, samples=smoothed.samples, percentile=smoothed.percentile,
                           sigma=smoothed.sigma, confidence=confidence,
                           n_images=len(dataset), n_pixels=n_pixels)
    point = point_index(smoothed.samples, smoothed.percentile)
    clean, worst = _Outputs(), {b.radius: _Outputs() for b in bounds}
    labels, masks = [], []
    bar = progress_bar(len(dataset), f"certifying, {smoothed.samples} samples per image", progress)
    group = smoothed.image_groups(len(dataset))
    for batch in test_loader(dataset, group, device):
        x = batch["image"].to(device, non_blocking=True)
        scores, maps = (v.sort(dim=-1).values for v in smoothed.sample_outputs(x))
        anomalous = batch["label"].to(device).reshape(-1) > 0.5
        pixels = smoothed.unit_labels(batch["mask"].to(device)) > 0.5
        clean.add(scores[:, point], maps[..., point])
        for b in bounds:
            worst[b.radius].add(worst_bounds(scores, anomalous, b.image_lower, b.image_upper),
                                worst_bounds(maps, pixels, b.pixel_lower, b.pixel_upper))
        labels.append(batch["label"].cpu())
        masks.append(batch["mask"][:, 0].cpu().to(torch.uint8))
        if bar:
            bar.update(x.shape[0])
    if bar:
        bar.close()
    y, m = torch.cat(labels).numpy(), torch.cat(masks).numpy()
    return CertifiedSplit(clean.outputs(y, m), {r: o.outputs(y, m) for r, o in worst.items()},
                          bounds, time.perf_counter() - started)
