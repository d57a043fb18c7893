"""One evaluation job, run where it lands (no Ray): `JobEvaluator` is plain Python; the Ray
layer wraps it in an actor, the sequential path uses it directly. It caches models and test
splits, so an actor reused across jobs loads each once."""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path
from typing import Any

from pgray.config import DataConfig
from pgray.core.eval_version import EVAL_VERSION
from pgray.errors import CheckpointError, PgrayError
from pgray.pipelines.components.jobs import (
    ATTACK,
    CERTIFY,
    CHECK,
    CLEAN,
    SHORT,
    SUITE,
    BenchJob,
)
from pgray.pipelines.components.rows import identity_columns

MODELS_KEPT = 2  # models an evaluation actor keeps on its device


def node_copy(data: bytes, sha256: str) -> Path:
    """A checkpoint that came over the wire, as a file in this node's temp folder (written
    once per content, checked against the digest the driver computed)."""
    import hashlib

    from pgray.io import atomic_write

    digest = hashlib.sha256(data).hexdigest()[:len(sha256)]  # rows keep a short digest
    if digest != sha256:
        raise CheckpointError(f"checkpoint bytes arrived with digest {digest}, expected"
                              f" {sha256}")
    path = Path(tempfile.gettempdir()) / "pgray-checkpoints" / f"{sha256}.pt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: f.write(data))
    return path


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

    def _model(self, job: BenchJob, checkpoint_bytes: bytes | None):
        """The job's detector on this actor's device (the last MODELS_KEPT stay loaded)."""
        from pgray.config.base import from_dict
        from pgray.config.experiment import ModelConfig
        from pgray.detectors.loading import load_detector

        key = job.checkpoint_sha256
        if key in self._models:
            self._models[key] = self._models.pop(key)  # most recently used last
        else:
            while len(self._models) >= MODELS_KEPT:  # an actor serves many checkpoints
                self._models.pop(next(iter(self._models)))
            reference = (from_dict(ModelConfig, job.reference_model, "model")
                         if job.reference_model else None)
            source = (job.checkpoint if checkpoint_bytes is None
                      else node_copy(checkpoint_bytes, job.checkpoint_sha256))
            loaded = load_detector(source, reference)
            loaded.model = loaded.model.to(self.device).eval()
            self._models[key] = loaded
        return self._models[key]

    def _dataset(self, job: BenchJob, img_size: int):
        from pgray.data.dataset import load_split

        key = (job.dataset, job.root, job.category, job.mask_resize, img_size)
        if key not in self._datasets:
            self._datasets[key] = load_split(_job_data(job), "test", img_size)
        return self._datasets[key]

    def run(self, job: BenchJob, checkpoint_bytes: bytes | None = None) -> dict[str, Any]:
        """Metrics rows (every parameter that defines each number) and panel PNG bytes. The
        checkpoint comes as `checkpoint_bytes` where the job runs on another machine than the
        one whose disk holds `job.checkpoint`."""
        from pgray.core.scoring import evaluate_model, evaluate_suite, panel_indices

        if job.eval_version != EVAL_VERSION:
            raise PgrayError(f"{job.label()}: the driver runs evaluation version"
                             f" {job.eval_version}, this node {self.node} version {EVAL_VERSION}:"
                             " install the same pgray on every node")
        started = time.perf_counter()
        loaded = self._model(job, checkpoint_bytes)
        model = loaded.model
        dataset = self._dataset(job, model.img_size)
        keep = panel_indices(dataset, job.n_panels) if job.kind == SUITE else frozenset()
        if job.kind == CERTIFY:  # the base sides join at the benchmark's end (other jobs)
            from pgray.core.certify import certified_rows

            rows, outputs = certified_rows(model, dataset, job.eval_config(), [],
                                           device=self.device, progress=False), {}
        elif job.kind in (CLEAN, ATTACK):
            settings = [None] if job.kind == CLEAN else job.attack_configs()
            rows, outputs = evaluate_model(model, dataset, settings, batch_size=job.batch_size,
                                           device=self.device, progress=False)
        else:
            rows, outputs = evaluate_suite(
                model, dataset, job.suite_members(), batch_size=job.batch_size,
                device=self.device, subset_size=job.suite_config().square_images,
                progress=False, keep=keep)
        if job.kind == CHECK:
            rows = [rows[0] | {"attack": job.suite_members()[0].name}]
        if job.kind == SHORT:  # one job per model: its clean row too
            rows = evaluate_model(model, dataset, [None], batch_size=job.batch_size,
                                  device=self.device, progress=False)[0] + rows
        panels = {}
        if keep:
            worst = rows[-1]["setting"]
            panels = self._panels({"clean": self._clean_outputs(job, model, dataset),
                                   worst: outputs[worst]}, dataset, job.n_panels)
        wall = time.perf_counter() - started
        return {"rows": [self._describe(job, row, loaded, wall) for row in rows],
                "panels": panels}

    def _clean_outputs(self, job: BenchJob, model, dataset):
        from pgray.core.scoring import evaluate_model

        key = (job.checkpoint_sha256, job.dataset, job.category, job.mask_resize)
        if key not in self._clean:
            _, out = evaluate_model(model, dataset, [None], batch_size=job.batch_size,
                                    device=self.device, progress=False)
            self._clean[key] = out["clean"]
        return self._clean[key]

    def _describe(self, job: BenchJob, row: dict[str, Any], loaded, wall: float
                  ) -> dict[str, Any]:
        key = hashlib.sha256(f"{job.key}:{row['attack']}:{row['setting']}".encode())
        identity = identity_columns(
            _job_data(job), checkpoint=job.checkpoint, sha256=job.checkpoint_sha256,
            detector=job.detector, loaded=loaded, fingerprint=job.data_fingerprint,
            git_commit=job.git_commit)
        return row | identity | {
            "row_key": key.hexdigest()[:16], "job_key": job.key, "job": job.setting,
            "seed": job.seed, "checkpoint": job.checkpoint,
            "checkpoint_epoch": job.checkpoint_epoch, "data_root": job.root,
            "node": self.node, "device": str(self.device), "wall_s": wall,
            "finished_at": time.time(),
        }

    @staticmethod
    def _panels(outputs, dataset, n: int) -> dict[str, bytes]:
        from pgray.tracking.plots import write_panels

        with tempfile.TemporaryDirectory() as tmp:
            paths = write_panels(outputs, dataset, Path(tmp), n)
            return {p.name: p.read_bytes() for p in paths}


def _job_data(job: BenchJob) -> DataConfig:
    """The test data a job scores."""
    return DataConfig(dataset=job.dataset, root=job.root, category=job.category,
                      mask_resize=job.mask_resize, options=dict(job.options))
