"""Foreground-aware self cut-paste pseudo-anomalies (docs/method.md, "Pseudo-anomalies").

One call makes exactly one pseudo-anomaly: a rectangle of the image, inside the dilated
foreground, is cut, transformed (severity level, random ops, colour jitter), rotated with
expansion, resized back and pasted at another place in the foreground with the rotated shape
as alpha. All randomness comes from the numpy Generator passed in, so a call is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from pgray.config.pseudo import LEVELS, PseudoConfig
from pgray.errors import ConfigError
from pgray.pseudo.ops import apply_op

REFERENCE_SIZE = 224  # the size bounds in the config are given at this image size
_CHUNK = 32  # placement attempts checked per vectorised step
MIN_SIDE = 2  # smallest side after scaling: a 1-px crop cannot be rotated meaningfully


@dataclass(frozen=True)
class Placement:
    """Source and destination top-left corners and the rectangle size, in pixels."""

    src: tuple[int, int]  # (y, x)
    dst: tuple[int, int]  # (y, x)
    h: int
    w: int
    fallback: bool  # True when no attempt fitted and the fallback square was used


@dataclass
class PseudoSample:
    image: torch.Tensor  # (3, H, W) float, same dtype as the input
    pixel_mask: torch.Tensor  # (H, W) float32 in {0, 1}
    patch_labels: torch.Tensor  # (gh * gw,) float32 in {0, 1}
    level: str
    ops: list[str]
    placement: Placement


def dilate(foreground: np.ndarray, iterations: int) -> np.ndarray:
    """Binary dilation with a 3 x 3 square kernel; an empty foreground counts as the whole image."""
    fg = foreground.astype(np.uint8)
    if iterations > 0:
        fg = cv2.dilate(fg, np.ones((3, 3), np.uint8), iterations=iterations)
    if not fg.any():
        fg[:] = 1
    return fg.astype(bool)


def _runs(fg: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Consecutive foreground pixels from each (y[i], x[i]) to the right (0 on background)."""
    rows = fg[y]  # only the rows of the queried points, not the whole image
    width = fg.shape[1]
    stop = ~rows & (np.arange(width) >= x[:, None])
    first = np.where(stop.any(axis=1), stop.argmax(axis=1), width)
    return first - x


def place(
    fg: np.ndarray, lo: int, hi: int | None, attempts: int, rng: np.random.Generator
) -> Placement:
    """Pick source / destination rectangles inside the (dilated) foreground `fg`.

    Every attempt's random numbers are drawn up front (so the rng stream does not depend on
    when one fits) and checked in small vectorised chunks, first fit wins. Side lengths are
    uniform in [lo, run], where run is the foreground run from both points (right for the
    width, down for the height), capped at hi.
    """
    wid = fg.shape[1]
    points = np.flatnonzero(fg)
    sy, sx = np.divmod(points[rng.integers(0, points.size, attempts)], wid)
    dy, dx = np.divmod(points[rng.integers(0, points.size, attempts)], wid)
    uw, uh = rng.random(attempts), rng.random(attempts)
    fg_t = fg.T
    for start in range(0, attempts, _CHUNK):
        c = slice(start, start + _CHUNK)
        max_w = np.minimum(_runs(fg, sy[c], sx[c]), _runs(fg, dy[c], dx[c]))
        max_h = np.minimum(_runs(fg_t, sx[c], sy[c]), _runs(fg_t, dx[c], dy[c]))
        if hi is not None:
            max_w, max_h = np.minimum(max_w, hi), np.minimum(max_h, hi)
        w = lo + np.floor(uw[c] * (max_w - lo + 1)).astype(np.int64)
        h = lo + np.floor(uh[c] * (max_h - lo + 1)).astype(np.int64)
        for i in np.flatnonzero((max_w >= lo) & (max_h >= lo)).tolist():
            p = Placement(
                (int(sy[c][i]), int(sx[c][i])),
                (int(dy[c][i]), int(dx[c][i])),
                int(h[i]),
                int(w[i]),
                False,
            )
            # The runs only bound the first row / column; a non-convex foreground can still
            # cut into the rectangle, so check every pixel of both.
            if _inside(fg, p.src, p.h, p.w) and _inside(fg, p.dst, p.h, p.w):
                return p
    return _fallback(fg, lo, rng)


def _inside(fg: np.ndarray, corner: tuple[int, int], h: int, w: int) -> bool:
    y, x = corner
    return bool(fg[y : y + h, x : x + w].all())


