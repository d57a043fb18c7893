"""A grid PNG of normal images, their pseudo-anomalies and masks, to eyeball the generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

GAP = 2  # pixels between tiles
PATCH_TINT = np.array([200, 40, 40], dtype=np.float32)  # anomalous patch cells in the mask row


def _to_rgb(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float [0, 1] -> (H, W, 3) uint8."""
    arr = image.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    return np.rint(arr * 255).astype(np.uint8)


def _mask_tile(mask: torch.Tensor, labels: torch.Tensor, patch_size: int) -> np.ndarray:
    """Pixel mask in white over the anomalous patch cells in dark red."""
    m = mask.reshape(mask.shape[-2:]).cpu().numpy() > 0.5
    hgt, wid = m.shape
    grid = labels.cpu().numpy().reshape(hgt // patch_size, wid // patch_size) > 0.5
    cells = np.kron(grid, np.ones((patch_size, patch_size), dtype=bool))
    tile = np.zeros((hgt, wid, 3), dtype=np.float32)
    tile[cells] = PATCH_TINT
    tile[m] = 255.0
    return tile.astype(np.uint8)


def compose(rows: list[list[np.ndarray]]) -> Image.Image:
    """Tile equally sized (H, W, 3) uint8 images row by row on a grey canvas."""
    hgt, wid = rows[0][0].shape[:2]
    n_cols = max(len(r) for r in rows)
    canvas = np.full(
        (len(rows) * (hgt + GAP) + GAP, n_cols * (wid + GAP) + GAP, 3), 128, dtype=np.uint8
    )
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            y, x = GAP + r * (hgt + GAP), GAP + c * (wid + GAP)
            canvas[y : y + hgt, x : x + wid] = tile
    return Image.fromarray(canvas)


def save_png_atomic(image: Image.Image, out: Path) -> None:
    """Write the PNG atomically: readers never see half of it."""
    from pgray.io import atomic_write

    atomic_write(out, lambda f: image.save(f, format="PNG"))


def preview_rows(dataset, n: int, patch_size: int) -> list[list[np.ndarray]]:
    """Rows: normal images, pseudo-anomalies, masks; first n items spread over the dataset."""
    picks = np.linspace(0, len(dataset) - 1, num=min(n, len(dataset))).round().astype(int)
    rows: list[list[np.ndarray]] = [[], [], []]
    for i in dict.fromkeys(picks.tolist()):  # unique, in order
        item = dataset[i]
        rows[0].append(_to_rgb(item["image"]))
        rows[1].append(_to_rgb(item["pseudo_image"]))
        rows[2].append(_mask_tile(item["pseudo_mask"], item["pseudo_patch_labels"], patch_size))
    return rows
