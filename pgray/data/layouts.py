"""The built-in dataset layouts (docs/method.md, "Datasets"), one class per family."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, ClassVar

from pgray.data.layout_base import DatasetLayout
from pgray.data.samples import (
    Sample,
    anomalous_samples,
    find_foreground,
    list_images,
    list_subdirs,
    normal_samples,
    pair_masks,
    require_dir,
    strip_mask_suffix,
)
from pgray.data.synthetic_scenes import SYNTHETIC_CATEGORIES, TEXTURES
from pgray.errors import DatasetError


class MVTecLike(DatasetLayout):
    """`train/<normal>/`, `test/<normal or defect>/`, `ground_truth/<defect>/<stem>_mask.*`."""

    normal_dir: ClassVar[str] = "good"
    mask_rule: ClassVar[str] = "ground_truth/<defect>/<stem>_mask.png"

    def split_hint(self, split: str) -> str:
        return f"expected images in {split}/{self.normal_dir}/"

    @staticmethod
    def mask_key(stem: str) -> str:
        return strip_mask_suffix(stem)

    def _discover(
        self, root: Path, base: Path, category: str, split: str, options: dict[str, Any]
    ) -> list[Sample]:
        if split == "train":
            train = require_dir(base / "train", "train split")
            return normal_samples(list_images(train / self.normal_dir), train / "foreground_mask")
        test = require_dir(base / "test", "test split")
        return normal_samples(list_images(test / self.normal_dir)) + self.anomalous(base, test)

    def defects(self, base: Path, test: Path) -> list[str]:
        # Ground-truth folders without a test folder count too: their masks have no image.
        found = set(list_subdirs(test)) | set(list_subdirs(base / "ground_truth"))
        return sorted(found - {self.normal_dir})

    def anomalous(self, base: Path, test: Path) -> list[Sample]:
        out: list[Sample] = []
        for defect in self.defects(base, test):
            images = list_images(test / defect)
            masks = list_images(base / "ground_truth" / defect)
            out += anomalous_samples(
                pair_masks(images, masks, self.mask_rule, self.mask_key), defect
            )
        return out


class MVTec(MVTecLike):
    name = "mvtec"
    categories = (
        "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
        "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
    )  # fmt: skip
    textures = ("carpet", "grid", "leather", "tile", "wood")


class MPDD(MVTecLike):
    name = "mpdd"
    categories = (
        "bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes",
    )  # fmt: skip


class WFDD(MVTecLike):
    name = "wfdd"
    categories = ("grey_cloth", "grid_cloth", "pink_flower", "yellow_cloth")
    textures = categories


class DTDSynthetic(MVTecLike):
    name = "dtd_synthetic"
    categories = (
        "Blotchy_099", "Fibrous_183", "Marbled_078", "Matted_069", "Mesh_114", "Perforated_037",
        "Stratified_154", "Woven_001", "Woven_068", "Woven_104", "Woven_125", "Woven_127",
    )  # fmt: skip
    textures = categories


class Synthetic(MVTecLike):
    """The procedural dataset of `pgray.data.synthetic` (MVTec layout)."""

    name = "synthetic"
    categories = SYNTHETIC_CATEGORIES
    textures = TEXTURES
    # Only read when the root is empty: they pick the cached demo dataset (see load_split).
    option_names = frozenset({"seed", "size", "n_train", "n_test"})


class BTAD(MVTecLike):
    name = "btad"
    categories = ("01", "02", "03")
    textures = ("02",)  # the reference uses foreground masks for 01 and 03 only
    normal_dir = "ok"
    mask_rule = "ground_truth/<defect>/<stem>.png (or <stem>_mask.png)"


class HeadCT(MVTecLike):
    name = "headct"
    categories = ("headct",)
    single_category = True
    mask_rule = "ground_truth/<anomaly>/<stem>_mask.<ext>"


class BraTS2021(MVTecLike):
    """2-D FLAIR slices; masks sit in `ground_truth/` (or a per-anomaly subfolder) named with
    "seg" where the image has "flair"."""

    name = "brats2021"
    categories = ("brats2021",)
    single_category = True
    normal_dir = "normal"
    mask_rule = "ground_truth/<image name with flair -> seg>"

    @staticmethod
    def mask_key(stem: str) -> str:
        return strip_mask_suffix(stem).replace("seg", "flair")

    def anomalous(self, base: Path, test: Path) -> list[Sample]:
        gt = base / "ground_truth"
        defects = sorted(set(list_subdirs(test)) - {self.normal_dir})
        images = {img: d for d in defects for img in list_images(test / d)}
        masks = list_images(gt) + [m for d in list_subdirs(gt) for m in list_images(gt / d)]
        # One flat pool: a mask is found by name, wherever its anomaly folder is.
        pairs = pair_masks(list(images), masks, self.mask_rule, self.mask_key)
        return [Sample(img, 1, images[img], mask, None) for img, mask in pairs.items()]


class VisA(DatasetLayout):
    """Raw VisA: `<cat>/Data/Images/{Normal,Anomaly}`, `<cat>/Data/Masks/Anomaly/<stem>.png`.

    Split "1cls": the official `split_csv/1cls.csv` (paths relative to the VisA root).
    Split "reference": the PatchGuard code's; train = normals that have a foreground mask in
    `<cat>/Data/Images/foreground_mask/`, test = the other normals and every anomaly.
    """

    name = "visa"
    categories = (
        "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
        "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
    )  # fmt: skip
    marker = "Data/Images"
    mask_rule = "Data/Masks/Anomaly/<stem>.png"
    csv_columns = ("object", "split", "label", "image", "mask")

    def foreground_dir(self, root: Path, category: str, options: dict[str, Any]) -> Path:
        return self.category_dir(root, category) / "Data" / "Images" / "foreground_mask"

    def split_hint(self, split: str) -> str:
        if split == "train":
            return (
                "1cls: rows with split=train in split_csv/1cls.csv; reference: normal images"
                " with a mask in Data/Images/foreground_mask/ (pgray.data foreground writes them)"
            )
        return f"no {split} rows or images"

    def split_mode(self, options: dict[str, Any]) -> str:
        mode = options.get("visa_split", "1cls")
        if mode not in ("1cls", "reference"):
            raise DatasetError(f"data.visa_split: must be '1cls' or 'reference', got {mode!r}")
        return mode

    def _discover(
        self, root: Path, base: Path, category: str, split: str, options: dict[str, Any]
    ) -> list[Sample]:
        images = require_dir(base / "Data" / "Images", "VisA image folder")
        normals = list_images(require_dir(images / "Normal", "VisA normal images"))
        anomalies = list_images(images / "Anomaly")
        masks = pair_masks(
            anomalies, list_images(base / "Data" / "Masks" / "Anomaly"), self.mask_rule
        )
        fg_dir = images / "foreground_mask"
        defects = self.defect_types(base)
        if self.split_mode(options) == "reference":
            with_fg = [p for p in normals if find_foreground(fg_dir, p)]
            if split == "train":
                return normal_samples(with_fg, fg_dir)
            has_fg = set(with_fg)
            return normal_samples([p for p in normals if p not in has_fg]) + [
                Sample(img, 1, defects.get(img.name, "anomaly"), mask, None)
                for img, mask in masks.items()
            ]
        return self.from_csv(root, category, split, masks, defects, fg_dir)

    def read_csv(self, root: Path) -> list[dict[str, str]]:
        path = root / "split_csv" / "1cls.csv"
        if not path.is_file():
            raise DatasetError(
                f"{path}: VisA split file not found (needed by visa_split: 1cls; "
                "visa_split: reference needs none)"
            )
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in self.csv_columns if c not in (reader.fieldnames or [])]
            if missing:
                raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}")
            return list(reader)

    def from_csv(
        self,
        root: Path,
        category: str,
        split: str,
        masks: dict[Path, Path],
        defects: dict[str, str],
        fg_dir: Path,
    ) -> list[Sample]:
        out: list[Sample] = []
        csv_path = root / "split_csv" / "1cls.csv"
        for i, row in enumerate(self.read_csv(root), start=2):  # line 1 is the header
            if row["object"] != category or row["split"] != split:
                continue
            where = f"{csv_path} line {i}"
            image = root / row["image"]
            if not image.is_file():
                raise DatasetError(f"{image}: listed in {where} but missing")
            if row["label"] == "normal":
                out += normal_samples([image], fg_dir if split == "train" else None)
                continue
            if row["label"] != "anomaly":
                raise DatasetError(
                    f"{where}: label must be normal or anomaly, got {row['label']!r}"
                )
            mask = root / row["mask"] if row["mask"] else None
            if mask is None or not mask.is_file():
                raise DatasetError(f"{image}: anomalous image without its mask ({where})")
            if mask.stem != image.stem:
                raise DatasetError(
                    f"{mask}: mask stem differs from its image {image.name} ({where})"
                )
            out.append(Sample(image, 1, defects.get(image.name, "anomaly"), mask, None))
        return out

    @staticmethod
    def defect_types(base: Path) -> dict[str, str]:
        """Defect names from VisA's optional `image_anno.csv` (image file name -> label)."""
        path = base / "image_anno.csv"
        if not path.is_file():
            return {}
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        return {
            Path(r["image"]).name: r["label"].strip().replace(" ", "_")
            for r in rows
            if r.get("image") and r.get("label") and r["label"] != "normal"
        }

    def foreground_targets(
        self, root: str | Path, category: str, options: dict[str, Any] | None = None
    ) -> list[Path]:
        # Generated masks follow the official split when there is one: with them, the
        # reference split then trains on exactly the 1cls train normals.
        opts = dict(options or {})
        if (self.check_root(root) / "split_csv" / "1cls.csv").is_file():
            opts["visa_split"] = "1cls"
            return super().foreground_targets(root, category, opts)
        base = self.category_dir(self.check_root(root), category)
        return list_images(require_dir(base / "Data" / "Images" / "Normal", "VisA normal images"))


