"""Benchmark jobs: expanding a BenchmarkConfig into a grid, and evaluating one job (no Ray).

`JobEvaluator` is plain Python: the Ray layer wraps it in an actor, the sequential path uses it
directly. It caches models and test splits, so an actor reused across jobs loads each once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pgray
from pgray.config import AttackConfig, DataConfig
from pgray.config.base import to_dict
from pgray.config.benchmark import BenchmarkConfig
from pgray.errors import CheckpointError
from pgray.io import file_sha256


@dataclass(frozen=True)
class BenchJob:
    dataset: str
    root: str
    category: str
    checkpoint: str
    checkpoint_sha256: str
    attack: dict[str, Any] | None  # None: clean
    mask_resize: str
    batch_size: int
    n_panels: int
    n_test: int
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def setting(self) -> str:
        return "clean" if self.attack is None else AttackConfig(**self.attack).setting_name()

    @property
    def key(self) -> str:
        blob = json.dumps([self.dataset, self.category, self.checkpoint_sha256, self.attack,
                           self.mask_resize, self.options], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def cost(self) -> float:
        """Forward-backward passes: the scheduler starts the longest jobs first."""
        if self.attack is None:
            return float(self.n_test)
        return float(self.n_test * (self.attack["steps"] * self.attack["restarts"] + 1))

    def label(self) -> str:
        return f"{self.dataset}/{self.category} {self.setting}"


def entry_root(entry) -> str:
    """The dataset root of a benchmark entry ("" + synthetic: the cached generated data)."""
    from pgray.data.dataset import resolve_root

    data = DataConfig(dataset=entry.dataset, root=entry.root, options=dict(entry.options))
    return str(resolve_root(data))


def categories_of(entry) -> list[str]:
    from pgray.data.registry import get_layout

    return get_layout(entry.dataset).select_categories(entry_root(entry), entry.categories)


def attack_grid(cfg: BenchmarkConfig) -> list[AttackConfig | None]:
    grid: list[AttackConfig | None] = [None]
    for eps in cfg.eps:
        for steps in cfg.steps:
            for restarts in cfg.restarts:
                grid.append(dataclasses.replace(cfg.attack, eps=float(eps), steps=steps,
                                                restarts=restarts))
    for extra in cfg.extra_attacks:
        for eps in cfg.eps:
            grid.append(dataclasses.replace(extra, eps=float(eps)))
    return grid


def checkpoint_path(entry, category: str) -> Path:
    return Path(entry.checkpoint.format(dataset=entry.dataset, category=category))


def expand_jobs(cfg: BenchmarkConfig) -> list[BenchJob]:
    """One job per (dataset, category, checkpoint, setting); checkpoints must exist by now."""
    from pgray.data.registry import get_layout

    jobs = []
    for entry in cfg.datasets:
        layout = get_layout(entry.dataset)
        for category in categories_of(entry):
            ckpt = checkpoint_path(entry, category)
            if not ckpt.is_file():
                raise CheckpointError(
                    f"no checkpoint for {entry.dataset}/{category} at {ckpt}; train one or set"
                    " train_missing: true"
                )
            root = entry_root(entry)
            options = DataConfig(dataset=entry.dataset, options=dict(entry.options)
                                 ).layout_options()
            n_test = len(layout.discover(root, category, "test", options))
            sha = file_sha256(ckpt)
            for attack in attack_grid(cfg):
                jobs.append(BenchJob(
                    dataset=entry.dataset, root=root, category=category,
                    checkpoint=str(ckpt.resolve()), checkpoint_sha256=sha,
                    attack=None if attack is None else to_dict(attack),
                    mask_resize=cfg.mask_resize, batch_size=cfg.batch_size,
                    n_panels=cfg.n_panels, n_test=n_test, options=entry.options,
                ))
    return jobs


class JobEvaluator:
    """Evaluates jobs on one device; keeps models, test splits and clean outputs cached."""

    def __init__(self, threads: int = 1, *, device: str | None = None,
                 assigned_gpus: list | None = None, node: str = "local"):
        import torch

        from pgray.core.device import pick_device

        torch.set_num_threads(max(1, threads))
        self.device = pick_device(device, assigned_gpus=assigned_gpus)
        self.node = node
        self._models: dict[str, Any] = {}
        self._datasets: dict[tuple, Any] = {}
        self._clean: dict[tuple, Any] = {}

    def _model(self, job: BenchJob):
        from pgray.core.checkpoint import load_checkpoint

        if job.checkpoint_sha256 not in self._models:
            model, cfg, _ = load_checkpoint(job.checkpoint, map_location="cpu")
            self._models[job.checkpoint_sha256] = (model.to(self.device).eval(), cfg)
        return self._models[job.checkpoint_sha256]

    def _dataset(self, job: BenchJob, cfg):
        from pgray.data.dataset import load_split

        key = (job.dataset, job.root, job.category, job.mask_resize, cfg.model.img_size)
        if key not in self._datasets:
            data_cfg = dataclasses.replace(
                cfg.data, dataset=job.dataset, root=job.root, category=job.category,
                mask_resize=job.mask_resize, options=dict(job.options),
            )
            self._datasets[key] = load_split(data_cfg, "test", cfg.model.img_size)
        return self._datasets[key]

    def run(self, job: BenchJob) -> dict[str, Any]:
        """Metrics row (every parameter that defines the number) and panel PNG bytes."""
        from pgray.config.base import from_dict
        from pgray.core.scoring import evaluate_model, panel_indices

        started = time.perf_counter()
        model, cfg = self._model(job)
        dataset = self._dataset(job, cfg)
        keep = panel_indices(dataset, job.n_panels)
        attack = None if job.attack is None else from_dict(AttackConfig, job.attack, "attack")
        clean_key = (job.checkpoint_sha256, job.dataset, job.category, job.mask_resize)
        settings = [attack] if attack is not None else [None]
        rows, outputs = evaluate_model(model, dataset, settings, batch_size=job.batch_size,
                                       device=self.device, progress=False, keep=keep)
        if attack is None:
            self._clean[clean_key] = outputs["clean"]
        panels: dict[str, bytes] = {}
        if attack is not None and keep:
            if clean_key not in self._clean:
                _, clean_out = evaluate_model(model, dataset, [None], batch_size=job.batch_size,
                                              device=self.device, progress=False)
                self._clean[clean_key] = clean_out["clean"]
            panels = self._panels({"clean": self._clean[clean_key]} | outputs, dataset,
                                  job.n_panels)
        row = rows[0] | {
            "setting": job.setting,
            "job_key": job.key, "dataset": job.dataset, "category": job.category,
            "checkpoint": job.checkpoint, "checkpoint_sha256": job.checkpoint_sha256,
            "mask_resize": job.mask_resize,
            "split": job.options.get("visa_split", "1cls") if job.dataset == "visa"
            else "official",
            "pgray_version": pgray.__version__, "node": self.node,
            "device": str(self.device), "wall_s": time.perf_counter() - started,
        }
        if attack is None:
            row |= {k: None for k in ("objective", "method", "library", "precision")}
            row |= {"random_start": False, "keep_best": False}
        return {"row": row, "panels": panels}

    @staticmethod
    def _panels(outputs, dataset, n: int) -> dict[str, bytes]:
        from pgray.tracking.plots import write_panels

        with tempfile.TemporaryDirectory() as tmp:
            paths = write_panels(outputs, dataset, Path(tmp), n)
            return {p.name: p.read_bytes() for p in paths}
