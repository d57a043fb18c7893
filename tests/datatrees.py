"""Tiny dataset trees in every supported layout, drawn with the synthetic generator.

Each writer builds one layout under `root` (32 x 32 images, a few per split) and returns the
root. Counts are module constants so tests can assert exact numbers.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from pgray.data.synthetic_scenes import make_sample

SIZE = 32
N_TRAIN = 3
N_GOOD = 2  # normal test images
N_PER_DEFECT = 2


class Drawer:
    """Deterministic images: each call draws the next one from a seeded stream."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def image(
        self, category: str, defect: str | None = None
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        return make_sample(category, defect, self.rng, SIZE)


def save(path: Path, array: np.ndarray, gray: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array)
    if gray:
        img = img.convert("L")
    if path.suffix.lower() in (".jpg", ".jpeg"):
        img.save(path, quality=95)
    else:
        img.save(path)
    return path


def mask_array(mask: np.ndarray) -> np.ndarray:
    return mask.astype(np.uint8) * 255


def write_mvtec_like(
    base: Path,
    draw: Drawer,
    style: str,
    defects: dict[str, str],
    normal: str = "good",
    image_ext: str = ".png",
    mask_name: str = "{stem}_mask.png",
    foreground: bool = False,
    gray: bool = False,
) -> Path:
    """`train/<normal>`, `test/<normal>`, `test/<defect>`, `ground_truth/<defect>/<mask_name>`.

    `defects` maps folder name -> synthetic defect kind drawn on `style` images.
    """
    for i in range(N_TRAIN):
        image, _, fg = draw.image(style)
        save(base / "train" / normal / f"{i:03d}{image_ext}", image, gray)
        if foreground:
            save(base / "train" / "foreground_mask" / f"{i:03d}.png", mask_array(fg))
    for i in range(N_GOOD):
        save(base / "test" / normal / f"{i:03d}{image_ext}", draw.image(style)[0], gray)
    for folder, kind in defects.items():
        for i in range(N_PER_DEFECT):
            image, mask, _ = draw.image(style, kind)
            stem = f"{i:03d}"
            save(base / "test" / folder / f"{stem}{image_ext}", image, gray)
            save(
                base / "ground_truth" / folder / mask_name.format(stem=stem, ext=image_ext),
                mask_array(mask),
            )
    return base


MVTEC_DEFECTS = {
    "bottle": {"broken_large": "missing_piece", "contamination": "contamination"},
    "carpet": {"hole": "hole", "color": "stain"},
}


def write_mvtec(root: Path) -> Path:
    draw = Drawer(1)
    write_mvtec_like(root / "bottle", draw, "disc", MVTEC_DEFECTS["bottle"], foreground=True)
    write_mvtec_like(root / "carpet", draw, "grain", MVTEC_DEFECTS["carpet"])
    return root


def write_mpdd(root: Path) -> Path:
    return write_mvtec_like(
        root / "bracket_black", Drawer(2), "gear", {"hole": "hole"}, foreground=True
    ).parent


def write_wfdd(root: Path) -> Path:
    return write_mvtec_like(root / "grey_cloth", Drawer(3), "weave", {"stain": "stain"}).parent


def write_dtd(root: Path) -> Path:
    return write_mvtec_like(root / "Woven_001", Drawer(4), "weave", {"bad": "scratch"}).parent


def write_btad(root: Path) -> Path:
    """BMP images, PNG masks with the image's plain stem, as BTAD ships them."""
    write_mvtec_like(
        root / "01", Drawer(5), "grain", {"ko": "crack"}, normal="ok", image_ext=".bmp",
        mask_name="{stem}.png", foreground=True,
    )  # fmt: skip
    return root


def write_headct(root: Path) -> Path:
    return write_mvtec_like(
        root,
        Drawer(6),
        "disc",
        {"hemorrhage": "stain"},
        image_ext=".png",
        gray=True,
        foreground=True,
    )


BRATS_IMAGES = {"train": N_TRAIN, "good": N_GOOD, "tumor": N_PER_DEFECT}


