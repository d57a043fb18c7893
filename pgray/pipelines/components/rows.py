"""The columns that say which model, data and code a result row's numbers are of, the same for
`python -m pgray.evaluate` and the benchmark's jobs (docs/INTERFACES.md, "Results files")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pgray
from pgray.config import DataConfig
from pgray.core.eval_version import EVAL_VERSION


def split_name(data: DataConfig) -> str:
    """The test split a row was scored on: for VisA the `visa_split` its layout read (a value
    in `options` wins over the config's field, as the layout sees them), "official" for the
    datasets that ship one split."""
    return data.layout_options()["visa_split"] if data.dataset == "visa" else "official"


def identity_columns(data: DataConfig, *, checkpoint: str | Path, sha256: str, detector: str,
                     loaded, fingerprint: str | None, git_commit: str | None) -> dict[str, Any]:
    """The row's model (file, digest, detector, the weights its backbone started from and what
    the loaded file says of itself), its data (dataset, category, test split and its
    fingerprint, mask resizing) and the code (pgray and evaluation versions, commit)."""
    return {"dataset": data.dataset, "category": data.category, "checkpoint_sha256": sha256,
            "checkpoint_file": Path(checkpoint).name, "detector": detector,
            "backbone_weights": loaded.backbone, "data_fingerprint": fingerprint,
            "split": split_name(data), "mask_resize": data.mask_resize,
            "pgray_version": pgray.__version__, "eval_version": EVAL_VERSION,
            "git_commit": git_commit} | loaded.describe()
