"""One record per image, and the file-system rules every layout shares.

Kept free of heavy imports (no PIL, no torch): layouts only list and pair files, so
`python -m pgray.data --help` and config validation stay fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from pgray.errors import DatasetError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
NORMAL = "good"


@dataclass(frozen=True)
class Sample:
    image_path: Path
    label: int  # 0 normal, 1 anomalous
    defect_type: str  # "good" for normals
    mask_path: Path | None = None
    foreground_path: Path | None = None


def is_image(path: Path) -> bool:
    # Hidden files (.DS_Store, ._foo.png from macOS archives) are never data.
    return (
        path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS
    )


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name (empty when the folder is absent)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if is_image(p))


def list_subdirs(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{path}: {what} not found (no such directory)")
    return path


def strip_mask_suffix(stem: str) -> str:
    """MVTec-style `<stem>_mask` and plain `<stem>` masks both pair with image `<stem>`."""
    return stem[: -len("_mask")] if stem.endswith("_mask") else stem


def pair_masks(
    images: list[Path],
    mask_files: Iterable[Path],
    rule: str,
    key: Callable[[str], str] = strip_mask_suffix,
) -> dict[Path, Path]:
    """Pair every image with exactly one mask by stem, in both directions.

    `key` maps a mask's stem to the image stem it belongs to; `rule` describes the expected
    naming in error messages. An image without a mask, a mask without an image and two masks
    for one image are DatasetErrors that name the file.
    """
    by_stem: dict[str, Path] = {}
    for mask in sorted(mask_files):
        stem = key(mask.stem)
        if stem in by_stem:
            raise DatasetError(
                f"{mask}: second mask for image stem '{stem}' (also {by_stem[stem]})"
            )
        by_stem[stem] = mask
    image_stems: dict[str, Path] = {}
    for img in images:
        if img.stem in image_stems:
            raise DatasetError(
                f"{img}: two images share the stem '{img.stem}' (also {image_stems[img.stem]}),"
                " so masks cannot pair by stem"
            )
        image_stems[img.stem] = img
    for stem, mask in by_stem.items():
        if stem not in image_stems:
            raise DatasetError(f"{mask}: mask without an image (rule: {rule})")
    pairs: dict[Path, Path] = {}
    for img in images:
        mask = by_stem.get(img.stem)
        if mask is None:
            raise DatasetError(f"{img}: anomalous image without its mask (rule: {rule})")
        pairs[img] = mask
    return pairs


def find_foreground(folder: Path, image: Path) -> Path | None:
    """The foreground mask of `image` in `folder`: same file name, else `<stem>.png`."""
    for name in (image.name, image.stem + ".png"):
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def normal_samples(images: list[Path], fg_dir: Path | None = None) -> list[Sample]:
    return [
        Sample(img, 0, NORMAL, None, find_foreground(fg_dir, img) if fg_dir else None)
        for img in images
    ]


def anomalous_samples(pairs: dict[Path, Path], defect_type: str) -> list[Sample]:
    return [Sample(img, 1, defect_type, mask, None) for img, mask in pairs.items()]


def split_fingerprint(samples: Iterable[Sample], root: str | Path) -> str:
    """A stable digest of a split: every image's and mask's path relative to `root`, its size
    in bytes and the image's label, in order. The same files under another root (another
    machine, a staged copy) give the same digest; an added, removed, renamed, relabelled or
    rewritten-to-another-size file gives another one. Contents are not read: this runs on
    the driver over whole test splits."""
    import hashlib
    import json

    base = Path(root).resolve()

    def where(path: Path | None) -> list | None:
        if path is None:
            return None
        path = Path(path).resolve()
        name = path.relative_to(base).as_posix() if path.is_relative_to(base) else path.name
        return [name, path.stat().st_size if path.is_file() else None]

    listing = [[where(s.image_path), s.label, where(s.mask_path)] for s in samples]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]
