"""Dataset layouts registered by name: `get_layout("mvtec").discover(root, "bottle", "train", {})`.

The built-in layouts (`pgray.data.layouts.BUILTIN_LAYOUTS`) are registered on import; `register`
adds another `DatasetLayout` subclass under its `name`.
"""

from __future__ import annotations

from pgray.data.layout_base import DatasetLayout
from pgray.data.layouts import BUILTIN_LAYOUTS
from pgray.errors import DatasetError

_LAYOUTS: dict[str, DatasetLayout] = {}


def register(cls: type[DatasetLayout]) -> type[DatasetLayout]:
    """Make a layout available to `get_layout` under `cls.name` (usable as a decorator)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _LAYOUTS:
        raise ValueError(f"dataset layout {cls.name!r} registered twice")
    _LAYOUTS[cls.name] = cls()
    return cls


for _layout in BUILTIN_LAYOUTS:
    register(_layout)


def list_datasets() -> list[str]:
    return sorted(_LAYOUTS)


def get_layout(name: str) -> DatasetLayout:
    layout = _LAYOUTS.get(name)
    if layout is None:
        raise DatasetError(
            f"unknown dataset {name!r}; known datasets: {', '.join(sorted(_LAYOUTS))}"
        )
    return layout
