"""ADDataset: shapes, ranges, resize rules, foreground defaults, errors; load_split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from datatrees import write_tree
from PIL import Image

from pgray.config import DataConfig
from pgray.data.dataset import ADDataset, load_split
from pgray.data.imageio import resize_mask
from pgray.data.registry import get_layout
from pgray.data.samples import Sample
from pgray.errors import DatasetError


def square_mask_sample(tmp_path: Path) -> Sample:
    """A 32 x 32 image whose mask is an 8 x 8 square at rows/cols 8..15."""
    img = tmp_path / "img.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(img)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:16, 8:16] = 255
    Image.fromarray(mask).save(tmp_path / "img_mask.png")
    return Sample(img, 1, "square", tmp_path / "img_mask.png", None)


@pytest.mark.parametrize("size", [32, 48, 224])
def test_items_have_contract_shapes_and_ranges(synthetic_root, size):
    samples = get_layout("synthetic").discover(synthetic_root, "disc", "test")
    ds = ADDataset(samples, img_size=size)
    assert len(ds) == len(samples) == 8
    items = [ds[i] for i in range(len(ds))]
    for item, sample in zip(items, samples):
        assert item["image"].shape == (3, size, size) and item["image"].dtype == torch.float32
        assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
        assert item["mask"].shape == (1, size, size) and item["mask"].dtype == torch.float32
        assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
        assert item["label"].dtype == torch.int64 and item["label"].ndim == 0
        assert item["label"].item() == sample.label
        assert item["foreground"].shape == (1, size, size)
        assert torch.all(item["foreground"] == 1)  # test images have no foreground file
        assert item["image_path"] == str(sample.image_path)
        assert item["mask_path"] == (str(sample.mask_path) if sample.mask_path else "")
        # Anomalous images carry a non-empty mask, normal ones an empty one.
        assert (item["mask"].sum() > 0) == bool(sample.label)


def test_image_is_lanczos_resized_pixels(synthetic_root):
    sample = get_layout("synthetic").discover(synthetic_root, "weave", "train")[0]
    item = ADDataset([sample], img_size=32)[0]  # native size: the exact pixels / 255
    raw = np.asarray(Image.open(sample.image_path), dtype=np.float32) / 255
    np.testing.assert_allclose(item["image"].permute(1, 2, 0).numpy(), raw, atol=1e-7)
    big = ADDataset([sample], img_size=64)[0]["image"]
    ref = Image.open(sample.image_path).resize((64, 64), Image.Resampling.LANCZOS)
    np.testing.assert_allclose(big.permute(1, 2, 0).numpy(), np.asarray(ref) / 255, atol=1e-6)


def test_train_foreground_loads_true_mask(synthetic_root):
    sample = get_layout("synthetic").discover(synthetic_root, "disc", "train")[0]
    fg = ADDataset([sample], img_size=32)[0]["foreground"][0].numpy()
    truth = np.asarray(Image.open(sample.foreground_path)) > 0
    assert np.array_equal(fg.astype(bool), truth)
    assert 0.1 < fg.mean() < 0.5  # an object, not the whole image


def test_mask_resize_rules(tmp_path):
    sample = square_mask_sample(tmp_path)
    nearest = ADDataset([sample], img_size=64, mask_resize="nearest")[0]["mask"][0].numpy()
    lanczos = ADDataset([sample], img_size=64, mask_resize="lanczos_any")[0]["mask"][0].numpy()
    # Nearest doubles the square exactly: rows/cols 16..31.
    expected = np.zeros((64, 64), np.float32)
    expected[16:32, 16:32] = 1
    assert np.array_equal(nearest, expected)
    # Lanczos-then-any-positive (the reference rule) keeps the square and dilates it a little.
    assert np.all(lanczos[16:32, 16:32] == 1)
    assert 256 < lanczos.sum() <= 24 * 24
    assert lanczos[:10].sum() == 0 and lanczos[40:].sum() == 0


def test_resize_mask_downsampling_keeps_thin_defects_only_with_lanczos_any():
    mask = np.zeros((64, 64), bool)
    mask[:, 31] = True  # a one-pixel-wide scratch
    assert resize_mask(mask, 16, "nearest").sum() == 0  # nearest samples other columns
    assert resize_mask(mask, 16, "lanczos_any").sum() >= 16


def test_unknown_mask_rule_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="mask_resize"):
        ADDataset([square_mask_sample(tmp_path)], mask_resize="bicubic")  # type: ignore[arg-type]


def test_truncated_image_names_the_file(tmp_path):
    sample = square_mask_sample(tmp_path)
    data = sample.image_path.read_bytes()
    sample.image_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=f"{sample.image_path}: cannot decode image"):
        ADDataset([sample])[0]


def test_mask_size_mismatch_names_the_mask(tmp_path):
    sample = square_mask_sample(tmp_path)
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(sample.mask_path)
    with pytest.raises(
        DatasetError, match=f"{sample.mask_path}: mask is 12x10 but its image img.png is 32x32"
    ):
        ADDataset([sample])[0]


def test_grayscale_and_16bit_images_become_rgb(tmp_path):
    gray = tmp_path / "ct.png"
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(gray)
    item = ADDataset([Sample(gray, 0, "good")], img_size=8)[0]
    assert item["image"].shape == (3, 8, 8)
    np.testing.assert_allclose(item["image"].numpy(), round(40000 / 257) / 255, atol=1e-6)


def test_load_split_from_config(synthetic_root):
    cfg = DataConfig(
        dataset="synthetic", root=str(synthetic_root), category="disc", mask_resize="lanczos_any"
    )
    train = load_split(cfg, "train", img_size=48)
    test = load_split(cfg, "test", img_size=48)
    assert (len(train), len(test)) == (12, 8)
    assert train.mask_resize == "lanczos_any" and train[0]["image"].shape == (3, 48, 48)
    assert sum(test.labels) == 4


def test_load_split_passes_visa_split_and_options(tmp_path):
    root = write_tree("visa", tmp_path / "visa")
    ref = load_split(
        DataConfig(dataset="visa", root=str(root), category="candle", visa_split="reference"),
        "train",
        32,
    )
    official = load_split(
        DataConfig(dataset="visa", root=str(root), category="candle"), "train", 32
    )
    assert (len(ref), len(official)) == (4, 3)
    folder = write_tree("folder", tmp_path / "folder")
    cfg = DataConfig(
        dataset="folder", root=str(folder), options={"normal_dir": "ok", "abnormal_dir": "bad"}
    )
    assert len(load_split(cfg, "test", 32)) == 1 + 4  # 0.2 of 5 normals held out, 4 anomalies


def test_load_split_empty_root_uses_demo_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("PGRAY_CACHE", str(tmp_path))
    cfg = DataConfig(
        dataset="synthetic", category="gear", options={"size": 16, "n_train": 2, "n_test": 2}
    )
    ds = load_split(cfg, "train", img_size=16)
    assert len(ds) == 2
    assert Path(ds.samples[0].image_path).is_relative_to(tmp_path)
    with pytest.raises(DatasetError, match="data.root: required for dataset mvtec"):
        load_split(DataConfig(dataset="mvtec", category="bottle"), "train", 32)
