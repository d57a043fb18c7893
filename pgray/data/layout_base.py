"""The base of the dataset layouts (`DatasetLayout`): a layout knows a dataset family's
categories and folder rules and turns a tree into `Sample`s; it never reads pixels. The layouts
themselves live in `pgray.data.layouts`, the table of them by name in `pgray.data.registry`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, ClassVar

from pgray.data.samples import Sample, list_subdirs
from pgray.errors import DatasetError

SPLITS = ("train", "test")
# Passed to every layout by `load_split`; only VisA reads it, the others accept and ignore it.
COMMON_OPTIONS = frozenset({"visa_split"})


class DatasetLayout:
    """Base of all layouts. Subclasses set the class attributes and implement `_discover`."""

    name: ClassVar[str] = ""
    categories: ClassVar[tuple[str, ...]] = ()  # empty: any folder under the root
    # Categories whose whole image is foreground (the reference ships no masks for them);
    # `pgray.data foreground` skips them unless asked for one by name.
    textures: ClassVar[tuple[str, ...]] = ()
    option_names: ClassVar[frozenset[str]] = frozenset()
    # Single-category datasets (BraTS, Head CT) keep their layout directly under the root.
    single_category: ClassVar[bool] = False
    # A folder that must exist under a category directory for it to count as a category.
    marker: ClassVar[str] = "train"

    def discover(
        self, root: str | Path, category: str, split: str, options: dict[str, Any] | None = None
    ) -> list[Sample]:
        """All samples of one category and split; DatasetError when the tree breaks a rule."""
        opts = self.check_options(options)
        if split not in SPLITS:
            raise DatasetError(f"split must be one of {list(SPLITS)}, got {split!r}")
        root = self.check_root(root)
        base = self.category_dir(root, category)
        samples = self._discover(root, base, self.resolve_category(category), split, opts)
        if not samples:
            raise DatasetError(f"{base}: empty {split} split ({self.split_hint(split)})")
        return samples

    def _discover(
        self, root: Path, base: Path, category: str, split: str, options: dict[str, Any]
    ) -> list[Sample]:
        raise NotImplementedError

    def split_hint(self, split: str) -> str:
        """Where images of `split` are expected, for the empty-split message."""
        return f"expected images under {split}/"

    def check_root(self, root: str | Path) -> Path:
        path = Path(root).expanduser()
        if not str(root) or not path.is_dir():
            raise DatasetError(f"{path}: dataset root not found (dataset {self.name})")
        return path

    def check_options(self, options: dict[str, Any] | None) -> dict[str, Any]:
        opts = dict(options or {})
        allowed = self.option_names | COMMON_OPTIONS
        for key in sorted(opts):
            if key not in allowed:
                names = ", ".join(sorted(self.option_names)) or "none"
                raise DatasetError(
                    f"data.options.{key}: unknown option for dataset {self.name} (allowed: {names})"
                )
        return opts

    def resolve_category(self, category: str) -> str:
        if self.single_category:
            if category not in ("", self.categories[0]):
                raise DatasetError(
                    f"dataset {self.name} has one category ({self.categories[0]}), got {category!r}"
                )
            return self.categories[0]
        return category

    def category_dir(self, root: Path, category: str) -> Path:
        """The folder of `category`; DatasetError listing the available ones when absent."""
        if self.single_category:
            self.resolve_category(category)
            return root
        if not category:
            raise DatasetError(
                f"dataset {self.name} needs a category; available under {root}: "
                f"{', '.join(self.available_categories(root)) or 'none'}"
            )
        base = root / category
        if not base.is_dir():
            raise DatasetError(
                f"{base}: category {category!r} not found; available under {root}: "
                f"{', '.join(self.available_categories(root)) or 'none'}"
                + (
                    f" (known {self.name} categories: {', '.join(self.categories)})"
                    if self.categories
                    else ""
                )
            )
        return base

    def available_categories(self, root: str | Path) -> list[str]:
        """Categories present under `root`: folders that hold the layout's marker folder."""
        root = Path(root).expanduser()
        if self.single_category:
            return [self.categories[0]] if (root / self.marker).is_dir() else []
        return [d for d in list_subdirs(root) if (root / d / self.marker).is_dir()]

    def select_categories(self, root: str | Path, wanted: list[str] | str) -> list[str]:
        """The categories a sweep or benchmark entry runs: `wanted` as given, or for "all"
        every category present under `root` (a partial download is usable; the layout's own
        order first, and a warning names the known ones that are missing). DatasetError when
        "all" finds none."""
        if wanted != "all":
            return list(wanted)
        present = self.available_categories(root)
        if not present:
            known = f" (known: {', '.join(self.categories)})" if self.categories else ""
            raise DatasetError(f"{root}: no {self.name} categories found{known}")
        missing = [c for c in self.categories if c not in present]
        if missing:
            warnings.warn(f"{self.name}: {len(missing)} known categories are not under {root}"
                          f" ({', '.join(missing)}); running the {len(present)} present",
                          stacklevel=2)
        order = {c: i for i, c in enumerate(self.categories)}
        return sorted(present, key=lambda c: (order.get(c, len(order)), c))

    def foreground_dir(self, root: Path, category: str, options: dict[str, Any]) -> Path:
        """Where this layout reads (and `pgray.data foreground` writes) foreground masks."""
        return self.category_dir(root, category) / "train" / "foreground_mask"

    def foreground_targets(
        self, root: str | Path, category: str, options: dict[str, Any] | None = None
    ) -> list[Path]:
        """The images that get a generated foreground mask: the train split's."""
        return [s.image_path for s in self.discover(root, category, "train", options)]
