"""Validate a dataset tree before any training: every file decodes, masks pair and fit.

The first broken rule stops the check with a DatasetError naming the file, so one command
tells a user exactly what to fix; a valid tree gives a table of counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgray.data.imageio import open_image
from pgray.data.layout_base import SPLITS
from pgray.data.registry import get_layout
from pgray.data.samples import Sample
from pgray.errors import DatasetError


@dataclass(frozen=True)
class CountRow:
    category: str
    split: str
    defect_type: str
    images: int
    masks: int
    foreground: int


def check_sample(sample: Sample) -> None:
    """Decode the image and its masks fully; a defect mask must have the image's size."""
    size = open_image(sample.image_path).size
    if sample.mask_path is not None:
        mask_size = open_image(sample.mask_path).size
        if mask_size != size:
            raise DatasetError(
                f"{sample.mask_path}: mask is {mask_size[0]}x{mask_size[1]} but its image "
                f"{sample.image_path.name} is {size[0]}x{size[1]} "
                "(rule: a mask has its image's size)"
            )
    if sample.foreground_path is not None:
        # Foreground masks are resized at load time, so only their readability matters here.
        open_image(sample.foreground_path)


def count_rows(category: str, split: str, samples: list[Sample]) -> list[CountRow]:
    images: Counter[str] = Counter()
    masks: Counter[str] = Counter()
    fgs: Counter[str] = Counter()
    for s in samples:
        images[s.defect_type] += 1
        masks[s.defect_type] += s.mask_path is not None
        fgs[s.defect_type] += s.foreground_path is not None
    # "good" first, then defects alphabetically: the order people read these tables in.
    order = sorted(images, key=lambda d: (d != "good", d))
    return [CountRow(category, split, d, images[d], masks[d], fgs[d]) for d in order]


def check_tree(
    dataset: str,
    root: str | Path,
    category: str | None = None,
    options: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[CountRow]:
    """Check one category (or every category present) of both splits; the count table."""
    layout = get_layout(dataset)
    root_path = layout.check_root(root)
    categories = [category] if category is not None else layout.available_categories(root_path)
    if not categories:
        known = f" (known categories: {', '.join(layout.categories)})" if layout.categories else ""
        raise DatasetError(
            f"{root_path}: no {dataset} category found "
            f"(a category folder holds {layout.marker}/){known}"
        )
    rows: list[CountRow] = []
    for cat in categories:
        for split in SPLITS:
            samples = layout.discover(root_path, cat, split, options)
            if progress:
                progress(f"checking {cat or root_path.name}/{split}: {len(samples)} images")
            for sample in samples:
                check_sample(sample)
            rows += count_rows(cat or "-", split, samples)
    return rows


def format_table(rows: list[CountRow]) -> str:
    header = ("category", "split", "defect", "images", "masks", "foreground")
    body = [
        (r.category, r.split, r.defect_type, str(r.images), str(r.masks), str(r.foreground))
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = []
    for row in [header, *body]:
        cells = [c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
