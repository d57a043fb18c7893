"""The synthetic generator: deterministic, MVTec layout, defects that are real and on the object."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pgray.data.__main__ import main as data_main
from pgray.data.synthetic import ensure_demo_dataset, generate, main
from pgray.data.synthetic_scenes import (
    DEFECTS,
    SYNTHETIC_CATEGORIES,
    TEXTURES,
    add_defect,
    make_sample,
    render_normal,
)
from pgray.errors import run_cli


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = tree_bytes(generate(tmp_path / "a", seed=3, size=32, n_train=2, n_test=4))
    b = tree_bytes(generate(tmp_path / "b", seed=3, size=32, n_train=2, n_test=4))
    c = tree_bytes(generate(tmp_path / "c", seed=4, size=32, n_train=2, n_test=4))
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a)


def test_layout_and_counts(tmp_path):
    root = generate(tmp_path, seed=0, size=32, n_train=3, n_test=10)
    assert sorted(p.name for p in root.iterdir()) == sorted(SYNTHETIC_CATEGORIES)
    for cat in SYNTHETIC_CATEGORIES:
        base = root / cat
        assert len(list((base / "train" / "good").glob("*.png"))) == 3
        fg = sorted((base / "train" / "foreground_mask").glob("*.png"))
        assert len(fg) == (0 if cat in TEXTURES else 3)
        assert len(list((base / "test" / "good").glob("*.png"))) == 5
        # 5 anomalies round-robin over 4 kinds: the first kind twice.
        counts = {d: len(list((base / "test" / d).glob("*.png"))) for d in DEFECTS[cat]}
        assert counts == {d: 2 if i == 0 else 1 for i, d in enumerate(DEFECTS[cat])}
        for defect in DEFECTS[cat]:
            for img in (base / "test" / defect).glob("*.png"):
                mask = np.asarray(
                    Image.open(base / "ground_truth" / defect / f"{img.stem}_mask.png")
                )
                assert mask.shape == (32, 32) and set(np.unique(mask)) == {0, 255}


def test_defects_change_pixels_only_inside_the_mask_and_lie_on_the_object():
    areas = []
    for cat in SYNTHETIC_CATEGORIES:
        for defect in DEFECTS[cat]:
            for i in range(6):
                rng = np.random.default_rng([SYNTHETIC_CATEGORIES.index(cat), i])
                scene = render_normal(cat, rng, 64)
                image, mask = add_defect(scene, defect, rng)
                assert mask.any() and np.all(mask <= scene.foreground)
                diff = np.abs(image - scene.image).sum(axis=2)
                assert np.all(diff[~mask] == 0)
                # Visible: the mean colour change inside the mask is large (in 8-bit units).
                assert diff[mask].mean() * 255 > 40, (cat, defect, i)
                areas.append(int(mask.sum()))
    # Sizes span small (a few pixels) to large defects.
    assert min(areas) <= 12 and max(areas) >= 150


def test_normal_images_vary(tmp_path):
    rng = np.random.default_rng(0)
    for cat in SYNTHETIC_CATEGORIES:
        imgs = [make_sample(cat, None, rng, 32)[0].astype(float) for _ in range(4)]
        for other in imgs[1:]:
            assert np.abs(imgs[0] - other).mean() > 5


def test_objects_move_and_rotate():
    fgs = [make_sample("gear", None, np.random.default_rng(i), 64)[2] for i in range(4)]
    centres = [np.argwhere(fg).mean(axis=0) for fg in fgs]
    assert max(np.linalg.norm(c - centres[0]) for c in centres) > 3
    assert all(not fg[0].any() and not fg[-1].any() for fg in fgs)  # clear of the border


def test_ensure_demo_dataset_generates_once(tmp_path, monkeypatch):
    monkeypatch.setenv("PGRAY_CACHE", str(tmp_path))
    root = ensure_demo_dataset(size=16, n_train=2, n_test=2)
    assert root.parent == tmp_path and root.name.startswith("synthetic-")
    marker = root / "disc" / "train" / "good" / "000.png"
    stamp = marker.stat().st_mtime_ns
    assert ensure_demo_dataset(size=16, n_train=2, n_test=2) == root
    assert marker.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no temporary folder left
    other = ensure_demo_dataset(cache_dir=tmp_path / "c", size=16, seed=1, n_train=2, n_test=2)
    assert other.parent == tmp_path / "c" and other.name != root.name


def test_failed_generation_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="size must be >= 16"):
        ensure_demo_dataset(cache_dir=tmp_path, size=8)
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_a_tree_that_checks(tmp_path, capsys):
    out = tmp_path / "syn"
    assert (
        run_cli(main, ["--out", str(out), "--size", "32", "--n-train", "2", "--n-test", "4"]) == 0
    )
    assert run_cli(data_main, ["check", "--dataset", "synthetic", "--root", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "OK: 24 images in 4 categories"
    assert run_cli(main, ["--out", str(out)]) == 2
    assert "output folder is not empty" in capsys.readouterr().err
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    assert os.listdir(out)  # still the first tree