def _fallback(fg: np.ndarray, side: int, rng: np.random.Generator) -> Placement:
    """A side x side square at random corners, preferring corners in the foreground."""
    hgt, wid = fg.shape
    corners = np.flatnonzero(fg[: hgt - side + 1, : wid - side + 1])
    if corners.size == 0:
        corners = np.arange((hgt - side + 1) * (wid - side + 1))
    src, dst = corners[rng.integers(0, corners.size, 2)]
    sy, sx = divmod(int(src), wid - side + 1)
    dy, dx = divmod(int(dst), wid - side + 1)
    return Placement((sy, sx), (dy, dx), side, side, True)


def patch_labels(mask: np.ndarray, patch_size: int, rule: str, fraction: float) -> np.ndarray:
    """Per-patch labels (row-major over the patch grid) from a binary (H, W) mask."""
    hgt, wid = mask.shape
    cells = mask.reshape(hgt // patch_size, patch_size, wid // patch_size, patch_size)
    covered = cells.sum(axis=(1, 3), dtype=np.int64) / float(patch_size * patch_size)
    # "any" is "fraction" with threshold 0: one pixel makes the patch anomalous.
    threshold = 0.0 if rule == "any" else fraction
    return (covered > threshold).reshape(-1).astype(np.float32)


def _box_patch_labels(
    mask: np.ndarray, box: tuple[int, int, int, int], patch_size: int, rule: str, fraction: float
) -> np.ndarray:
    """patch_labels of a mask that is zero outside `box` (y, x, h, w), looking only at the box."""
    y, x, h, w = box
    ps = patch_size
    y0, x0 = y // ps * ps, x // ps * ps
    y1, x1 = -(-(y + h) // ps) * ps, -(-(x + w) // ps) * ps  # ceil to the patch grid
    grid = np.zeros((mask.shape[0] // ps, mask.shape[1] // ps), dtype=np.float32)
    window = patch_labels(mask[y0:y1, x0:x1], ps, rule, fraction)
    grid[y0 // ps : y1 // ps, x0 // ps : x1 // ps] = window.reshape(
        (y1 - y0) // ps, (x1 - x0) // ps
    )
    return grid.reshape(-1)


def rotate_expand(crop: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate a crop by `angle` degrees on an expanded canvas, then resize back to its size.

    Returns the rotated crop (uint8) and its shape as a bool alpha mask of the same size.
    """
    h, w = crop.shape[:2]
    rad = np.deg2rad(angle)
    cos, sin = abs(np.cos(rad)), abs(np.sin(rad))
    out_w = max(1, int(np.ceil(w * cos + h * sin - 1e-6)))
    out_h = max(1, int(np.ceil(w * sin + h * cos - 1e-6)))
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, 1.0)
    m[:, 2] += ((out_w - w) / 2.0, (out_h - h) / 2.0)
    # Replicated borders keep black from bleeding into the edge pixels the alpha keeps.
    rotated = cv2.warpAffine(
        crop, m, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    shape = cv2.warpAffine(
        np.ones((h, w), np.float32),
        m,
        (out_w, out_h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0.0,
    )
    rotated = cv2.resize(rotated, (w, h), interpolation=cv2.INTER_LINEAR)
    alpha = cv2.resize(shape, (w, h), interpolation=cv2.INTER_LINEAR) > 0.5
    if not alpha.any():  # a tiny crop at an awkward angle: paste it unrotated instead
        return crop, np.ones((h, w), bool)
    return rotated, alpha


class PseudoAnomalyGenerator:
    """Callable making one foreground-aware pseudo-anomaly per image (see INTERFACES.md).

    Holds only the config and sizes, so it pickles into DataLoader workers.
    """

    def __init__(self, cfg: PseudoConfig, img_size: int, patch_size: int) -> None:
        cfg.validate()
        if patch_size < 1 or img_size % patch_size:
            raise ConfigError(
                f"patch_size: img_size {img_size} is not a multiple of patch size {patch_size}"
            )
        self.cfg = cfg
        self.img_size = img_size
        self.patch_size = patch_size
        scale = img_size / REFERENCE_SIZE
        self.min_side = min(img_size, max(MIN_SIDE, round(cfg.min_size * scale)))
        self.max_side = (
            None if cfg.max_size is None else max(self.min_side, round(cfg.max_size * scale))
        )
        # Dilation is given in pixels at 224 too: 10 px of growth at 224 is 3 px at 64.
        self.dilation = round(cfg.dilation_iterations * scale)

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    def __call__(
        self, image: torch.Tensor, foreground: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = self.sample(image, foreground, rng)
        return s.image, s.pixel_mask, s.patch_labels

    def sample(
        self,
        image: torch.Tensor,
        foreground: torch.Tensor,
        rng: np.random.Generator,
        level: str | None = None,
    ) -> PseudoSample:
        """Like __call__, plus what was drawn; `level` forces a severity (benchmarks, tests)."""
        self._check_inputs(image, foreground)
        fg = dilate(_as_bool_mask(foreground), self.dilation)
        p = place(fg, self.min_side, self.max_side, self.cfg.max_attempts, rng)
        level_idx = self._draw_level(rng) if level is None else LEVELS.index(level)
        ops = self._draw_ops(level_idx, rng)
        crop = _to_uint8(image[:, p.src[0] : p.src[0] + p.h, p.src[1] : p.src[1] + p.w])
        for name in ops:
            crop = apply_op(name, crop, level_idx, self.cfg, rng)
        angle = float(rng.uniform(-self.cfg.rotation, self.cfg.rotation))
        patch, alpha = rotate_expand(crop, angle)
        out, mask = _paste(image, patch, alpha, p.dst)
        box = (p.dst[0], p.dst[1], p.h, p.w)
        labels = _box_patch_labels(
            mask, box, self.patch_size, self.cfg.patch_label_rule, self.cfg.patch_label_fraction
        )
        return PseudoSample(
            image=out,
            pixel_mask=torch.from_numpy(mask.astype(np.float32)),
            patch_labels=torch.from_numpy(labels),
            level=LEVELS[level_idx],
            ops=ops,
            placement=p,
        )

    def _check_inputs(self, image: torch.Tensor, foreground: torch.Tensor) -> None:
        if image.ndim != 3 or image.shape[0] != 3 or tuple(image.shape[1:]) != (self.img_size,) * 2:
            raise ValueError(
                f"image must be (3, {self.img_size}, {self.img_size}), got {tuple(image.shape)}"
            )
        if (
            tuple(foreground.shape[-2:]) != tuple(image.shape[1:])
            or foreground.numel() != image[0].numel()
        ):
            raise ValueError(
                f"foreground must be (H, W) or (1, H, W) like the image, got {tuple(foreground.shape)}"
            )

    def _draw_level(self, rng: np.random.Generator) -> int:
        probs = np.asarray(self.cfg.severity_probs, dtype=np.float64)
        return int(rng.choice(len(LEVELS), p=probs / probs.sum()))

    def _draw_ops(self, level: int, rng: np.random.Generator) -> list[str]:
        """0..max_ops ops without replacement, with colour jitter inserted at a random position."""
        pool = self.cfg.level_ops[level]
        n = int(rng.integers(0, self.cfg.max_ops[level] + 1))
        ops = [pool[i] for i in rng.choice(len(pool), size=n, replace=False).tolist()]
        if self.cfg.always_color_jitter:
            ops.insert(int(rng.integers(0, n + 1)), "color_jitter")
        return ops


def _as_bool_mask(foreground: torch.Tensor) -> np.ndarray:
    fg = foreground.detach().cpu().reshape(foreground.shape[-2:]).numpy()
    return fg if fg.dtype == np.bool_ else fg > 0.5


def _to_uint8(region: torch.Tensor) -> np.ndarray:
    """(3, h, w) float [0, 1] -> contiguous (h, w, 3) uint8 RGB."""
    arr = region.detach().cpu().permute(1, 2, 0).mul(255.0).round_().clamp_(0, 255)
    return np.ascontiguousarray(arr.to(torch.uint8).numpy())


def _paste(
    image: torch.Tensor, patch: np.ndarray, alpha: np.ndarray, dst: tuple[int, int]
) -> tuple[torch.Tensor, np.ndarray]:
    """Write patch pixels where alpha holds; every other pixel keeps its exact input value."""
    h, w = alpha.shape
    y, x = dst
    out = image.detach().clone()
    region = out[:, y : y + h, x : x + w]
    patch_t = (
        torch.from_numpy(patch).permute(2, 0, 1).to(device=out.device, dtype=out.dtype) / 255.0
    )
    alpha_t = torch.from_numpy(alpha).to(out.device)
    out[:, y : y + h, x : x + w] = torch.where(alpha_t, patch_t, region)
    mask = np.zeros(image.shape[1:], dtype=np.uint8)
    mask[y : y + h, x : x + w] = alpha
    return out, mask
