"""A procedural anomaly-detection dataset in the MVTec layout, deterministic for a seed.

Two texture categories (woven cloth, wood grain) and two object categories (a machined disc,
a gear) on a plain, unevenly lit background. Normal images vary in phase, position, rotation,
colour and lighting, so a detector has to learn the category rather than one picture. Each
anomalous test image carries one defect of a category-specific kind, from a few pixels wide to
about a quarter of the image, with an exact ground-truth mask; object defects lie on the object.
Objects also get their exact foreground mask in `train/foreground_mask/`.

Everything is vectorised numpy on a pixel-centre grid, so a 64 px dataset takes about a second.
Run `python -m pgray.data.synthetic --out DIR` to write one.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from pgray.data.synthetic_scenes import (
    DEFECTS,
    GENERATOR_VERSION,
    SYNTHETIC_CATEGORIES,
    TEXTURES,
    make_sample,
    render_normal,
)
from pgray.io import publish_dir

# ----------------------------------------------------------------------------- writing


def write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def mask_png(mask: np.ndarray) -> np.ndarray:
    return mask.astype(np.uint8) * 255


def _rng(seed: int, category: str, split: int, index: int) -> np.random.Generator:
    # One stream per image: changing n_train does not change the test images.
    return np.random.default_rng([seed, SYNTHETIC_CATEGORIES.index(category), split, index])


def defect_plan(category: str, n_test: int) -> list[str | None]:
    """Defect of each test image (None = good): half good, the rest round-robin over defects."""
    n_good = max(1, n_test // 2)
    kinds = DEFECTS[category]
    return [None] * n_good + [kinds[i % len(kinds)] for i in range(max(0, n_test - n_good))]


def generate_category(
    out: Path, category: str, seed: int, size: int, n_train: int, n_test: int
) -> None:
    base = out / category
    for i in range(n_train):
        image, _, fg = make_sample(category, None, _rng(seed, category, 0, i), size)
        write_png(base / "train" / "good" / f"{i:03d}.png", image)
        if category not in TEXTURES:
            write_png(base / "train" / "foreground_mask" / f"{i:03d}.png", mask_png(fg))
    counts: dict[str, int] = {}
    for i, defect in enumerate(defect_plan(category, n_test)):
        folder = defect or "good"
        stem = f"{counts.get(folder, 0):03d}"
        counts[folder] = counts.get(folder, 0) + 1
        image, mask, _ = make_sample(category, defect, _rng(seed, category, 1, i), size)
        write_png(base / "test" / folder / f"{stem}.png", image)
        if mask is not None:
            write_png(base / "ground_truth" / folder / f"{stem}_mask.png", mask_png(mask))


def generate(
    out: str | Path,
    seed: int = 0,
    size: int = 64,
    n_train: int = 32,
    n_test: int = 16,
    categories: tuple[str, ...] = SYNTHETIC_CATEGORIES,
) -> Path:
    """Write the dataset under `out` (created if needed) and return it."""
    if size < 16:
        raise ValueError(f"size must be >= 16 px, got {size}")
    if n_train < 1 or n_test < 2:
        raise ValueError(f"need n_train >= 1 and n_test >= 2, got {n_train} and {n_test}")
    out = Path(out)
    for category in categories:
        render_normal(category, np.random.default_rng(0), 16)  # unknown names fail before writing
    for category in categories:
        generate_category(out, category, seed, size, n_train, n_test)
    return out


def default_cache_dir() -> Path:
    return Path(os.environ.get("PGRAY_CACHE") or Path.home() / ".cache" / "pgray")


def ensure_demo_dataset(
    cache_dir: str | Path | None = None,
    size: int = 64,
    seed: int = 0,
    n_train: int = 32,
    n_test: int = 16,
) -> Path:
    """The synthetic dataset for these parameters, generated once into the cache; its root."""
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = f"synthetic-v{GENERATOR_VERSION}-seed{seed}-px{size}-train{n_train}-test{n_test}"
    target = base.expanduser() / name
    if target.is_dir():
        return target
    return publish_dir(lambda tmp: generate(tmp, seed, size, n_train, n_test), target)


def main(argv: list[str] | None = None) -> int:
    from pgray.errors import DatasetError

    parser = argparse.ArgumentParser(
        prog="python -m pgray.data.synthetic",
        description="Write the procedural MVTec-layout dataset (deterministic for a seed).",
    )
    parser.add_argument("--out", required=True, help="new or empty folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--n-train", type=int, default=32, help="normal train images per category")
    parser.add_argument(
        "--n-test", type=int, default=16, help="test images per category (half good)"
    )
    parser.add_argument(
        "--categories", nargs="+", default=list(SYNTHETIC_CATEGORIES), choices=SYNTHETIC_CATEGORIES
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise DatasetError(f"{out}: output folder is not empty; choose a new one")
    try:
        if out.exists():
            out.rmdir()
        publish_dir(
            lambda tmp: generate(
                tmp, args.seed, args.size, args.n_train, args.n_test, tuple(args.categories)
            ),
            out,
        )
    except ValueError as err:
        raise DatasetError(str(err)) from None
    counts = ", ".join(f"{c} ({', '.join(DEFECTS[c])})" for c in args.categories)
    print(f"wrote {out}: {args.n_train} train + {args.n_test} test images per category: {counts}")
    return 0


if __name__ == "__main__":
    from pgray.errors import run_cli

    raise SystemExit(run_cli(main))
