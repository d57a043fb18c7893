"""`ADDataset`: samples -> tensors at a fixed square size; `load_split` builds one from a config."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pgray.data.cache import COVER_BIT, FOREGROUND_BIT, MASK_BIT, decoded_split
from pgray.data.decode import decode_sample
from pgray.data.imageio import MASK_RULES, MaskResize, to_unit
from pgray.data.registry import get_layout
from pgray.data.samples import Sample
from pgray.errors import DatasetError

if TYPE_CHECKING:
    from pgray.config import DataConfig

class ADDataset(Dataset):
    """Images resized with Lanczos to img_size x img_size, in [0, 1].

    Item: dict(image (3,H,W) float32, mask (1,H,W) float32 {0,1}, unit_mask (1,H,W) float32
    {0,1} (a pixel is set where any full-resolution mask pixel it covers is: what the model's
    units are labelled from), label int64 scalar, foreground (1,H,W) float32 {0,1} (all ones
    without a mask file), image_path str, mask_path str ("" when none)).

    With `cache_dir`, the items come from the node's decode cache (pgray/data/cache.py, built
    here when missing or out of date): the same tensors, bit for bit, without decoding and
    resizing the source files at every epoch.
    """

    def __init__(
        self, samples: Sequence[Sample], img_size: int = 224, mask_resize: MaskResize = "nearest",
        cache_dir: Path | None = None,
    ):
        if img_size < 1:
            raise DatasetError(f"img_size must be >= 1, got {img_size}")
        if mask_resize not in MASK_RULES:
            raise DatasetError(
                f"mask_resize must be one of {list(MASK_RULES)}, got {mask_resize!r}"
            )
        self.samples = list(samples)
        self.img_size = img_size
        self.mask_resize = mask_resize
        self.cache = None
        if cache_dir is not None and self.samples:
            self.cache = _open_cache(self.samples, img_size, mask_resize, Path(cache_dir))

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        if self.cache is None:
            rgb, mask, cover, foreground = decode_sample(sample, self.img_size, self.mask_resize)
        else:
            rgb, flags = self.cache.row(index)
            mask, cover, foreground = (flags & MASK_BIT > 0, flags & COVER_BIT > 0,
                                       flags & FOREGROUND_BIT > 0)
        return {
            "image": torch.from_numpy(to_unit(rgb)).permute(2, 0, 1).contiguous(),
            "mask": torch.from_numpy(mask.astype(np.float32))[None],
            "unit_mask": torch.from_numpy(cover.astype(np.float32))[None],
            "label": torch.tensor(sample.label, dtype=torch.int64),
            "foreground": torch.from_numpy(foreground.astype(np.float32))[None],
            "image_path": str(sample.image_path),
            "mask_path": str(sample.mask_path) if sample.mask_path else "",
        }


def _open_cache(samples: list[Sample], img_size: int, mask_resize: str, cache_dir: Path):
    """The samples' decode-cache entry, or None (with a warning) where the cache folder cannot
    be written: a read-only or full disk slows training down, it does not stop it."""
    import warnings

    from pgray.io import OutputError

    try:
        return decoded_split(samples, img_size, mask_resize, cache_dir)
    except (OSError, OutputError) as err:
        warnings.warn(f"decode cache under {cache_dir} not usable ({err}); decoding the"
                      " source images at every epoch instead", stacklevel=3)
        return None


def resolve_root(data_cfg: DataConfig) -> Path:
    """The dataset root as a folder on this machine. An empty root with dataset "synthetic"
    means the cached demo dataset (generated on first use; options seed / size / n_train /
    n_test choose which); an s3:// or gs:// root is staged into this machine's cache."""
    from pgray.data import staging
    from pgray.data.synthetic import default_cache_dir

    if staging.is_remote(data_cfg.root):
        return staging.stage(data_cfg.root, default_cache_dir())
    if data_cfg.root:
        return Path(data_cfg.root).expanduser()
    if data_cfg.dataset == "synthetic":
        from pgray.data.synthetic import ensure_demo_dataset

        keys = ("seed", "size", "n_train", "n_test")
        return ensure_demo_dataset(
            **{k: int(data_cfg.options[k]) for k in keys if k in data_cfg.options}
        )
    raise DatasetError(f"data.root: required for dataset {data_cfg.dataset}")


def portable_root(data_cfg: DataConfig) -> str:
    """The root as every machine of a cluster can use it: an object-storage URI, or "" for
    the generated dataset (each machine generates the same one), as given; a local path made
    absolute (the same path on every node: a shared mount)."""
    from pgray.data import staging

    root = data_cfg.root
    if not root or staging.is_remote(root):
        return root
    return str(Path(root).expanduser().resolve())


def discover_split(data_cfg: DataConfig, split: str) -> list[Sample]:
    """The samples of `split` ("train" | "test") of the configured dataset and category;
    DatasetError naming what is wrong."""
    layout = get_layout(data_cfg.dataset)
    return layout.discover(resolve_root(data_cfg), data_cfg.category, split,
                           data_cfg.layout_options())


def decode_cache_dir(data_cfg: DataConfig) -> Path | None:
    """Where this node keeps decoded images (None when `data.decode_cache` is off)."""
    from pgray.data.synthetic import default_cache_dir

    return default_cache_dir() if data_cfg.decode_cache else None


def load_split(data_cfg: DataConfig, split: str, img_size: int = 224) -> ADDataset:
    """The ADDataset of `split` for the configured dataset and category."""
    return ADDataset(discover_split(data_cfg, split), img_size, data_cfg.mask_resize,
                     cache_dir=decode_cache_dir(data_cfg))
