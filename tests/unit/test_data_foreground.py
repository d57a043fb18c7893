"""`python -m pgray.data foreground`: otsu recovers true object masks, Grad-CAM runs end to end
with a checkpoint the test writes, existing masks survive without --force."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from datatrees import write_tree
from PIL import Image

from pgray.data.__main__ import main
from pgray.data.registry import get_layout
from pgray.data.synthetic import generate
from pgray.errors import run_cli


def read_masks(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def foreground(capsys, root: Path, *extra: str) -> tuple[int, str, str]:
    code = run_cli(main, ["foreground", "--dataset", "synthetic", "--root", str(root), *extra])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def objects_root(tmp_path_factory) -> Path:
    return generate(
        tmp_path_factory.mktemp("objects"),
        seed=5,
        size=64,
        n_train=8,
        n_test=2,
        categories=("disc", "gear"),
    )


def test_otsu_recovers_true_foreground(objects_root, tmp_path, capsys):
    root = Path(shutil.copytree(objects_root, tmp_path / "t"))
    truth = {c: read_masks(root / c / "train" / "foreground_mask") for c in ("disc", "gear")}
    for c in truth:
        shutil.rmtree(root / c / "train" / "foreground_mask")
    code, out, _ = foreground(capsys, root, "--method", "otsu")
    assert code == 0 and "done: 16 written, 0 skipped" in out
    for cat, masks in truth.items():
        made = read_masks(root / cat / "train" / "foreground_mask")
        assert made.keys() == masks.keys() and len(made) == 8  # same names as the images
        ious = []
        for name, true in masks.items():
            assert made[name].dtype == np.uint8 and set(np.unique(made[name])) <= {0, 255}
            a, b = made[name] > 0, true > 0
            ious.append((a & b).sum() / (a | b).sum())
        assert np.mean(ious) >= 0.8, (cat, ious)
    # The layout now finds them.
    train = get_layout("synthetic").discover(root, "gear", "train")
    assert all(s.foreground_path is not None for s in train)


def test_existing_masks_kept_without_force(objects_root, tmp_path, capsys):
    root = Path(shutil.copytree(objects_root, tmp_path / "t"))
    target = root / "disc" / "train" / "foreground_mask" / "000.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(target)  # a deliberately wrong mask
    before = target.read_bytes()
    code, out, _ = foreground(capsys, root, "--category", "disc", "--method", "otsu")
    assert code == 0
    assert "skipped 8 existing mask(s); pass --force to overwrite them" in out
    assert target.read_bytes() == before
    code, out, _ = foreground(capsys, root, "--category", "disc", "--method", "otsu", "--force")
    assert code == 0 and "done: 8 written, 0 skipped" in out
    assert np.asarray(Image.open(target)).max() == 255
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]  # no temp files


def test_gradcam_end_to_end_with_local_checkpoint(tmp_path, capsys):
    root = generate(tmp_path / "d", seed=1, size=32, n_train=2, n_test=2, categories=("disc",))
    shutil.rmtree(root / "disc" / "train" / "foreground_mask")
    weights = tmp_path / "resnet18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    code, out, err = foreground(capsys, root, "--method", "gradcam", "--weights", str(weights))
    assert code == 0, err
    made = read_masks(root / "disc" / "train" / "foreground_mask")
    assert list(made) == ["000.png", "001.png"]
    for mask in made.values():
        assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 255} and mask.max() == 255


def test_gradcam_without_weights_names_both_options(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    root = generate(tmp_path / "d", seed=1, size=32, n_train=1, n_test=2, categories=("disc",))
    code, _, err = foreground(capsys, root, "--force")
    assert code == 2
    assert "--weights PATH" in err and str(tmp_path / "torch-home" / "hub" / "checkpoints") in err
    assert "--method otsu" in err and len(err.strip().splitlines()) == 1
    bogus = tmp_path / "bogus.pth"
    bogus.write_text("not a checkpoint")
    code, _, err = foreground(capsys, root, "--force", "--weights", str(bogus))
    assert code == 2 and f"{bogus}: not a torchvision resnet18 state_dict" in err


def test_visa_masks_go_where_the_reference_reads_them(tmp_path, capsys):
    root = write_tree("visa", tmp_path)
    folder = root / "candle" / "Data" / "Images" / "foreground_mask"
    # The reference names VisA masks like the image (0000.JPG): such a mask counts as existing.
    (folder / "0000.png").rename(folder / "0000.JPG")
    argv = ["foreground", "--dataset", "visa", "--root", str(root), "--method", "otsu"]
    assert run_cli(main, argv) == 0
    assert "done: 0 written, 3 skipped" in capsys.readouterr().out
    assert run_cli(main, [*argv, "--force"]) == 0
    assert "done: 3 written, 0 skipped" in capsys.readouterr().out  # the 1cls train normals
    assert sorted(p.name for p in folder.iterdir()) == [
        "0000.JPG",
        "0001.png",
        "0002.png",
        "0003.png",
    ]
    with Image.open(folder / "0000.JPG") as rewritten:
        assert rewritten.format == "PNG" and rewritten.size == (32, 32)


def test_texture_categories_skipped_unless_named(tmp_path, capsys):
    root = generate(tmp_path, seed=2, size=32, n_train=1, n_test=2)
    code, out, _ = foreground(capsys, root, "--method", "otsu", "--force")
    assert (
        code == 0 and "skipping texture categories (whole image is foreground): grain, weave" in out
    )
    assert not (root / "weave" / "train" / "foreground_mask").exists()
    code, out, _ = foreground(capsys, root, "--method", "otsu", "--category", "weave")
    assert code == 0 and (root / "weave" / "train" / "foreground_mask" / "000.png").is_file()
