"""The transforms applied to the cut-out crop (docs/method.md, "Pseudo-anomalies").

Every op takes an (h, w, 3) uint8 RGB crop, the severity level index (0 light, 1 medium,
2 heavy), the config and a numpy Generator, and returns a new (h, w, 3) uint8 crop. They work
on the small crop only, with cv2 / vectorised numpy, so a call costs well under a millisecond.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from pgray.config.pseudo import PseudoConfig
from pgray.pseudo.noise import perlin

Op = Callable[[np.ndarray, int, PseudoConfig, np.random.Generator], np.ndarray]

# Seed of the shared elastic field when cfg.fixed_elastic_field reproduces the reference quirk.
FIXED_ELASTIC_SEED = 0x5EED


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _randint(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    return int(rng.integers(bounds[0], bounds[1] + 1))  # inclusive, as the table reads


def gaussian_blur(
    img: np.ndarray, level: int, cfg: PseudoConfig, rng: np.random.Generator
) -> np.ndarray:
    sigma = _uniform(rng, cfg.blur_radius[level])
    if sigma <= 0:
        return img.copy()
    return cv2.GaussianBlur(
        img, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101
    )


def _remap(img: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
    return cv2.remap(
        img,
        map_x.astype(np.float32),
        map_y.astype(np.float32),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT_101,
    )


def elastic(img: np.ndarray, level: int, cfg: PseudoConfig, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    alpha = _uniform(rng, cfg.elastic_alpha[level])
    # The reference reuses one field on every call; that quirk is an option, off by default.
    field_rng = np.random.default_rng(FIXED_ELASTIC_SEED) if cfg.fixed_elastic_field else rng
    raw = field_rng.uniform(-1.0, 1.0, size=(2, h, w)).astype(np.float32)
    sigma = cfg.elastic_sigma
    dx = cv2.GaussianBlur(raw[0], (0, 0), sigma, borderType=cv2.BORDER_CONSTANT) * alpha
    dy = cv2.GaussianBlur(raw[1], (0, 0), sigma, borderType=cv2.BORDER_CONSTANT) * alpha
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return _remap(img, xs + dx, ys + dy)


def swirl(img: np.ndarray, level: int, cfg: PseudoConfig, rng: np.random.Generator) -> np.ndarray:
    """Swirl around the crop centre: angle strength * exp(-rho / r), r = ln 2 * radius / 5."""
    h, w = img.shape[:2]
    strength = _uniform(rng, cfg.swirl_strength[level])
    radius = min(h, w) // cfg.swirl_radius_divisor
    if radius < 1:
        return img.copy()
    decay = np.log(2.0) * radius / 5.0
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    ry, rx = ys - cy, xs - cx
    rho = np.sqrt(rx * rx + ry * ry)
    theta = np.arctan2(ry, rx) + strength * np.exp(-rho / decay)
    return _remap(img, cx + rho * np.cos(theta), cy + rho * np.sin(theta))


def jpeg(img: np.ndarray, level: int, cfg: PseudoConfig, rng: np.random.Generator) -> np.ndarray:
    quality = _randint(rng, cfg.jpeg_quality[level])
    ok, buf = cv2.imencode(
        ".jpg", np.ascontiguousarray(img[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:  # cv2 cannot encode: leave the crop as it is rather than fail a training step
        return img.copy()
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


def torn_lines(
    img: np.ndarray, level: int, cfg: PseudoConfig, rng: np.random.Generator
) -> np.ndarray:
    """One-pixel straight lines between random points, each channel 0 or 255."""
    h, w = img.shape[:2]
    n = _randint(rng, cfg.torn_lines[level])
    ends = rng.integers(0, [w, h, w, h], size=(n, 4))
    colours = rng.integers(0, 2, size=(n, 3)) * 255
    out = img.copy()
    for (x0, y0, x1, y1), colour in zip(ends.tolist(), colours.tolist()):
        cv2.line(out, (x0, y0), (x1, y1), colour, thickness=1, lineType=cv2.LINE_8)
    return out


def perlin_fill(
    img: np.ndarray, level: int, cfg: PseudoConfig, rng: np.random.Generator
) -> np.ndarray:
    """Paint the pixels where 6-octave Perlin noise (mapped to 0..255) exceeds a threshold."""
    h, w = img.shape[:2]
    scale = _uniform(rng, cfg.perlin_scale[level])
    threshold = _uniform(rng, cfg.perlin_threshold[level])
    noise = (perlin(h, w, scale, cfg.perlin_octaves, rng) + 1.0) * 127.5
    colour = rng.integers(0, 256, size=3).astype(np.uint8)
    out = img.copy()
    out[noise > threshold] = colour
    return out


def random_erase(
    img: np.ndarray, level: int, cfg: PseudoConfig, rng: np.random.Generator
) -> np.ndarray:
    """Fill a few random boxes (area a fraction of the crop, random aspect) with random colours."""
    h, w = img.shape[:2]
    out = img.copy()
    for _ in range(_randint(rng, cfg.erase_boxes[level])):
        area = _uniform(rng, cfg.erase_area[level]) * h * w
        aspect = _uniform(rng, cfg.erase_aspect)
        bh = int(np.clip(round(np.sqrt(area * aspect)), 1, h))
        bw = int(np.clip(round(np.sqrt(area / aspect)), 1, w))
        y0 = int(rng.integers(0, h - bh + 1))
        x0 = int(rng.integers(0, w - bw + 1))
        out[y0 : y0 + bh, x0 : x0 + bw] = rng.integers(0, 256, size=3).astype(np.uint8)
    return out


_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601-2, as torchvision


def _gray(x: np.ndarray) -> np.ndarray:
    return x @ _LUMA


def color_jitter(
    img: np.ndarray, level: int, cfg: PseudoConfig, rng: np.random.Generator
) -> np.ndarray:
    """Brightness, contrast, saturation (factor U(max(0,1-s), 1+s)) and hue, in random order."""
    s = _uniform(rng, cfg.jitter_strength[level])
    hue = _uniform(rng, cfg.jitter_hue[level])
    factors = rng.uniform(max(0.0, 1.0 - s), 1.0 + s, size=3)
    shift = float(rng.uniform(-hue, hue))
    x = img.astype(np.float32) / 255.0
    for step in rng.permutation(4).tolist():
        if step == 0:
            x = x * factors[0]
        elif step == 1:
            x = factors[1] * x + (1.0 - factors[1]) * float(_gray(x).mean())
        elif step == 2:
            x = factors[2] * x + (1.0 - factors[2]) * _gray(x)[..., None]
        else:
            hsv = cv2.cvtColor(np.clip(x, 0.0, 1.0).astype(np.float32), cv2.COLOR_RGB2HSV)
            hsv[..., 0] = np.mod(hsv[..., 0] + shift * 360.0, 360.0)  # float HSV: H in [0, 360)
            x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        x = np.clip(x, 0.0, 1.0)
    return np.rint(x * 255.0).astype(np.uint8)


OPS: dict[str, Op] = {
    "gaussian_blur": gaussian_blur,
    "elastic": elastic,
    "swirl": swirl,
    "jpeg": jpeg,
    "torn_lines": torn_lines,
    "perlin_fill": perlin_fill,
    "random_erase": random_erase,
    "color_jitter": color_jitter,
}


def apply_op(
    name: str, img: np.ndarray, level: int, cfg: PseudoConfig, rng: np.random.Generator
) -> np.ndarray:
    """Run op `name` on a uint8 (h, w, 3) crop; the result has the same shape and dtype."""
    out = OPS[name](img, level, cfg, rng)
    assert out.shape == img.shape and out.dtype == np.uint8, name
    return out