class Folder(DatasetLayout):
    """A generic layout: options `normal_dir`, `abnormal_dir`, `mask_dir` (relative to the root,
    or to `<root>/<category>` when a category is given).

    Abnormal images sit in `abnormal_dir` (defect "abnormal") or its subfolders (the subfolder
    is the defect type); masks pair by stem (`<stem>.*` or `<stem>_mask.*`) anywhere under
    `mask_dir`. Test normals come from `normal_test_dir`, or else every 1/test_fraction-th
    normal (sorted by name; default fraction 0.2) is held out for the test split.
    """

    name = "folder"
    option_names = frozenset(
        {
            "normal_dir",
            "abnormal_dir",
            "mask_dir",
            "normal_test_dir",
            "test_fraction",
            "foreground_dir",
        }
    )
    mask_rule = "<mask_dir>/<stem>.png or <mask_dir>/<stem>_mask.png"

    def category_dir(self, root: Path, category: str) -> Path:
        return super().category_dir(root, category) if category else root

    def available_categories(self, root: str | Path) -> list[str]:
        return [""]

    def resolve_dir(self, base: Path, options: dict[str, Any], key: str) -> Path | None:
        value = options.get(key)
        if value is None or value == "":
            return None
        return require_dir(base / str(value), f"data.options.{key}")

    def foreground_dir(self, root: Path, category: str, options: dict[str, Any]) -> Path:
        return self.category_dir(root, category) / str(
            options.get("foreground_dir", "foreground_mask")
        )

    def split_hint(self, split: str) -> str:
        return "check data.options.normal_dir / abnormal_dir / test_fraction"

    def _discover(
        self, root: Path, base: Path, category: str, split: str, options: dict[str, Any]
    ) -> list[Sample]:
        normal_dir = self.resolve_dir(base, options, "normal_dir")
        if normal_dir is None:
            raise DatasetError("data.options.normal_dir: required by dataset folder")
        train, test = self.split_normals(base, normal_dir, options)
        if split == "train":
            return normal_samples(train, self.foreground_dir(root, category, options))
        return normal_samples(test) + self.anomalous(base, options)

    def split_normals(
        self, base: Path, normal_dir: Path, options: dict[str, Any]
    ) -> tuple[list[Path], list[Path]]:
        normals = list_images(normal_dir)
        test_dir = self.resolve_dir(base, options, "normal_test_dir")
        if test_dir is not None:
            return normals, list_images(test_dir)
        frac = options.get("test_fraction", 0.2)
        if not isinstance(frac, int | float) or not 0 <= frac < 1:
            raise DatasetError(f"data.options.test_fraction: must be in [0, 1), got {frac!r}")
        # Evenly spaced hold-out by sorted name: deterministic without a seed.
        held = {i for i in range(len(normals)) if int((i + 1) * frac) > int(i * frac)}
        train = [p for i, p in enumerate(normals) if i not in held]
        return train, [p for i, p in enumerate(normals) if i in held]

    def anomalous(self, base: Path, options: dict[str, Any]) -> list[Sample]:
        abnormal = self.resolve_dir(base, options, "abnormal_dir")
        if abnormal is None:
            return []
        images = {p: "abnormal" for p in list_images(abnormal)}
        images |= {p: d for d in list_subdirs(abnormal) for p in list_images(abnormal / d)}
        mask_dir = self.resolve_dir(base, options, "mask_dir")
        if mask_dir is None:
            # Image-level labels only: pixel metrics are undefined for these samples.
            return [Sample(p, 1, d, None, None) for p, d in images.items()]
        masks = list_images(mask_dir) + [
            m for d in list_subdirs(mask_dir) for m in list_images(mask_dir / d)
        ]
        pairs = pair_masks(list(images), masks, self.mask_rule)
        return [Sample(img, 1, images[img], mask, None) for img, mask in pairs.items()]


# What `pgray.data.registry` registers by name on import.
BUILTIN_LAYOUTS = (MVTec, MPDD, WFDD, DTDSynthetic, Synthetic, BTAD, HeadCT, BraTS2021, VisA,
                   Folder)
