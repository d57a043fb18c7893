"""Foreground-aware pseudo-anomalies (METHOD.md section 2).

`pgray.config` imports `pgray.pseudo.config`, which runs this file: keep it free of heavy
imports. The generator and dataset (torch, cv2) load on first attribute access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pgray.pseudo.config import LEVELS, OPS, PseudoConfig

if TYPE_CHECKING:
    from pgray.pseudo.dataset import PseudoAnomalyDataset
    from pgray.pseudo.generator import PseudoAnomalyGenerator

__all__ = ["LEVELS", "OPS", "PseudoAnomalyDataset", "PseudoAnomalyGenerator", "PseudoConfig"]

_LAZY = {
    "PseudoAnomalyGenerator": "pgray.pseudo.generator",
    "PseudoAnomalyDataset": "pgray.pseudo.dataset",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pgray.pseudo' has no attribute {name!r}")
