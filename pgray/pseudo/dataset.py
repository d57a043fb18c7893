"""A Dataset of (normal image, pseudo-anomaly) pairs over a base dataset of normal images."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from pgray.pseudo.generator import PseudoAnomalyGenerator


def _normal_indices(base: Any) -> list[int]:
    """Indices of the base's normal items; read from its sample list when it has one.

    An ADDataset keeps `samples` (with `label`), so anomalous items are skipped without
    loading any image; any other dataset is taken as all-normal (checked per item).
    """
    samples = getattr(base, "samples", None)
    if samples is not None and all(hasattr(s, "label") for s in samples):
        return [i for i, s in enumerate(samples) if int(s.label) == 0]
    return list(range(len(base)))


class PseudoAnomalyDataset(Dataset):
    """dict(image, pseudo_image, pseudo_mask (1,H,W), pseudo_patch_labels (N,), index).

    Item i uses numpy.random.default_rng([seed, epoch, rank, i]): reproducible for a given
    (seed, epoch, rank, index), whatever the worker count or order. The epoch is `set_epoch`'s,
    or the one an index arrives with: `dataset[(epoch, i)]`, what EpochSampler hands to
    persistent DataLoader workers (they keep the dataset copy they started with, so a
    set_epoch in the main process never reaches them).

    DataLoader workers need no set-up: torch already runs them on one thread. Do not call
    cv2.setNumThreads(n > 0) inside a forked worker: with opencv 5.0 it hangs the worker
    (setNumThreads(0) there, or any call in the parent before forking, is fine).
    """

    def __init__(
        self, base: Any, generator: PseudoAnomalyGenerator, seed: int, epoch: int = 0, rank: int = 0
    ) -> None:
        for name, value in (("seed", seed), ("epoch", epoch), ("rank", rank)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0 (numpy seed entropy), got {value}")
        self.base = base
        self.generator = generator
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.rank = int(rank)
        self.indices = _normal_indices(base)

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def rng(self, index: int, epoch: int | None = None) -> np.random.Generator:
        epoch = self.epoch if epoch is None else epoch
        return np.random.default_rng([self.seed, epoch, self.rank, index])

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        epoch = None
        if isinstance(index, tuple):
            epoch, index = index
        item = self.base[self.indices[index]]
        label = item.get("label")
        if label is not None and int(label) != 0:
            raise ValueError(
                f"pseudo-anomalies are made from normal images; item {index} has label {int(label)}"
            )
        image = item["image"]
        foreground = item.get("foreground")
        if foreground is None:  # no mask: the whole image is foreground (textures)
            foreground = torch.ones(image.shape[1:], dtype=torch.bool)
        pseudo, mask, labels = self.generator(image, foreground, self.rng(index, epoch))
        return {
            "image": image,
            "pseudo_image": pseudo,
            "pseudo_mask": mask.unsqueeze(0),
            "pseudo_patch_labels": labels,
            "index": index,
        }


class EpochSampler(Sampler):
    """(epoch, index) pairs from an index sampler: the epoch travels with every index to the
    DataLoader's workers, persistent ones included. set_epoch is forwarded (a
    DistributedSampler reshuffles by it)."""

    def __init__(self, indices: Sampler) -> None:
        self.indices = indices
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.indices, "set_epoch"):
            self.indices.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((epoch, int(i)) for i in self.indices)

    def __len__(self) -> int:
        return len(self.indices)
