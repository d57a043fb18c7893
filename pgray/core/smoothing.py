"""Percentile smoothing of any pgray detector (docs/method.md, "Certification"; Chiang et al.
2020, "Detection as Regression").

`SmoothedDetector`: the image score and every pixel of the anomaly map are the `percentile`
(the median by default) of the base detector's over `samples` Gaussian draws
x + sigma * noise, the noise at the model's own input size on [0, 1] pixels. Draw j is the
same for every image and every call (seeded per block of draws, so whatever the batching):
two images' smoothed scores differ by their images only, and a linear detector keeps its
ranking exactly. Draws go through the model in batches of `batch_size` noisy images. Not
differentiable: attacks step along `NoiseExpectation`.

The noisy input is not clipped to [0, 1]. The certificate holds for any base function,
clipped or not; but clipping folds the noise onto 0 and 1 where an image is dark or bright,
so the noise a pixel sees would depend on its value. Unclipped, every pixel sees the same
noise, a linear detector's smoothed score is its base score shifted by a constant (the known
answer the tests check against), and the detectors take any real input (they normalise it
themselves).

`NoiseExpectation`: the attacks' view of the same detector, the mean of the base scores and
maps over `samples` fresh draws per call (expectation over transformation, EOT),
differentiable in x. Its draws come from torch's global generator, which the attacks seed.

Both show their units as the pixel map at the input size, flattened: a localization attack
and the per-pixel certificate read the same pixels, whatever the base's units (PatchGuard's
patch logits, a baseline's map).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from pgray.attacks.objectives import detector_outputs
from pgray.detectors.base import PixelMapDetector
from pgray.errors import ConfigError

DRAWS_PER_SEED = 16  # draws generated from one seed: draw j is the same whatever the batching
# bytes of noisy maps held at once (images x samples x pixels, float32); sorting them takes
# three times as much again (the sorted copy and its int64 indices)
SAMPLE_MEMORY = 128 * 2 ** 20


def point_index(samples: int, percentile: float) -> int:
    """The 0-based order statistic taken as the empirical percentile: the smallest sample
    with at least `percentile` of the samples at or below it (the lower median for even n)."""
    return min(samples - 1, max(0, math.ceil(percentile * samples) - 1))


class _Noised(PixelMapDetector):
    """A base detector seen through Gaussian noise; units: its pixel map, flattened."""

    def __init__(self, base: nn.Module, sigma: float) -> None:
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.base = base
        self.img_size = int(base.img_size)
        self.sigma = float(sigma)

    def base_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The base's image scores (B,) and pixel maps (B, H * W), float32."""
        scores, units = detector_outputs(self.base, x)
        if scores is None:
            raise ConfigError("smoothing needs a detector with image scores (score(x) or"
                              " image_scores(units))")
        return scores, self.base.anomaly_maps(units).float().flatten(1)

    def noised(self, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Base outputs at x + noise for every image and draw: scores (B, m), maps (B, m, P).
        noise: (m, 3, H, W) shared by the images, or (B, m, 3, H, W) one set per image."""
        batch, draws = x.shape[0], noise.shape[-4]
        scores, maps = self.base_outputs((x.unsqueeze(1) + noise).flatten(0, 1))
        return scores.reshape(batch, draws), maps.reshape(batch, draws, -1)


class SmoothedDetector(_Noised):
    """The `percentile` of the base scores and maps over `samples` seeded Gaussian draws."""

    def __init__(self, base: nn.Module, *, sigma: float, samples: int,
                 percentile: float = 0.5, batch_size: int = 256, seed: int = 0) -> None:
        super().__init__(base, sigma)
        if samples < 1 or batch_size < 1 or not 0 < percentile < 1:
            raise ValueError(f"samples {samples} and batch_size {batch_size} must be >= 1,"
                             f" percentile {percentile} in (0, 1)")
        self.samples, self.percentile = int(samples), float(percentile)
        self.batch_size, self.seed = int(batch_size), int(seed)

    def _draws(self, first: int, count: int, shape: tuple[int, ...], device: torch.device
               ) -> torch.Tensor:
        """Draws first .. first + count - 1, (count, *shape), scaled by sigma."""
        blocks = range(first // DRAWS_PER_SEED, (first + count - 1) // DRAWS_PER_SEED + 1)
        gen = torch.Generator(device=device)
        parts = []
        for block in blocks:
            state = np.random.SeedSequence([self.seed, block]).generate_state(1)[0]
            gen.manual_seed(int(state))
            parts.append(torch.randn((DRAWS_PER_SEED, *shape), generator=gen, device=device))
        start = first - blocks[0] * DRAWS_PER_SEED
        return torch.cat(parts)[start:start + count] * self.sigma

    def image_groups(self, batch: int) -> int:
        """Images whose noisy maps are held at once (all `samples` of each)."""
        per_image = self.samples * self.img_size ** 2 * 4
        return max(1, min(batch, SAMPLE_MEMORY // per_image))

    def draws(self, x: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """(first draw, draws) in batches of about `batch_size` noisy images of x's batch."""
        per_forward = max(1, self.batch_size // x.shape[0])
        for first in range(0, self.samples, per_forward):
            count = min(per_forward, self.samples - first)
            yield first, self._draws(first, count, tuple(x.shape[1:]), x.device)

    @torch.no_grad()
    def sample_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Base scores (B, n) and maps (B, P, n) at every draw, draws last (each image's and
        pixel's samples contiguous, for order statistics). Hold B <= `image_groups(B)`
        images."""
        scores = torch.empty(x.shape[0], self.samples, device=x.device)
        maps = torch.empty(x.shape[0], self.img_size ** 2, self.samples, device=x.device)
        for first, noise in self.draws(x):
            s, m = self.noised(x, noise)
            scores[:, first:first + noise.shape[0]] = s
            maps[:, :, first:first + noise.shape[0]] = m.transpose(1, 2)
        return scores, maps

    @torch.no_grad()
    def maps_and_scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = point_index(self.samples, self.percentile) + 1  # kthvalue counts from 1
        scores, maps = [], []
        for group in x.split(self.image_groups(x.shape[0])):
            s, m = self.sample_outputs(group)
            scores.append(s.kthvalue(k, dim=-1).values)
            maps.append(m.kthvalue(k, dim=-1).values)
        side = self.img_size
        return torch.cat(maps).reshape(-1, 1, side, side), torch.cat(scores)


class NoiseExpectation(_Noised):
    """The mean base score and map over `samples` fresh draws per image and call (EOT)."""

    def __init__(self, base: nn.Module, *, sigma: float, samples: int) -> None:
        super().__init__(base, sigma)
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        self.samples = int(samples)

    def maps_and_scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn((x.shape[0], self.samples, *x.shape[1:]), device=x.device,
                            dtype=x.dtype) * self.sigma
        scores, maps = self.noised(x, noise)
        side = self.img_size
        return maps.mean(dim=1).reshape(-1, 1, side, side), scores.mean(dim=1)
