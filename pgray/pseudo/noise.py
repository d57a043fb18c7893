"""Vectorised 2-D Perlin (gradient) noise with octaves, for the perlin-fill transform."""

from __future__ import annotations

import cv2
import numpy as np

TABLE = 256  # lattice hash period, as in Perlin's reference implementation


def _fade(t: np.ndarray) -> np.ndarray:
    # Perlin's quintic fade: C2-continuous across lattice cells, so no grid artefacts.
    return t * t * t * (t * (t * 6 - 15) + 10)


def _gradient_octave(h: int, w: int, period: float, rng: np.random.Generator) -> np.ndarray:
    """One octave of gradient noise on an (h, w) grid with lattice spacing `period` pixels.

    Lattice gradients come from a hashed table (permutation + 256 random unit vectors), so the
    cost follows the pixel count even when the period is below a pixel (high octaves).
    """
    perm = rng.permutation(TABLE).astype(np.uint8)
    angles = rng.uniform(0.0, 2 * np.pi, size=TABLE)
    grad_y, grad_x = np.sin(angles).astype(np.float32), np.cos(angles).astype(np.float32)
    # A random offset keeps pixel (0, 0) off a lattice point (where noise is 0).
    oy, ox = rng.random(2) * TABLE
    ys = np.arange(h, dtype=np.float64) / period + oy
    xs = np.arange(w, dtype=np.float64) / period + ox
    y0, x0 = np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)
    fy = (ys - y0).astype(np.float32)[:, None]
    fx = (xs - x0).astype(np.float32)[None, :]

    # Lattice coordinates mod 256 as uint8, so the hash sum wraps around for free.
    rows = [((y0 + d) % TABLE).astype(np.uint8)[:, None] for d in (0, 1)]
    cols = [perm[(x0 + d) % TABLE][None, :] for d in (0, 1)]

    def corner(dy: int, dx: int) -> np.ndarray:
        # dot(gradient at lattice corner, offset from that corner). cv2.LUT does the 256-entry
        # table lookups several times faster than numpy fancy indexing.
        cell = cv2.LUT(np.ascontiguousarray(cols[dx] + rows[dy]), perm)
        return cv2.LUT(cell, grad_y) * (fy - dy) + cv2.LUT(cell, grad_x) * (fx - dx)

    u, v = _fade(fx), _fade(fy)
    c00, c01, c10, c11 = corner(0, 0), corner(0, 1), corner(1, 0), corner(1, 1)
    top = c00 + u * (c01 - c00)
    bottom = c10 + u * (c11 - c10)
    return top + v * (bottom - top)


def perlin(h: int, w: int, scale: float, octaves: int, rng: np.random.Generator) -> np.ndarray:
    """Fractal Perlin noise in about [-1, 1], shape (h, w), float32.

    Octave k has lattice spacing scale / 2**k pixels and amplitude 0.5**k (lacunarity 2,
    persistence 0.5); the sum is divided by the total amplitude, like the common `pnoise2`.
    """
    total = np.zeros((h, w), dtype=np.float32)
    amplitude, norm = 1.0, 0.0
    for k in range(octaves):
        total += amplitude * _gradient_octave(h, w, scale / 2**k, rng)
        norm += amplitude
        amplitude *= 0.5
    # Raw 2-D Perlin noise lies in [-sqrt(2)/2, sqrt(2)/2]; rescale so [-1, 1] is reachable.
    return np.clip(total / norm * np.sqrt(2.0), -1.0, 1.0).astype(np.float32)
