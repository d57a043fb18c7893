"""`python -m pgray.pseudo preview`: grid PNG from a real (synthetic) dataset tree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pgray.data.synthetic import generate
from pgray.errors import run_cli
from pgray.pseudo.__main__ import main
from pgray.pseudo.preview import GAP

SIZE = 32


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return generate(
        tmp_path_factory.mktemp("syn"), seed=0, size=SIZE, n_train=4, n_test=2, categories=("disc",)
    )


def preview_args(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "preview", "--dataset", "synthetic", "--root", str(root), "--category", "disc",
        "--out", str(out), "--size", str(SIZE), "--patch-size", "8", "--n", "3", *extra,
    ]  # fmt: skip


def test_preview_writes_a_grid_of_normals_pseudo_anomalies_and_masks(root, tmp_path):
    out = tmp_path / "sub" / "grid.png"
    assert main(preview_args(root, out)) == 0
    grid = np.asarray(Image.open(out).convert("RGB"))
    tile = SIZE + GAP
    assert grid.shape == (3 * tile + GAP, 3 * tile + GAP, 3)
    rows = [grid[GAP + r * tile : GAP + r * tile + SIZE] for r in range(3)]
    normals, pseudo, masks = rows
    assert not np.array_equal(normals, pseudo)  # every column got its anomaly
    for c in range(3):
        cols = slice(GAP + c * tile, GAP + c * tile + SIZE)
        changed = (normals[:, cols] != pseudo[:, cols]).any(axis=2)
        white = (masks[:, cols] == 255).all(axis=2)
        assert white.any() and not (changed & ~white).any()
    assert [p.name for p in out.parent.iterdir()] == ["grid.png"]  # no temp file left behind


def test_preview_is_deterministic_for_a_seed(root, tmp_path):
    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    main(preview_args(root, a, "--seed", "3"))
    main(preview_args(root, b, "--seed", "3"))
    main(preview_args(root, c, "--seed", "4"))
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


def test_preview_reads_the_pseudo_section_of_a_config(root, tmp_path, capsys):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("pseudo:\n  rotation: 500\n")
    assert run_cli(main, preview_args(root, tmp_path / "g.png", "--config", str(cfg))) == 2
    assert capsys.readouterr().err.startswith("error: pseudo.rotation:")


@pytest.mark.parametrize(
    "change,message",
    [
        ({"--dataset": "nope"}, "error: unknown dataset 'nope'"),
        ({"--category": "missing"}, "error: "),
        ({"--n": "0"}, "error: --n: must be >= 1"),
        ({"--size": "30"}, "error: patch_size:"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(root, tmp_path, capsys, change, message):
    args = preview_args(root, tmp_path / "g.png")
    for flag, value in change.items():
        args[args.index(flag) + 1] = value
    assert run_cli(main, args) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert not (tmp_path / "g.png").exists()


def test_help_imports_neither_torch_nor_cv2():
    code = (
        "import sys, contextlib, io\n"
        "import pgray.config\n"
        "from pgray.pseudo.__main__ import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
        "    main(['preview', '--help'])\n"
        "assert '--dataset' in out.getvalue()\n"
        "print(sorted(m for m in ('torch', 'cv2', 'numpy') if m in sys.modules))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
