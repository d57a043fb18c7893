"""Vectorised 2-D Perlin (gradient) noise with octaves, for the perlin-fill transform."""

from __future__ import annotations

import numpy as np


def _fade(t: np.ndarray) -> np.ndarray:
    # Perlin's quintic fade: C2-continuous across lattice cells, so no grid artefacts.
    return t * t * t * (t * (t * 6 - 15) + 10)


def _gradient_octave(h: int, w: int, period: float, rng: np.random.Generator) -> np.ndarray:
    """One octave of gradient noise on an (h, w) grid with lattice spacing `period` pixels."""
    # A random sub-cell offset keeps pixel (0, 0) off a lattice point (where noise is 0).
    oy, ox = rng.random(2)
    ys = np.arange(h, dtype=np.float32) / period + oy
    xs = np.arange(w, dtype=np.float32) / period + ox
    gh, gw = int(ys[-1]) + 2, int(xs[-1]) + 2
    angles = rng.uniform(0.0, 2 * np.pi, size=(gh, gw)).astype(np.float32)
    gy, gx = np.sin(angles), np.cos(angles)

    y0 = ys.astype(np.int64)[:, None]
    x0 = xs.astype(np.int64)[None, :]
    fy = (ys - np.floor(ys))[:, None]
    fx = (xs - np.floor(xs))[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        # dot(gradient at lattice corner, offset from that corner)
        return gy[y0 + dy, x0 + dx] * (fy - dy) + gx[y0 + dy, x0 + dx] * (fx - dx)

    u, v = _fade(fx), _fade(fy)
    top = corner(0, 0) + u * (corner(0, 1) - corner(0, 0))
    bottom = corner(1, 0) + u * (corner(1, 1) - corner(1, 0))
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
