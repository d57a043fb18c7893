"""The node's decode cache: bit-identical items, one build under concurrent builders,
rebuilt when a source file changes; the training loader's persistent workers."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pgray.data.cache import decoded_split
from pgray.data.dataset import ADDataset
from pgray.data.registry import get_layout


def assert_same_items(direct: ADDataset, cached: ADDataset) -> None:
    assert cached.cache is not None and direct.cache is None
    for i in range(len(direct)):
        a, b = direct[i], cached[i]
        assert a.keys() == b.keys()
        for key, value in a.items():
            if isinstance(value, torch.Tensor):
                assert value.dtype == b[key].dtype and torch.equal(value, b[key]), (i, key)
            else:
                assert value == b[key], (i, key)


@pytest.mark.parametrize("rule", ["nearest", "lanczos_any"])
def test_cached_items_equal_decoded_ones_bit_for_bit(synthetic_root, tmp_path, rule):
    layout = get_layout("synthetic")
    for split in ("train", "test"):  # train: foreground masks; test: defect masks
        samples = layout.discover(synthetic_root, "disc", split)
        assert any(s.foreground_path or s.mask_path for s in samples)
        for size in (24, 48):  # down and up from the 32 px sources
            direct = ADDataset(samples, size, rule)
            assert_same_items(direct, ADDataset(samples, size, rule, cache_dir=tmp_path))
    # Repeated samples (the proxy's repeats) share one stored row.
    normals = layout.discover(synthetic_root, "weave", "train")[:3]
    twice = ADDataset(normals * 2, 32, cache_dir=tmp_path)
    assert twice.cache.rows == [0, 1, 2, 0, 1, 2]
    assert_same_items(ADDataset(normals * 2, 32), twice)


def _build(args: tuple) -> str:
    samples, cache_dir = args
    return str(decoded_split(samples, 40, "nearest", cache_dir).folder)


def test_concurrent_builders_make_one_valid_entry(synthetic_root, tmp_path):
    samples = get_layout("synthetic").discover(synthetic_root, "disc", "test")
    with multiprocessing.get_context("fork").Pool(3) as pool:
        folders = pool.map(_build, [(samples, tmp_path)] * 3)
    assert len(set(folders)) == 1
    entries = list((tmp_path / "decoded").iterdir())
    assert [e.name for e in entries if e.is_dir()] == [Path(folders[0]).name]  # no temp left
    assert_same_items(ADDataset(samples, 40), ADDataset(samples, 40, cache_dir=tmp_path))


def test_a_changed_source_file_rebuilds_the_entry(synthetic_root, tmp_path):
    root = tmp_path / "data"
    (root / "weave" / "train" / "good").mkdir(parents=True)
    for src in sorted((synthetic_root / "weave" / "train" / "good").iterdir())[:3]:
        (root / "weave" / "train" / "good" / src.name).write_bytes(src.read_bytes())
    samples = get_layout("synthetic").discover(root, "weave", "train")
    first = ADDataset(samples, 32, cache_dir=tmp_path / "cache")
    assert ADDataset(samples, 32, cache_dir=tmp_path / "cache").cache.folder == first.cache.folder
    changed = samples[1].image_path
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(changed)
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later mtime
    again = ADDataset(samples, 32, cache_dir=tmp_path / "cache")
    assert again.cache.folder != first.cache.folder
    assert not first.cache.folder.exists()  # the stale entry is gone
    assert torch.all(again[1]["image"] == 200 / 255.0)
    assert_same_items(ADDataset(samples, 32), again)


def test_an_unwritable_cache_falls_back_to_decoding(synthetic_root, tmp_path):
    samples = get_layout("synthetic").discover(synthetic_root, "weave", "train")[:2]
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.warns(UserWarning, match="decode cache"):
        fallback = ADDataset(samples, 32, cache_dir=blocker)
    assert fallback.cache is None
    assert torch.equal(fallback[0]["image"], ADDataset(samples, 32)[0]["image"])


def test_training_loader_keeps_its_workers_and_each_epochs_anomalies(synthetic_root):
    from helpers import tiny_experiment

    from pgray.core.training_data import build_datasets, make_loader

    cfg = tiny_experiment(synthetic_root, train={"loader_workers": 1})
    train, _ = build_datasets(cfg, patch_size=8)
    assert train.base.cache is not None  # read from the decode cache
    loader = make_loader(train, 4, shuffle=True, cfg=cfg, rank=0, world_size=1,
                         device=torch.device("cpu"))
    assert loader.persistent_workers and loader.num_workers == 1
    pids = []
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        train.set_epoch(epoch)
        batches = list(loader)
        pids.append(loader._iterator._workers[0].pid)
        for batch in batches:  # what the worker made is this epoch's pseudo-anomaly
            for index, pseudo in zip(batch["index"].tolist(), batch["pseudo_image"]):
                assert torch.equal(pseudo, train[index]["pseudo_image"])
    assert pids[0] == pids[1]  # the same worker process served both epochs
    train.set_epoch(0)
    first = train[0]["pseudo_image"]
    assert not torch.equal(first, train[(1, 0)]["pseudo_image"])
