"""A small anomaly-detection dataset of real photographs, rebuilt by anyone from the texture
photographs scikit-image ships (brick, grass, gravel: 512 x 512 grey photographs in
`skimage.data`, installed with anomalib), with synthetic defects and exact masks.

    python benchmarks/real_textures.py --out runs/data/real_textures [--size 64]

Writes the MVTec layout (`<category>/train/good`, `test/good`, `test/<defect>`,
`ground_truth/<defect>/<stem>_mask.png`), so `data: {dataset: mvtec, root: <out>}` reads it.
Tiles are cut from disjoint parts of each photograph: training tiles from the top 60 % rows,
test tiles from the rest, so no test pixel was ever seen in training. Defects, one per
anomalous test tile, from a few pixels to about a tenth of the tile:
- scratch: a thin bright or dark stroke at a random angle;
- stain: a soft-edged ellipse, darkened or brightened and tinted;
- foreign: an ellipse of another photograph's texture pasted in.
Deterministic for a seed; a second run over the same folder is a no-op (published atomically).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

CATEGORIES = ("brick", "grass", "gravel")
DEFECTS = ("scratch", "stain", "foreign")
TRAIN_ROWS = 0.6  # the share of each photograph's rows that training tiles come from


def photograph(name: str) -> np.ndarray:
    """One of scikit-image's texture photographs as float RGB in [0, 1]."""
    from skimage import data

    grey = getattr(data, name)().astype(np.float32) / 255.0
    return np.repeat(grey[..., None], 3, axis=2)


def cut_tiles(photo: np.ndarray, size: int, count: int, rows: tuple[int, int],
              rng: np.random.Generator) -> list[np.ndarray]:
    """`count` tiles of `size` px from the given row range, at random places, half of them
    mirrored: the photographs are too few for a crop grid alone."""
    _, width, _ = photo.shape
    crop = size * 2  # cut at twice the size and downsample: tiles show more texture
    top = rng.integers(rows[0], rows[1] - crop + 1, size=count)
    left = rng.integers(0, width - crop + 1, size=count)
    tiles = []
    for t, ll in zip(top, left):
        tile = photo[t:t + crop, ll:ll + crop].reshape(size, 2, size, 2, 3).mean(axis=(1, 3))
        tiles.append(tile[:, ::-1] if rng.random() < 0.5 else tile)
    return tiles


def ellipse(size: int, rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    """A soft ellipse (0..1) at a random place, its half-axes between lo and hi x size."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    cy, cx = rng.uniform(0.2, 0.8, size=2) * size
    ay, ax = rng.uniform(lo, hi, size=2) * size
    angle = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / ax
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ay
    # 1 inside three quarters of the radius, fading to 0 at its edge
    return np.clip((1.0 - np.sqrt(u * u + v * v)) * 4.0, 0.0, 1.0)


def scratch(tile: np.ndarray, rng: np.random.Generator, _: np.ndarray):
    from PIL import Image, ImageDraw

    size = tile.shape[0]
    canvas = Image.new("L", (size, size), 0)
    length = rng.uniform(0.3, 0.6) * size
    angle = rng.uniform(0, np.pi)
    cy, cx = rng.uniform(0.25, 0.75, size=2) * size
    dy, dx = np.sin(angle) * length / 2, np.cos(angle) * length / 2
    ImageDraw.Draw(canvas).line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=255,
                                width=int(rng.integers(1, 3)))
    alpha = np.asarray(canvas, dtype=np.float32) / 255.0
    value = 0.95 if rng.random() < 0.5 else 0.05
    out = tile * (1 - alpha[..., None]) + value * alpha[..., None]
    return out, alpha > 0.5


def stain(tile: np.ndarray, rng: np.random.Generator, _: np.ndarray):
    alpha = ellipse(tile.shape[0], rng, 0.08, 0.18)
    tint = np.array([1.0, 0.8, 0.55]) if rng.random() < 0.5 else np.array([0.55, 0.7, 1.0])
    gain = rng.uniform(0.45, 0.65) if rng.random() < 0.5 else rng.uniform(1.35, 1.6)
    stained = np.clip(tile * gain * tint, 0, 1)
    out = tile * (1 - alpha[..., None]) + stained * alpha[..., None]
    return out, alpha > 0.5


def foreign(tile: np.ndarray, rng: np.random.Generator, other: np.ndarray):
    alpha = ellipse(tile.shape[0], rng, 0.1, 0.2)
    out = tile * (1 - alpha[..., None]) + other * alpha[..., None]
    return out, alpha > 0.5


MAKERS = {"scratch": scratch, "stain": stain, "foreign": foreign}


def build_category(out: Path, category: str, size: int, n_train: int, n_test: int,
                   seed: int) -> None:
    from pgray.data.synthetic import mask_png, write_png

    rng = np.random.default_rng([seed, CATEGORIES.index(category)])
    photo = photograph(category)
    split = int(photo.shape[0] * TRAIN_ROWS)
    others = [photograph(c) for c in CATEGORIES if c != category]
    base = out / category

    def png(tile: np.ndarray) -> np.ndarray:
        return (np.clip(tile, 0, 1) * 255 + 0.5).astype(np.uint8)

    for i, tile in enumerate(cut_tiles(photo, size, n_train, (0, split), rng)):
        write_png(base / "train" / "good" / f"{i:03d}.png", png(tile))
    tests = cut_tiles(photo, size, n_test, (split, photo.shape[0]), rng)
    n_good = n_test // 2
    for i, tile in enumerate(tests[:n_good]):
        write_png(base / "test" / "good" / f"{i:03d}.png", png(tile))
    for i, tile in enumerate(tests[n_good:]):
        kind = DEFECTS[i % len(DEFECTS)]
        other = cut_tiles(others[i % len(others)], size, 1, (0, photo.shape[0]), rng)[0]
        image, mask = MAKERS[kind](tile, rng, other)
        write_png(base / "test" / kind / f"{i:03d}.png", png(image))
        write_png(base / "ground_truth" / kind / f"{i:03d}_mask.png", mask_png(mask))


def build(out: Path, categories: list[str], size: int, n_train: int, n_test: int,
          seed: int) -> Path:
    """Write the dataset into `out` (atomically: a half-built folder is never published)."""
    from pgray.io import publish_dir

    if out.exists():
        return out

    def fill(tmp: Path) -> None:
        for category in categories:
            build_category(tmp, category, size, n_train, n_test, seed)

    publish_dir(fill, out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/data/real_textures"))
    p.add_argument("--categories", nargs="+", default=list(CATEGORIES), choices=CATEGORIES)
    p.add_argument("--size", type=int, default=64, help="tile size in px (default 64)")
    p.add_argument("--n-train", type=int, default=160, help="normal training tiles per category")
    p.add_argument("--n-test", type=int, default=60, help="test tiles (half defective)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.size < 16 or args.size > 256:
        p.error(f"--size must be in [16, 256], got {args.size}")
    if args.n_train < 1 or args.n_test < 2:
        p.error("--n-train must be >= 1 and --n-test >= 2")
    out = build(args.out, args.categories, args.size, args.n_train, args.n_test, args.seed)
    print(f"wrote {out} ({', '.join(args.categories)}; {args.n_train} train and {args.n_test}"
          f" test tiles of {args.size} px each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