def write_brats(root: Path) -> Path:
    """`train/normal`, `test/normal`, `test/tumor/*flair*`, flat `ground_truth/*seg*`."""
    draw = Drawer(7)
    for i in range(N_TRAIN):
        image, _, fg = draw.image("disc")
        save(root / "train" / "normal" / f"BraTS_{i:03d}_flair_70.png", image, gray=True)
        save(root / "train" / "foreground_mask" / f"BraTS_{i:03d}_flair_70.png", mask_array(fg))
    for i in range(N_GOOD):
        save(
            root / "test" / "normal" / f"BraTS_{100 + i:03d}_flair_70.png",
            draw.image("disc")[0],
            gray=True,
        )
    for i in range(N_PER_DEFECT):
        image, mask, _ = draw.image("disc", "stain")
        save(root / "test" / "tumor" / f"BraTS_{200 + i:03d}_flair_80.png", image, gray=True)
        save(root / "ground_truth" / f"BraTS_{200 + i:03d}_seg_80.png", mask_array(mask))
    return root


VISA_NORMALS = 5  # 3 train + 2 test in 1cls.csv
VISA_ANOMALIES = 3
VISA_WITH_FOREGROUND = 4  # the reference split trains on these


def write_visa(root: Path) -> Path:
    """Raw VisA `candle` with JPEG images, PNG masks, split_csv/1cls.csv, image_anno.csv and
    reference-style foreground masks for the first four normals."""
    draw = Drawer(8)
    cat = root / "candle"
    rows = [("object", "split", "label", "image", "mask")]
    for i in range(VISA_NORMALS):
        image, _, fg = draw.image("disc")
        rel = f"candle/Data/Images/Normal/{i:04d}.JPG"
        save(root / rel, image)
        rows.append(("candle", "train" if i < 3 else "test", "normal", rel, ""))
        if i < VISA_WITH_FOREGROUND:
            save(cat / "Data" / "Images" / "foreground_mask" / f"{i:04d}.png", mask_array(fg))
    anno = [("image", "label", "mask")]
    for i in range(VISA_ANOMALIES):
        image, mask, _ = draw.image("disc", "stain")
        rel, mrel = (
            f"candle/Data/Images/Anomaly/{i:03d}.JPG",
            f"candle/Data/Masks/Anomaly/{i:03d}.png",
        )
        save(root / rel, image)
        save(root / mrel, mask_array(mask))
        rows.append(("candle", "test", "anomaly", rel, mrel))
        anno.append((rel, "wax stain" if i < 2 else "weird wick", mrel))
    _write_csv(root / "split_csv" / "1cls.csv", rows)
    _write_csv(cat / "image_anno.csv", anno)
    return root


def _write_csv(path: Path, rows: list[tuple[str, ...]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)


FOLDER_NORMALS = 5
FOLDER_OPTIONS = {
    "normal_dir": "ok",
    "abnormal_dir": "bad",
    "mask_dir": "masks",
    "test_fraction": 0.4,
}


def write_folder(root: Path) -> Path:
    """`ok/` normals, `bad/` anomalies (2 loose + 2 in `bad/dent/`), masks in `masks/`."""
    draw = Drawer(9)
    for i in range(FOLDER_NORMALS):
        save(root / "ok" / f"n{i}.png", draw.image("gear")[0])
    for i, sub in enumerate(("", "", "dent", "dent")):
        image, mask, _ = draw.image("gear", "hole")
        save(root / "bad" / sub / f"a{i}.png", image)
        save(root / "masks" / f"a{i}_mask.png", mask_array(mask))
    return root


WRITERS = {
    "mvtec": write_mvtec,
    "mpdd": write_mpdd,
    "wfdd": write_wfdd,
    "dtd_synthetic": write_dtd,
    "btad": write_btad,
    "headct": write_headct,
    "brats2021": write_brats,
    "visa": write_visa,
    "folder": write_folder,
}


def write_tree(kind: str, root: Path) -> Path:
    """Write layout `kind` under `root` and return the dataset root."""
    root.mkdir(parents=True, exist_ok=True)
    return WRITERS[kind](root)
