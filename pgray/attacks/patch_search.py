"""The patch threat's black-box member: a seeded random search over places and fills of the
square (docs/method.md, "Threat models").

It asks the detector for scores only, never a gradient, so a detector whose gradients mislead
or vanish (a step function, features under no_grad) is attacked as well as any other: when it
beats the white-box patch PGD on the same images, the gradients are masked
(`blackbox_stronger`). Each query puts one square of the threat's size at a random place of
each image and fills it with one of four kinds, in turn:

- uniform noise in [0, 1];
- binary noise (every value 0 or 1: the extremes of the box);
- one extreme colour (each channel 0 or 1), drawn per image;
- a copy of another square of the same image (normal texture pasted over a defect).

Per image the query that most raises the objective is kept. Places and fills come from a
generator seeded by the attack's seed: the same seed gives the same images.
"""

from __future__ import annotations

import torch
from torch import nn

from pgray.attacks.objectives import make_objective
from pgray.attacks.patch import patch_corners, patch_mask, patch_side
from pgray.attacks.trajectory import (
    Best,
    eval_mode,
    frozen,
    judged_objective,
    prepare_inputs,
)
from pgray.config import AttackConfig
from pgray.core.device import autocast

FILLS = ("uniform", "binary", "colour", "copy")


def _shifted_copy(x0: torch.Tensor, to: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W): each image moved so that its square at `source` (B, 2) lands at `to`
    (only the square at `to` is used, so edge clamping outside it never shows)."""
    n, _, height, width = x0.shape
    ys = torch.arange(height, device=x0.device).view(1, height, 1)
    xs = torch.arange(width, device=x0.device).view(1, 1, width)
    rows = (ys - to[:, 0].view(-1, 1, 1) + source[:, 0].view(-1, 1, 1)).clamp(0, height - 1)
    cols = (xs - to[:, 1].view(-1, 1, 1) + source[:, 1].view(-1, 1, 1)).clamp(0, width - 1)
    images = torch.arange(n, device=x0.device).view(-1, 1, 1)
    return x0[images, :, rows, cols].permute(0, 3, 1, 2)


def _fill(kind: str, x0: torch.Tensor, corners: torch.Tensor, side: int,
          gen: torch.Generator) -> torch.Tensor:
    """(B, C, H, W) values for the square (read inside it only)."""
    n, channels, height, width = x0.shape
    like = dict(generator=gen, device=x0.device)
    if kind == "uniform":
        return torch.rand(x0.shape, dtype=x0.dtype, **like)
    if kind == "binary":
        return (torch.rand(x0.shape, **like) < 0.5).to(x0.dtype)
    if kind == "colour":
        colour = torch.randint(0, 2, (n, channels, 1, 1), **like).to(x0.dtype)
        return colour.expand_as(x0)
    source = patch_corners(n, 1, side, height, width, gen)[0]
    return _shifted_copy(x0, corners, source)


def patch_random_search(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                        cfg: AttackConfig, seed: int = 0,
                        image_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Per image, the most harmful of `cfg.steps` random (place, fill) queries of a square
    of area `cfg.eps` (detached, float32, on the images' device)."""
    cfg.validate()
    if cfg.eps == 0:
        return images.detach().clone()
    _, x0, labels = prepare_inputs(model, images, labels)
    _, _, height, width = x0.shape
    side = patch_side(cfg.eps, height, width)
    judge = make_objective(labels, cfg.objective, image_labels=image_labels)
    gen = torch.Generator(device=x0.device)
    gen.manual_seed(seed)
    best = Best(x0)
    with frozen(model), eval_mode(model), torch.no_grad():
        for query in range(cfg.steps):
            corners = patch_corners(x0.shape[0], 1, side, height, width, gen)[0]
            inside = patch_mask(corners, side, height, width)
            fill = _fill(FILLS[query % len(FILLS)], x0, corners, side, gen)
            x = torch.where(inside, fill, x0)
            best.update(x, judged_objective(model, x, judge, autocast(x0.device,
                                                                       cfg.precision)))
    return best.x.to(images.device)
