"""What a run works on: the categories under each dataset root (the one rule), a benchmark
entry's roots and checkpoint files, a sweep's targets, and the checks that fail a bad dataset
or config before Ray or MLflow start anything."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, NamedTuple

from pgray.config import DataConfig, ExperimentConfig
from pgray.config.search_sections import GENERATED_ROOT, Target
from pgray.config.search_space import SearchSpace


def categories_under(data: DataConfig, wanted: list[str] | str) -> list[str]:
    """The categories `wanted` (a list, or "all") among those under the data's root on this
    machine (staged or generated there if need be)."""
    from pgray.data.dataset import resolve_root
    from pgray.data.registry import get_layout

    return get_layout(data.dataset).select_categories(str(resolve_root(data)), wanted)


class JobTarget(NamedTuple):
    """What a benchmark evaluates with its grid: one detector (None: PatchGuard) of a dataset
    entry, on one category."""

    entry: Any  # pgray.config.benchmark.DatasetEntry
    category: str
    detector: Any = None  # pgray.config.benchmark.DetectorEntry, or None for PatchGuard


def benchmark_targets(entries: list) -> list[JobTarget]:
    """Every (entry, category, detector) of a benchmark's entries, in the order they run."""
    return [JobTarget(e, c, d) for e in entries for c in categories_of(e)
            for d in detectors_of(e)]


def entry_data(entry) -> DataConfig:
    """A benchmark entry's (or a search space's dataset entry's) data, without a category."""
    return DataConfig(dataset=entry.dataset, root=entry.root, options=dict(entry.options))


def entry_root(entry) -> str:
    """The dataset root of a benchmark entry as every node can use it (an absolute path, an
    object-storage URI, or "" + synthetic: the generated data, made on each machine)."""
    from pgray.data.dataset import portable_root

    return portable_root(entry_data(entry))


def local_root(entry) -> str:
    """The entry's dataset as a folder on this machine (staged or generated if need be)."""
    from pgray.data.dataset import resolve_root

    return str(resolve_root(entry_data(entry)))


def categories_of(entry) -> list[str]:
    return categories_under(entry_data(entry), entry.categories)


def checkpoint_path(entry, category: str, detector=None) -> Path:
    """The file of PatchGuard (detector None) or of another detector of the entry."""
    template = entry.checkpoint if detector is None else detector.checkpoint
    seed = entry.seed if detector is None else None
    path = Path(template.format(dataset=entry.dataset, category=category,
                                seed="" if seed is None else seed))
    if seed is not None and "{seed}" not in template:
        path = path.parent / f"seed{seed}" / path.name
    return path


def detectors_of(entry) -> list:
    """None for PatchGuard (when the entry evaluates it), then the entry's other detectors."""
    return ([None] if entry.patchguard else []) + list(entry.detectors)


def resolve_targets(space: SearchSpace) -> list[Target]:
    """Every (dataset, category) of the space, its root as every node can use it (absolute
    path, object-storage URI, or "" for the generated dataset, which each machine generates
    in its cache on first use)."""
    targets = []
    for entry in space.target_entries():
        if entry.root == GENERATED_ROOT:  # a search space's name for the cached demo data
            entry = dataclasses.replace(entry, root="")
        targets += [Target(entry.dataset, entry_root(entry), category,
                           tuple(sorted(dict(entry.options).items())), entry.seed)
                    for category in categories_of(entry)]
    return targets


def check_targets(space: SearchSpace, targets: list[Target]) -> None:
    """Fail on a missing dataset or category, or a config the model cannot be built from,
    before Ray or MLflow start anything: each target's fixed config and each searched key at
    the values that stand for its range (a bad value found in a worker costs minutes of
    retries). Each distinct dataset and architecture is checked once."""
    from pgray.errors import ConfigError

    variants = [{}] + [{key: value} for key, spec in space.search.items()
                       for value in spec.representatives()]
    seen: set[str] = set()
    for target in targets:
        for params in variants:
            try:
                validate_inputs(space.trial_config(target, params), seen)
            except ConfigError as err:
                where = ", ".join(f"search.{k} = {v!r}" for k, v in params.items())
                raise ConfigError(f"{where}: {err}" if where else str(err)) from None


def validate_inputs(cfg: ExperimentConfig, seen: set[str] | None = None) -> None:
    """Fail on a bad dataset, backbone, top-k or attention layer before any worker, Ray or
    MLflow run starts. With `seen` (shared across calls), each distinct dataset is discovered
    and each distinct architecture built once."""
    from pgray.config.base import to_dict
    from pgray.core.model import PatchGuard
    from pgray.data.dataset import discover_split

    seen = set() if seen is None else seen
    data_key = json.dumps(["data", to_dict(cfg.data)], sort_keys=True, default=str)
    if data_key not in seen:
        discover_split(cfg.data, "train")
        seen.add(data_key)
    layers = cfg.loss.attention_layers if cfg.loss.attention_lambda > 0 else []
    model_key = json.dumps(["model", to_dict(cfg.model), layers], sort_keys=True, default=str)
    if model_key not in seen:
        model = PatchGuard(dataclasses.replace(cfg.model, pretrained=False, weights=None))
        if layers:
            with model.capture_attention(layers):
                pass
        seen.add(model_key)
