"""A sample's pixels at a square size, decoded from its files: what `ADDataset` returns item by
item and what the decode cache (`pgray.data.cache`) stores once per node."""

from __future__ import annotations

import numpy as np

from pgray.data.imageio import (
    MaskResize,
    cover_mask,
    load_binary,
    load_rgb,
    resize_mask,
    resize_rgb_u8,
)
from pgray.data.samples import Sample
from pgray.errors import DatasetError

# A foreground mask pixel counts above mid-grey: robust to soft or re-encoded masks.
FOREGROUND_THRESHOLD = 127


def decode_sample(sample: Sample, img_size: int, mask_resize: MaskResize = "nearest"
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A sample's pixels at img_size from its files: rgb uint8 (S, S, 3) and the bool (S, S)
    mask (by `mask_resize`: what pixel metrics score), its cover (what unit labels come from)
    and the foreground (all set without a foreground file)."""
    img = load_rgb(sample.image_path)
    rgb = resize_rgb_u8(img, img_size)
    if sample.mask_path is None:
        mask = cover = np.zeros((img_size, img_size), bool)
    else:
        raw = load_binary(sample.mask_path)
        if (raw.shape[1], raw.shape[0]) != img.size:
            raise DatasetError(
                f"{sample.mask_path}: mask is {raw.shape[1]}x{raw.shape[0]} but its image "
                f"{sample.image_path.name} is {img.size[0]}x{img.size[1]} (masks must match)"
            )
        mask = resize_mask(raw, img_size, mask_resize)
        cover = cover_mask(raw, img_size)
    if sample.foreground_path is None:
        foreground = np.ones((img_size, img_size), bool)
    else:
        raw = load_binary(sample.foreground_path, FOREGROUND_THRESHOLD)
        foreground = resize_mask(raw, img_size, "nearest")
    return rgb, mask, cover, foreground
