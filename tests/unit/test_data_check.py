"""`python -m pgray.data check`: valid trees pass with counts; each broken rule exits 2 with
one stderr line that names the offending file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from datatrees import FOLDER_OPTIONS, N_GOOD, N_PER_DEFECT, N_TRAIN, write_tree
from PIL import Image

from pgray.data.__main__ import main
from pgray.errors import run_cli

REPO = Path(__file__).resolve().parents[2]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = run_cli(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def check(capsys, dataset: str, root: Path, *extra: str) -> tuple[int, str, str]:
    return run(capsys, "check", "--dataset", dataset, "--root", str(root), *extra)


def assert_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_check_valid_mvtec_tree_prints_counts(tmp_path, capsys):
    root = write_tree("mvtec", tmp_path)
    code, out, _ = check(capsys, "mvtec", root)
    assert code == 0
    rows = [line.split() for line in out.splitlines() if not line.startswith("checking ")][1:-1]
    assert ["bottle", "train", "good", str(N_TRAIN), "0", str(N_TRAIN)] in rows
    assert ["bottle", "test", "good", str(N_GOOD), "0", "0"] in rows
    assert ["carpet", "test", "hole", str(N_PER_DEFECT), str(N_PER_DEFECT), "0"] in rows
    total = 2 * (N_TRAIN + N_GOOD + 2 * N_PER_DEFECT)
    assert out.splitlines()[-1] == f"OK: {total} images in 2 categories"


@pytest.mark.parametrize(
    "name", ["visa", "btad", "brats2021", "headct", "wfdd", "mpdd", "dtd_synthetic"]
)
def test_check_accepts_every_layout(name, tmp_path, capsys):
    code, out, err = check(capsys, name, write_tree(name, tmp_path))
    assert code == 0, err
    assert out.splitlines()[-1].startswith("OK: ")


def test_check_folder_layout_with_options(tmp_path, capsys):
    root = write_tree("folder", tmp_path)
    opts = [f"--option={k}={v}" for k, v in FOLDER_OPTIONS.items()]
    code, out, err = check(capsys, "folder", root, *opts)
    assert code == 0, err
    assert "OK: 9 images in 1 category" in out


def test_missing_root(tmp_path, capsys):
    code, _, err = check(capsys, "mvtec", tmp_path / "absent")
    assert_error(code, err, str(tmp_path / "absent"), "dataset root not found")


def test_missing_category_lists_available(tmp_path, capsys):
    root = write_tree("mvtec", tmp_path)
    code, _, err = check(capsys, "mvtec", root, "--category", "screw")
    assert_error(code, err, str(root / "screw"), "not found", "available under", "bottle, carpet")


def test_empty_train_split(tmp_path, capsys):
    root = write_tree("mvtec", tmp_path)
    for p in (root / "bottle" / "train" / "good").iterdir():
        p.unlink()
    code, _, err = check(capsys, "mvtec", root, "--category", "bottle")
    assert_error(code, err, str(root / "bottle"), "empty train split", "train/good/")


def test_anomalous_image_without_mask(tmp_path, capsys):
    root = write_tree("mvtec", tmp_path)
    (root / "carpet" / "ground_truth" / "hole" / "001_mask.png").unlink()
    code, _, err = check(capsys, "mvtec", root)
    image = root / "carpet" / "test" / "hole" / "001.png"
    assert_error(code, err, str(image), "anomalous image without its mask", "_mask.png")


def test_mask_without_image(tmp_path, capsys):
    root = write_tree("mvtec", tmp_path)
    (root / "bottle" / "test" / "contamination" / "000.png").unlink()
    code, _, err = check(capsys, "mvtec", root)
    mask = root / "bottle" / "ground_truth" / "contamination" / "000_mask.png"
    assert_error(code, err, str(mask), "mask without an image")


def test_visa_mask_without_image(tmp_path, capsys):
    root = write_tree("visa", tmp_path)
    (root / "candle" / "Data" / "Images" / "Anomaly" / "002.JPG").unlink()
    code, _, err = check(capsys, "visa", root)
    assert_error(
        code, err, str(root / "candle" / "Data" / "Masks" / "Anomaly" / "002.png"), "mask without"
    )


def test_mask_of_the_wrong_size(tmp_path, capsys):
    root = write_tree("btad", tmp_path)
    mask = root / "01" / "ground_truth" / "ko" / "001.png"
    Image.fromarray(np.zeros((16, 20), np.uint8)).save(mask)
    code, _, err = check(capsys, "btad", root)
    assert_error(code, err, str(mask), "mask is 20x16", "001.bmp is 32x32")


def test_truncated_image_via_subprocess(tmp_path):
    root = write_tree("headct", tmp_path)
    image = root / "test" / "good" / "001.png"
    image.write_bytes(image.read_bytes()[:120])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "pgray.data", "check", "--dataset", "headct", "--root", str(root)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {image}: cannot decode image"), proc.stderr


def test_unknown_dataset_lists_known(tmp_path, capsys):
    code, _, err = check(capsys, "mvtech", tmp_path)
    assert_error(code, err, "unknown dataset 'mvtech'", "mvtec", "visa", "folder", "synthetic")


def test_no_category_present(tmp_path, capsys):
    code, _, err = check(capsys, "mpdd", tmp_path)
    assert_error(code, err, str(tmp_path), "no mpdd category found", "bracket_black")


def test_help_is_fast_and_imports_nothing_heavy():
    code = (
        "import sys, time; t = time.perf_counter(); from pgray.data.__main__ import build_parser;"
        "build_parser().format_help(); print(time.perf_counter() - t,"
        " any(m in sys.modules for m in ('torch', 'PIL', 'numpy')))"
    )
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    seconds, heavy = proc.stdout.split()
    assert heavy == "False"
    assert float(seconds) < 0.5 and time.perf_counter() - start < 10


def test_list_command(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    assert "synthetic      weave grain disc gear" in out.splitlines()
