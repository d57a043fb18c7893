"""Datasets: layouts (which files), `ADDataset` (which tensors), the checker and mask tools.

Names resolve lazily so that importing `pgray.data` (and `python -m pgray.data --help`)
does not pull in torch or PIL.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Sample": "pgray.data.samples",
    "DatasetLayout": "pgray.data.registry",
    "get_layout": "pgray.data.registry",
    "list_datasets": "pgray.data.registry",
    "register": "pgray.data.registry",
    "ADDataset": "pgray.data.dataset",
    "load_split": "pgray.data.dataset",
    "SYNTHETIC_CATEGORIES": "pgray.data.synthetic",
    "ensure_demo_dataset": "pgray.data.synthetic",
    "generate": "pgray.data.synthetic",
    "check_tree": "pgray.data.check",
    "generate_foreground": "pgray.data.foreground",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pgray.data' has no attribute {name!r}")
