"""Pixel I/O shared by the dataset, the checker and the mask generator (PIL + numpy, no torch).

Every read fully decodes the file, so a truncated or corrupt image fails here with a
DatasetError naming it, not later inside a DataLoader worker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from pgray.errors import DatasetError

MaskResize = Literal["nearest", "lanczos_any"]
MASK_RULES: tuple[str, ...] = ("nearest", "lanczos_any")


def open_image(path: Path) -> Image.Image:
    """Open and decode the whole file (PIL is lazy: `open` alone reads only the header)."""
    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (OSError, ValueError, SyntaxError) as err:  # PIL's ways of saying truncated/corrupt
        raise DatasetError(f"{path}: cannot decode image ({err})") from None
    return img


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header only."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, ValueError, SyntaxError) as err:
        raise DatasetError(f"{path}: cannot read image header ({err})") from None


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and integer images (CT, MRI exports) scaled into 8 bits instead of clipped."""
    if img.mode.startswith("I;16"):
        arr = np.asarray(img, dtype=np.float64) / 257.0
    elif img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        peak = arr.max()
        arr = arr * (255.0 / peak) if peak > 255 else arr
    else:
        return img
    return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "L")


def load_rgb(path: Path) -> Image.Image:
    return _to_8bit(open_image(path)).convert("RGB")


def load_binary(path: Path, threshold: int = 0) -> np.ndarray:
    """A mask file as bool (H, W): a pixel is set when any colour channel exceeds `threshold`
    (alpha is ignored; palette masks use their index, as VisA's non-zero convention wants)."""
    img = _to_8bit(open_image(path))
    if img.mode in ("LA", "PA"):
        img = img.getchannel(0)
    elif img.mode not in ("1", "L", "P", "RGB"):
        img = img.convert("RGB")
    arr = np.asarray(img)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    return arr > threshold


def resize_rgb_u8(img: Image.Image, size: int) -> np.ndarray:
    """Lanczos resize to size x size; uint8 (H, W, 3): what the decode cache stores."""
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


def to_unit(rgb: np.ndarray) -> np.ndarray:
    """uint8 pixels as float32 in [0, 1] (the one conversion, so cached and decoded items
    are bit-identical)."""
    return rgb.astype(np.float32) / np.float32(255.0)


def resize_mask(mask: np.ndarray, size: int, rule: MaskResize = "nearest") -> np.ndarray:
    """Resize a bool mask to size x size.

    "nearest": nearest neighbour (the common convention). "lanczos_any": the PatchGuard
    reference's rule, a Lanczos resize then any value > 0, which dilates edges by a pixel or so.
    """
    if rule not in MASK_RULES:
        raise DatasetError(f"mask_resize must be one of {list(MASK_RULES)}, got {rule!r}")
    if mask.shape == (size, size):
        return mask.copy()
    img = Image.fromarray(mask.astype(np.uint8) * 255, "L")
    if rule == "nearest":
        return np.asarray(img.resize((size, size), Image.Resampling.NEAREST)) > 127
    return np.asarray(img.resize((size, size), Image.Resampling.LANCZOS)) > 0


def cover_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A bool mask at size x size whose pixel is set where any source pixel it covers is:
    what a unit of the model's grid holds of the full-resolution mask. A 3 px scratch on a
    1024 px image survives it; a nearest-neighbour resize keeps such a scratch only where a
    sampled pixel happens to land on it."""
    return _cover_axis(_cover_axis(mask.astype(bool), size, 0), size, 1)


def _cover_axis(mask: np.ndarray, size: int, axis: int) -> np.ndarray:
    n = mask.shape[axis]
    starts = np.arange(size) * n // size
    ends = -(-(np.arange(1, size + 1) * n) // size)  # ceil: a pixel that straddles counts
    counts = np.cumsum(mask, axis=axis, dtype=np.int64)
    counts = np.concatenate([np.zeros_like(counts.take([0], axis=axis)), counts], axis=axis)
    return (counts.take(ends, axis=axis) - counts.take(starts, axis=axis)) > 0


def write_png_atomic(path: Path, array: np.ndarray) -> None:
    """Write a PNG atomically, so a crash never leaves a half-written mask that a later run
    would trust."""
    from pgray.io import atomic_write

    atomic_write(path, lambda f: Image.fromarray(array).save(f, format="PNG"))
