"""Drawing the generated dataset's images: normal scenes of each category and their defects,
with exact masks (vectorised numpy on a pixel-centre grid). `pgray.data.synthetic` writes them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

SYNTHETIC_CATEGORIES: tuple[str, ...] = ("weave", "grain", "disc", "gear")
TEXTURES: tuple[str, ...] = ("weave", "grain")
DEFECTS: dict[str, tuple[str, ...]] = {
    "weave": ("hole", "stain", "scratch", "contamination"),
    "grain": ("crack", "scratch", "stain", "hole"),
    "disc": ("scratch", "stain", "missing_piece", "contamination"),
    "gear": ("missing_piece", "crack", "hole", "contamination"),
}
# Bump when the drawing changes, so cached demo datasets are regenerated.
GENERATOR_VERSION = 1
NOISE_SIGMA = 0.015

Array = np.ndarray


@dataclass
class Scene:
    """A noise-free rendering: image (S,S,3) float in [0,1], foreground (S,S) bool, and what
    lies behind the object (used to cut missing pieces out of objects)."""

    image: Array
    foreground: Array
    background: Array


def _grid(size: int) -> tuple[Array, Array]:
    # Pixel centres, so geometry (and masks) do not shift with the image size.
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    return yy, xx


def _lighting(rng: np.random.Generator, yy: Array, xx: Array, size: int) -> Array:
    """Uneven illumination: overall level times a linear gradient, (S,S,1)."""
    level = rng.uniform(0.85, 1.15)
    gy, gx = rng.uniform(-0.3, 0.3, size=2)
    field = level * (1 + gx * (xx / size - 0.5) + gy * (yy / size - 0.5))
    return field[..., None]


def _jitter(rng: np.random.Generator, colour: tuple[float, float, float], amount: float) -> Array:
    return np.clip(np.asarray(colour) * rng.uniform(1 - amount, 1 + amount, size=3), 0, 1)


def _smooth_noise(rng: np.random.Generator, yy: Array, xx: Array, size: int, amp: float) -> Array:
    """A smooth random field: a few low-frequency waves with random direction and phase."""
    out = np.zeros_like(xx)
    for _ in range(4):
        fy, fx = rng.uniform(-3, 3, size=2)
        out += np.sin(2 * np.pi * (fx * xx + fy * yy) / size + rng.uniform(0, 2 * np.pi))
    return amp * out / 4


def _weave(rng: np.random.Generator, size: int) -> Scene:
    yy, xx = _grid(size)
    period = size / rng.uniform(6, 9)
    theta = rng.uniform(-0.15, 0.15)
    a = (xx * np.cos(theta) + yy * np.sin(theta)) / period + rng.uniform(0, 1)
    b = (-xx * np.sin(theta) + yy * np.cos(theta)) / period + rng.uniform(0, 1)
    # Basket weave: alternate cells show the warp or the weft thread on top.
    over = (np.floor(a) + np.floor(b)) % 2 == 0
    thread = np.where(
        over, 0.55 + 0.4 * np.sin(np.pi * (a % 1)), 0.45 + 0.4 * np.sin(np.pi * (b % 1))
    )
    colour = _jitter(rng, (0.78, 0.68, 0.52), 0.06)
    image = thread[..., None] * colour * _lighting(rng, yy, xx, size)
    full = np.ones((size, size), bool)
    return Scene(np.clip(image, 0, 1), full, image.copy())


def _grain(rng: np.random.Generator, size: int) -> Scene:
    yy, xx = _grid(size)
    # Rings around a centre far outside the image look like planks' growth lines.
    angle = rng.uniform(0, 2 * np.pi)
    dist = size * rng.uniform(1.5, 3.0)
    cy, cx = size / 2 + dist * np.sin(angle), size / 2 + dist * np.cos(angle)
    radius = np.hypot(yy - cy, xx - cx) + _smooth_noise(rng, yy, xx, size, 0.06 * size)
    period = size / rng.uniform(5, 8)
    rings = 0.5 + 0.5 * np.sin(2 * np.pi * radius / period + rng.uniform(0, 2 * np.pi))
    fibres = _smooth_noise(rng, yy * 0.2, xx * 6, size, 0.08)
    colour = _jitter(rng, (0.62, 0.42, 0.24), 0.1)
    shade = 0.65 + 0.3 * rings**2 + fibres
    image = shade[..., None] * colour * _lighting(rng, yy, xx, size)
    full = np.ones((size, size), bool)
    return Scene(np.clip(image, 0, 1), full, image.copy())


def _plain_background(
    rng: np.random.Generator, yy: Array, xx: Array, size: int, colour: tuple[float, float, float]
) -> Array:
    return np.clip(_jitter(rng, colour, 0.15) * _lighting(rng, yy, xx, size), 0, 1)


def _place(rng: np.random.Generator, size: int, radius: float) -> tuple[float, float]:
    """A centre that keeps the object clear of the border (otsu estimates the background there)."""
    margin = radius + 0.1 * size
    return rng.uniform(margin, size - margin), rng.uniform(margin, size - margin)


def _disc(rng: np.random.Generator, size: int) -> Scene:
    yy, xx = _grid(size)
    background = _plain_background(rng, yy, xx, size, (0.18, 0.2, 0.24))
    radius = size * rng.uniform(0.22, 0.3)
    cy, cx = _place(rng, size, radius)
    dy, dx = yy - cy, xx - cx
    dist = np.hypot(dy, dx)
    fg = dist <= radius
    light = rng.uniform(-1, 1, size=2) * 0.15
    shade = (
        0.75
        + 0.2 * np.sqrt(np.clip(1 - dist / radius, 0, 1))
        + (light[0] * dy + light[1] * dx) / radius
    )
    # A groove and an off-centre hole make the rotation visible.
    groove = np.abs(dist - 0.62 * radius) < max(0.6, 0.05 * radius)
    rot = rng.uniform(0, 2 * np.pi)
    my, mx = cy + 0.78 * radius * np.sin(rot), cx + 0.78 * radius * np.cos(rot)
    marker = np.hypot(yy - my, xx - mx) < max(1.0, 0.1 * radius)
    shade = np.where(groove | marker, shade * 0.6, shade)
    obj = shade[..., None] * _jitter(rng, (0.82, 0.82, 0.8), 0.08)
    image = np.where(fg[..., None], obj, background)
    return Scene(np.clip(image, 0, 1), fg, background)


def _gear(rng: np.random.Generator, size: int) -> Scene:
    yy, xx = _grid(size)
    background = _plain_background(rng, yy, xx, size, (0.16, 0.16, 0.19))
    outer = size * rng.uniform(0.24, 0.3)
    cy, cx = _place(rng, size, outer)
    dy, dx = yy - cy, xx - cx
    dist, phi = np.hypot(dy, dx), np.arctan2(dy, dx)
    teeth, rot = 8, rng.uniform(0, 2 * np.pi)
    # Trapezoid-ish teeth: a clipped cosine switches between root and tip radius.
    tooth = np.clip(1.6 * np.cos(teeth * (phi - rot)) + 0.4, 0, 1)
    fg = dist <= outer * (0.78 + 0.22 * tooth)
    light = rng.uniform(-1, 1, size=2) * 0.15
    shade = 0.8 + (light[0] * dy + light[1] * dx) / outer
    hub = dist < 0.3 * outer
    shade = np.where(hub, shade * 0.65, shade)
    obj = shade[..., None] * _jitter(rng, (0.85, 0.68, 0.32), 0.08)
    image = np.where(fg[..., None], obj, background)
    return Scene(np.clip(image, 0, 1), fg, background)


RENDERERS: dict[str, Callable[[np.random.Generator, int], Scene]] = {
    "weave": _weave,
    "grain": _grain,
    "disc": _disc,
    "gear": _gear,
}


def render_normal(category: str, rng: np.random.Generator, size: int) -> Scene:
    """A defect-free, noise-free scene of `category`."""
    if category not in RENDERERS:
        raise ValueError(f"unknown synthetic category {category!r}; known: {', '.join(RENDERERS)}")
    return RENDERERS[category](rng, size)


# ----------------------------------------------------------------------------- defects


def _defect_scale(rng: np.random.Generator, size: int) -> float:
    # Log-uniform from 4 % to 30 % of the image: small defects are as common as large ones.
    return size * float(np.exp(rng.uniform(np.log(0.04), np.log(0.3))))


def _pick(rng: np.random.Generator, where: Array) -> tuple[float, float]:
    idx = rng.choice(np.flatnonzero(where))
    y, x = np.unravel_index(idx, where.shape)
    return y + 0.5, x + 0.5


def _interior(fg: Array) -> Array:
    """Foreground pixels whose 4 neighbours are foreground too (falls back to fg)."""
    inner = fg.copy()
    inner[1:, :] &= fg[:-1, :]
    inner[:-1, :] &= fg[1:, :]
    inner[:, 1:] &= fg[:, :-1]
    inner[:, :-1] &= fg[:, 1:]
    return inner if inner.any() else fg


def _edge(fg: Array) -> Array:
    edge = fg & ~_interior(fg)
    return edge if edge.any() else fg


def _ellipse(
    yy: Array, xx: Array, centre: tuple[float, float], ry: float, rx: float, angle: float
) -> Array:
    dy, dx = yy - centre[0], xx - centre[1]
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1


def _polyline(yy: Array, xx: Array, points: Array, width: float) -> Array:
    """Pixels whose centre lies within width/2 of the polyline through `points` (K,2)."""
    near = np.zeros(yy.shape, bool)
    for (y0, x0), (y1, x1) in zip(points[:-1], points[1:]):
        vy, vx = y1 - y0, x1 - x0
        t = np.clip(((yy - y0) * vy + (xx - x0) * vx) / max(vy * vy + vx * vx, 1e-9), 0, 1)
        near |= np.hypot(yy - (y0 + t * vy), xx - (x0 + t * vx)) <= width / 2
    return near


def _walk(
    rng: np.random.Generator, start: tuple[float, float], length: float, bends: int, wiggle: float
) -> Array:
    angle = rng.uniform(0, 2 * np.pi)
    steps = angle + np.cumsum(rng.normal(0, wiggle, size=bends))
    seg = length / bends
    moves = np.stack([np.sin(steps), np.cos(steps)], axis=1) * seg
    return np.vstack([np.asarray(start)[None], np.asarray(start) + np.cumsum(moves, axis=0)])


def _region(kind: str, scene: Scene, rng: np.random.Generator) -> Array:
    size = scene.foreground.shape[0]
    yy, xx = _grid(size)
    s = _defect_scale(rng, size)
    fg = scene.foreground
    if kind == "hole":
        r = max(s / 2, 1.0)
        return _ellipse(
            yy, xx, _pick(rng, _interior(fg)), r, r * rng.uniform(0.6, 1.4), rng.uniform(0, np.pi)
        )
    if kind == "stain":
        centre = _pick(rng, _interior(fg))
        r0 = max(s / 2, 1.2)
        # A lobed blob: radius modulated by two random harmonics of the angle.
        phi = np.arctan2(yy - centre[0], xx - centre[1])
        lobes = (
            1
            + 0.25 * np.sin(3 * phi + rng.uniform(0, 6.3))
            + 0.15 * np.sin(5 * phi + rng.uniform(0, 6.3))
        )
        return np.hypot(yy - centre[0], xx - centre[1]) <= r0 * lobes
    if kind == "scratch":
        pts = _walk(rng, _pick(rng, _interior(fg)), max(2 * s, 3.0), 2, 0.05)
        return _polyline(yy, xx, pts, rng.uniform(1.0, 1.8))
    if kind == "crack":
        pts = _walk(rng, _pick(rng, _interior(fg)), max(2 * s, 3.0), 6, 0.6)
        return _polyline(yy, xx, pts, rng.uniform(1.0, 2.0))
    if kind == "contamination":
        centre = _pick(rng, _interior(fg))
        spread = max(s / 2, 1.5)
        dots = np.zeros(fg.shape, bool)
        for _ in range(rng.integers(2, 7)):
            c = (centre[0] + rng.normal(0, spread / 2), centre[1] + rng.normal(0, spread / 2))
            dots |= np.hypot(yy - c[0], xx - c[1]) <= rng.uniform(0.7, max(0.8, spread / 3))
        return dots
    if kind == "missing_piece":
        # A bite out of the outline: a disc centred on an edge pixel, cut to the object.
        cy, cx = _pick(rng, _edge(fg))
        return np.hypot(yy - cy, xx - cx) <= max(s / 2, 1.5) * 1.5
    raise ValueError(f"unknown defect {kind!r}")


def _paint(kind: str, scene: Scene, mask: Array, rng: np.random.Generator) -> Array:
    """The image with the defect drawn into `mask` (every mask pixel changes visibly)."""
    img = scene.image.copy()
    m = mask[..., None]
    if kind == "hole":
        return np.where(m, rng.uniform(0.02, 0.08), img)
    if kind == "stain":
        palette = np.array([(0.3, 0.2, 0.1), (0.3, 0.45, 0.2), (0.08, 0.08, 0.1)])
        colour, alpha = palette[rng.integers(len(palette))], rng.uniform(0.55, 0.8)
        return np.where(m, (1 - alpha) * img + alpha * colour, img)
    if kind == "scratch":
        # Bright on dark surfaces, dark on bright ones, so a thin scratch stays visible.
        value = 0.97 if img[mask].mean() < 0.55 else 0.08
        return np.where(m, 0.25 * img + 0.75 * value, img)
    if kind == "crack":
        return np.where(m, 0.2 * img, img)
    if kind == "contamination":
        palette = np.array([(0.9, 0.12, 0.1), (0.1, 0.7, 0.2), (0.12, 0.3, 0.9), (0.95, 0.9, 0.1)])
        return np.where(m, 0.15 * img + 0.85 * palette[rng.integers(len(palette))], img)
    if kind == "missing_piece":
        return np.where(m, scene.background, img)
    raise ValueError(f"unknown defect {kind!r}")


def add_defect(scene: Scene, kind: str, rng: np.random.Generator) -> tuple[Array, Array]:
    """Draw one defect of `kind` on the scene's foreground; returns (image, mask bool)."""
    mask = np.zeros_like(scene.foreground)
    for _ in range(50):
        mask = _region(kind, scene, rng) & scene.foreground
        if mask.sum() >= 3:
            break
    if mask.sum() < 1:  # a degenerate foreground: fall back to one pixel on it
        mask[np.unravel_index(np.flatnonzero(scene.foreground)[0], mask.shape)] = True
    return _paint(kind, scene, mask, rng), mask


def finish(image: Array, rng: np.random.Generator) -> Array:
    """Sensor noise and 8-bit quantisation: (S,S,3) uint8."""
    noisy = image + rng.normal(0, NOISE_SIGMA, size=image.shape)
    return np.clip(np.round(noisy * 255), 0, 255).astype(np.uint8)


def make_sample(
    category: str, defect: str | None, rng: np.random.Generator, size: int
) -> tuple[Array, Array | None, Array]:
    """One image: (uint8 image (S,S,3), defect mask bool or None, foreground bool)."""
    scene = render_normal(category, rng, size)
    mask = None
    image = scene.image
    if defect is not None:
        image, mask = add_defect(scene, defect, rng)
    return finish(image, rng), mask, scene.foreground
