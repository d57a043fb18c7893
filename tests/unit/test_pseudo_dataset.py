"""PseudoAnomalyDataset: per-item determinism, epochs / ranks, DataLoader workers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from pgray.config.pseudo import PseudoConfig
from pgray.pseudo.dataset import PseudoAnomalyDataset
from pgray.pseudo.generator import PseudoAnomalyGenerator

SIZE, PATCH = 32, 8


class TinyNormals(Dataset):
    """Items shaped like ADDataset's: image (3,H,W) in [0,1], foreground (1,H,W), label."""

    def __init__(self, n: int = 6, labels: list[int] | None = None) -> None:
        self.n = n
        self.labels = labels or [0] * n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        fg = torch.zeros(1, SIZE, SIZE)
        fg[:, 8:24, 6:26] = 1
        return {
            "image": torch.rand(3, SIZE, SIZE, generator=g),
            "foreground": fg,
            "label": torch.tensor(self.labels[i]),
        }


@dataclass(frozen=True)
class FakeSample:
    label: int


class WithSamples(TinyNormals):
    """Has a `samples` list like ADDataset, so anomalous items are skipped up front."""

    def __init__(self, labels: list[int]) -> None:
        super().__init__(len(labels), labels)
        self.samples = [FakeSample(label) for label in labels]


def make(base=None, **kw) -> PseudoAnomalyDataset:
    gen = PseudoAnomalyGenerator(PseudoConfig(), SIZE, PATCH)
    return PseudoAnomalyDataset(base or TinyNormals(), gen, **{"seed": 0, **kw})


def test_item_keys_shapes_and_dtypes():
    ds = make()
    item = ds[2]
    assert set(item) == {"image", "pseudo_image", "pseudo_mask", "pseudo_patch_labels", "index"}
    assert item["image"].shape == item["pseudo_image"].shape == (3, SIZE, SIZE)
    assert item["pseudo_mask"].shape == (1, SIZE, SIZE)
    assert item["pseudo_patch_labels"].shape == ((SIZE // PATCH) ** 2,)
    assert item["index"] == 2
    assert item["pseudo_mask"].sum() > 0 and item["pseudo_patch_labels"].sum() >= 1
    assert torch.equal(item["image"], TinyNormals()[2]["image"])


def test_deterministic_per_seed_epoch_rank_index():
    a, b = make(seed=5), make(seed=5)
    assert torch.equal(a[3]["pseudo_image"], b[3]["pseudo_image"])
    assert torch.equal(a[3]["pseudo_image"], a[3]["pseudo_image"])  # order does not matter
    ref = a[3]["pseudo_mask"]
    for other in (make(seed=6), make(seed=5, epoch=1), make(seed=5, rank=1)):
        assert not torch.equal(ref, other[3]["pseudo_mask"])


def test_set_epoch_changes_the_anomalies_and_back():
    ds = make()
    first = ds[0]["pseudo_image"]
    ds.set_epoch(1)
    assert not torch.equal(first, ds[0]["pseudo_image"])
    ds.set_epoch(0)
    assert torch.equal(first, ds[0]["pseudo_image"])
    with pytest.raises(ValueError, match="epoch"):
        ds.set_epoch(-1)


def test_negative_seed_is_refused():
    with pytest.raises(ValueError, match="seed"):
        make(seed=-1)


def test_dataloader_with_two_workers_matches_single_process():
    ds = make()
    serial = next(iter(DataLoader(ds, batch_size=6, num_workers=0)))
    parallel = torch.cat(
        [b["pseudo_image"] for b in DataLoader(ds, batch_size=2, num_workers=2, timeout=60)],
        dim=0,
    )
    assert torch.equal(serial["pseudo_image"], parallel)
    assert serial["pseudo_patch_labels"].shape == (6, 16)
    assert serial["index"].tolist() == list(range(6))


def test_only_normal_items_are_used():
    ds = make(WithSamples([0, 1, 0, 1, 0]))
    assert len(ds) == 3 and ds.indices == [0, 2, 4]
    assert torch.equal(ds[1]["image"], TinyNormals()[2]["image"])
    unlabelled = make(TinyNormals(3, [0, 1, 0]))  # no sample list: checked per item
    with pytest.raises(ValueError, match="normal images"):
        unlabelled[1]


def test_missing_foreground_means_whole_image():
    class NoForeground(TinyNormals):
        def __getitem__(self, i):
            item = super().__getitem__(i)
            del item["foreground"]
            return item

    item = make(NoForeground())[0]
    assert item["pseudo_mask"].sum() > 0


def test_numpy_rng_is_the_documented_one():
    ds = make(seed=9, epoch=2, rank=1)
    assert ds.rng(4).random() == np.random.default_rng([9, 2, 1, 4]).random()
