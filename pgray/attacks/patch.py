"""The patch threat: an adversarial square sticker (docs/method.md, "Threat models").

The attacker owns one square whose area is a fraction `eps` of the image; inside it every pixel
is free in [0, 1], outside it nothing changes. The patch is optimised by PGD (sign steps on its
pixels) at `positions` places per image, drawn from a generator seeded by the attack's seed, and
each image keeps the place and patch that harm its objective most (best iterate).

It is pgray's PGD trajectory with a box per place: the bounds are [0, 1] inside the square and
[x0, x0] outside, so the projection (one clamp) pins every outside pixel to its clean value
exactly, and the gradient outside the square is never used.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pgray.attacks.trajectory import Best, TrajectoryObjectives, judged_objective, pgd_trajectory
from pgray.config import AttackConfig
from pgray.core.device import autocast


def patch_side(eps: float, height: int, width: int) -> int:
    """Side in pixels of the square whose area is closest to eps * height * width (a whole
    square side; ties go to the smaller square). Rounding the side itself is not the same: at
    32 px, eps 0.02 asks for 20.5 pixels, side 5 covers 25 and side 4 covers 16, nearer."""
    target = eps * height * width
    below = max(1, min(height, width, math.floor(math.sqrt(target))))
    above = min(height, width, below + 1)
    return above if abs(above * above - target) < abs(below * below - target) else below


def patch_area(eps: float, height: int, width: int) -> float:
    """The fraction of a height x width image the patch of budget eps really covers."""
    return patch_side(eps, height, width) ** 2 / (height * width)


def patch_corners(n_images: int, n_positions: int, side: int, height: int, width: int,
                  gen: torch.Generator) -> torch.Tensor:
    """(positions, images, 2) top-left corners (row, column), uniform over the image."""
    rows = torch.randint(0, height - side + 1, (n_positions, n_images), generator=gen,
                         device=gen.device)
    cols = torch.randint(0, width - side + 1, (n_positions, n_images), generator=gen,
                         device=gen.device)
    return torch.stack([rows, cols], dim=-1)


def patch_mask(corners: torch.Tensor, side: int, height: int, width: int) -> torch.Tensor:
    """(B, 1, H, W) bool: each image's square at its corner (corners (B, 2))."""
    ys = torch.arange(height, device=corners.device).view(1, height, 1)
    xs = torch.arange(width, device=corners.device).view(1, 1, width)
    r0, c0 = corners[:, 0].view(-1, 1, 1), corners[:, 1].view(-1, 1, 1)
    inside = (ys >= r0) & (ys < r0 + side) & (xs >= c0) & (xs < c0 + side)
    return inside.unsqueeze(1)


def patch_pgd(model: nn.Module, x0: torch.Tensor, objectives: TrajectoryObjectives,
              cfg: AttackConfig, seed: int, on_step=None) -> torch.Tensor:
    """Per image, the most harmful (place, patch) over `cfg.positions` places x
    `cfg.restarts` starts, each a PGD trajectory of `cfg.steps` sign steps, best iterate kept."""
    _, _, height, width = x0.shape
    side = patch_side(cfg.eps, height, width)
    gen = torch.Generator(device=x0.device)
    gen.manual_seed(seed)
    corners = patch_corners(x0.shape[0], cfg.positions, side, height, width, gen)
    cast = lambda: autocast(x0.device, cfg.precision)  # noqa: E731 - one context per use
    overall = Best(x0)
    run = 0
    for place in corners:
        inside = patch_mask(place, side, height, width)
        lo = torch.where(inside, torch.zeros_like(x0), x0)
        hi = torch.where(inside, torch.ones_like(x0), x0)
        for r in range(cfg.restarts):
            if cfg.random_start or r > 0:
                noise = torch.rand(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
                start = lo + noise * (hi - lo)  # outside the square hi - lo is 0: x0 exactly
            else:
                start = x0.clone()
            offset = run * cfg.steps
            step_cb = None if on_step is None else (lambda i, o=offset: on_step(o + i + 1))
            x, best = pgd_trajectory(model, start, (lo, hi), cfg.alpha_unit, cfg.steps,
                                     objectives, cast, cfg.keep_best, step_cb)
            final = judged_objective(model, x, objectives.judge, cast())
            if best is not None:
                best.update(x, final)
                x, final = best.x, best.obj
            overall.update(x, final)
            run += 1
    return overall.x
