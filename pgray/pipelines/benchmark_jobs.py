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
from pgray.config import AttackConfig, DataConfig, SuiteConfig
from pgray.config.base import from_dict, to_dict
from pgray.config.benchmark import BenchmarkConfig
from pgray.core.eval_version import EVAL_VERSION, git_commit
from pgray.errors import CheckpointError, PgrayError
from pgray.io import file_sha256

CLEAN, SUITE, ATTACK, CHECK = "clean", "suite", "attack", "check"
# an explicit short suite (`attacks`, with `members`' names and aims) and the clean scores
SHORT = "short"
MODELS_KEPT = 2  # models an evaluation actor keeps on its device


@dataclass(frozen=True)
class BenchJob:
    """One unit of evaluation work: the clean scores, the suite at one eps, one extra attack
    at one eps, the suite's large-budget check, or a short suite given member by member (the
    sweep's rank agreement: the proxy's attacks on the test split), of one checkpoint on one
    test split."""

    dataset: str
    root: str
    category: str
    checkpoint: str
    checkpoint_sha256: str
    kind: str  # clean | suite | attack | check
    # suite: the protocol runs (the first is the paper's); attack: the one attack; else empty
    attacks: tuple[dict[str, Any], ...]
    suite: dict[str, Any] | None
    eps: float
    mask_resize: str
    batch_size: int
    n_panels: int
    n_test: int
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    checkpoint_epoch: int | None = field(default=None, hash=False, compare=False)
    detector: str = "patchguard"
    seed: int | None = None  # the checkpoint's training seed where the benchmark sets seeds
    # a reference state dict's architecture (ModelConfig keys); empty: the reference's own
    reference_model: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    # the test split's file list and sizes (`pgray.data.samples.split_fingerprint`)
    data_fingerprint: str | None = None
    threat: str = "linf"  # of a suite job: whose members run, eps in its unit
    eval_version: int = EVAL_VERSION  # the driver's: an actor of another version refuses it
    # the commit of the driver's code (a node without the checkout cannot tell its own)
    git_commit: str | None = field(default=None, hash=False, compare=False)
    # of a short suite: (name, aims_at) of each attack in `attacks`
    members: tuple[tuple[str, str], ...] = ()

    @property
    def setting(self) -> str:
        if self.kind == CLEAN:
            return "clean"
        if self.kind == ATTACK:
            return AttackConfig(**self.attacks[0]).setting_name()
        if self.kind == SHORT:
            return f"short_suite_eps{self.eps:g}"
        name = self.suite["name"] if self.suite else "suite"
        if self.kind == CHECK:
            return f"{name}_check" + ("" if self.threat == "linf" else f"_{self.threat}")
        where = "" if self.threat == "linf" else f"{self.threat}_"
        return f"{name}_suite_{where}eps{self.eps:g}"

    @property
    def key(self) -> str:
        """What decides whether a finished row answers this job: the evaluation version (rows
        of older code are recomputed), the data (root and the test split's fingerprint: the
        same checkpoint on two roots is two jobs), the checkpoint, the detector and
        everything the job runs."""
        parts = {"eval_version": self.eval_version, "dataset": self.dataset, "root": self.root,
                 "data_fingerprint": self.data_fingerprint, "category": self.category,
                 "checkpoint_sha256": self.checkpoint_sha256, "kind": self.kind,
                 "attacks": list(self.attacks), "suite": self.suite, "eps": self.eps,
                 "threat": self.threat, "mask_resize": self.mask_resize,
                 "options": self.options, "detector": self.detector,
                 "reference_model": self.reference_model, "seed": self.seed}
        if self.members:  # a short suite's (older keys stay as they were)
            parts["members"] = [list(m) for m in self.members]
        blob = json.dumps(parts, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def suite_config(self) -> SuiteConfig:
        return from_dict(SuiteConfig, self.suite or {}, "suite")

    def attack_configs(self) -> list[AttackConfig]:
        return [from_dict(AttackConfig, a, "attack") for a in self.attacks]

    def suite_members(self) -> list:
        from pgray.attacks.suite import large_eps_check, members

        if self.kind == CHECK:
            return [large_eps_check(self.suite_config(), self.attack_configs()[0],
                                    self.threat)]
        if self.kind == SHORT:
            from pgray.attacks.suite import Member

            return [Member(name, cfg, aims) for (name, aims), cfg
                    in zip(self.members, self.attack_configs(), strict=True)]
        protocol, *variants = self.attack_configs()
        return members(self.suite_config(), protocol, self.eps, tuple(variants),
                       threat=self.threat)

    @property
    def cost(self) -> float:
        """Image-steps: the scheduler starts the longest jobs first."""
        from pgray.attacks.suite import planned_work

        if self.kind == CLEAN:
            return float(self.n_test)
        if self.kind == ATTACK:
            cfg = self.attacks[0]
            return float(self.n_test * (cfg["steps"] * cfg["restarts"] + 1))
        square = self.suite_config().square_images
        subset = self.n_test if square == 0 else min(square, self.n_test)
        work = planned_work(self.suite_members(), self.n_test, subset)
        return float(work["image_steps"] + work["queries"] + self.n_test)

    def label(self) -> str:
        who = "" if self.detector == "patchguard" else f" {self.detector}"
        seed = "" if self.seed is None else f" seed {self.seed}"
        return f"{self.dataset}/{self.category}{who}{seed} {self.setting}"


def entry_root(entry) -> str:
    """The dataset root of a benchmark entry as every node can use it (an absolute path, an
    object-storage URI, or "" + synthetic: the generated data, made on each machine)."""
    from pgray.data.dataset import portable_root

    return portable_root(_entry_data(entry))


def local_root(entry) -> str:
    """The entry's dataset as a folder on this machine (staged or generated if need be)."""
    from pgray.data.dataset import resolve_root

    return str(resolve_root(_entry_data(entry)))


def _entry_data(entry) -> DataConfig:
    return DataConfig(dataset=entry.dataset, root=entry.root, options=dict(entry.options))


def categories_of(entry) -> list[str]:
    from pgray.data.registry import get_layout

    return get_layout(entry.dataset).select_categories(local_root(entry), entry.categories)


def protocol_runs(cfg: BenchmarkConfig, eps: float) -> list[AttackConfig]:
    """The protocol at `eps` for every (steps, restarts) of the grid, the strongest first (the
    paper's number, as the `protocol` column reports it)."""
    runs = [dataclasses.replace(cfg.attack, eps=float(eps), steps=s, restarts=r)
            for s in cfg.steps for r in cfg.restarts]
    return sorted(runs, key=lambda a: -a.steps * a.restarts)


GridCell = tuple[str, float, list[AttackConfig], str]


def job_grid(cfg: BenchmarkConfig) -> list[GridCell]:
    """(kind, eps, attacks, threat) of each job per checkpoint: clean; the suite at each linf
    eps, then at each budget of every other threat (its members only: the protocol runs are
    passed for their precision); each extra attack at each budget of its threat; the
    large-budget check of the adaptive suite, per threat."""
    grid: list[GridCell] = [(CLEAN, 0.0, [], "linf")]
    for eps in cfg.eps:
        if eps > 0:
            grid.append((SUITE, float(eps), protocol_runs(cfg, eps), "linf"))
    for threat in cfg.threats:
        for eps in threat.eps:
            grid.append((SUITE, float(eps), [cfg.attack], threat.threat))
    for extra in cfg.extra_attacks:
        for eps in cfg.budgets(extra.threat):
            grid.append((ATTACK, float(eps), [dataclasses.replace(extra, eps=float(eps))],
                         extra.threat))
    if cfg.suite.name == "adaptive":
        from pgray.attacks.suite import large_budget

        for threat in ("linf", *(t.threat for t in cfg.threats)):
            grid.append((CHECK, large_budget(cfg.suite, threat), [cfg.attack], threat))
    return grid


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


def jobs_for(cfg: BenchmarkConfig, entry, category: str, detector=None,
             grid: list[GridCell] | None = None) -> list[BenchJob]:
    """One job per grid cell (`grid`, else the benchmark's `job_grid`) on one detector's file
    for the category (PatchGuard: best.pt where selection wrote one, else its checkpoint),
    which must exist by now."""
    from pgray.data.registry import get_layout
    from pgray.detectors.registry import CLEAN_TWIN, RECIPE
    from pgray.pipelines.train_eval import Evaluated, evaluated_checkpoint

    ckpt = checkpoint_path(entry, category, detector)
    name = "patchguard" if detector is None else detector.name
    if not ckpt.is_file():
        raise CheckpointError(f"no {name} checkpoint for {entry.dataset}/{category} at {ckpt};"
                              " train or fit one, or set train_missing: true")
    # pgray PatchGuard files (best.pt where they selected)
    trained_here = detector is None or detector.name in (CLEAN_TWIN, RECIPE)
    evaluated = evaluated_checkpoint(ckpt) if trained_here else Evaluated(ckpt, ckpt.name, None)
    root = entry_root(entry)
    options = DataConfig(dataset=entry.dataset, options=dict(entry.options)).layout_options()
    from pgray.data.samples import split_fingerprint

    here = local_root(entry)
    test = get_layout(entry.dataset).discover(here, category, "test", options)
    n_test, fingerprint = len(test), split_fingerprint(test, here)
    sha = file_sha256(evaluated.path)
    return [BenchJob(
        dataset=entry.dataset, root=root, category=category,
        checkpoint=str(evaluated.path.resolve()), checkpoint_sha256=sha, kind=kind,
        attacks=tuple(to_dict(a) for a in attacks),
        suite=to_dict(cfg.suite) if kind in (SUITE, CHECK) else None, eps=eps,
        mask_resize=cfg.mask_resize, batch_size=cfg.batch_size, n_panels=cfg.n_panels,
        n_test=n_test, options=entry.options, checkpoint_epoch=evaluated.epoch,
        detector=name, reference_model=dict(detector.model) if detector else {},
        seed=entry.seed if detector is None else None, data_fingerprint=fingerprint,
        threat=threat if kind in (SUITE, CHECK) else "linf", git_commit=git_commit(),
    ) for kind, eps, attacks, threat in (job_grid(cfg) if grid is None else grid)]


def expand_jobs(cfg: BenchmarkConfig) -> list[BenchJob]:
    """Every job of the benchmark (every checkpoint must exist)."""
    return [job for entry in cfg.entries() for category in categories_of(entry)
            for detector in detectors_of(entry)
            for job in jobs_for(cfg, entry, category, detector)]


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
            data_cfg = DataConfig(dataset=job.dataset, root=job.root, category=job.category,
                                  mask_resize=job.mask_resize, options=dict(job.options))
            self._datasets[key] = load_split(data_cfg, "test", img_size)
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
        if job.kind in (CLEAN, ATTACK):
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
        model_info = {"backbone_weights": loaded.backbone} | loaded.describe()
        return {"rows": [self._describe(job, row, wall) | model_info for row in rows],
                "panels": panels}

    def _clean_outputs(self, job: BenchJob, model, dataset):
        from pgray.core.scoring import evaluate_model

        key = (job.checkpoint_sha256, job.dataset, job.category, job.mask_resize)
        if key not in self._clean:
            _, out = evaluate_model(model, dataset, [None], batch_size=job.batch_size,
                                    device=self.device, progress=False)
            self._clean[key] = out["clean"]
        return self._clean[key]

    def _describe(self, job: BenchJob, row: dict[str, Any], wall: float) -> dict[str, Any]:
        key = hashlib.sha256(f"{job.key}:{row['attack']}:{row['setting']}".encode())
        return row | {
            "row_key": key.hexdigest()[:16], "job_key": job.key, "job": job.setting,
            "detector": job.detector, "seed": job.seed,
            "dataset": job.dataset, "category": job.category, "checkpoint": job.checkpoint,
            "checkpoint_file": Path(job.checkpoint).name, "checkpoint_epoch": job.checkpoint_epoch,
            "checkpoint_sha256": job.checkpoint_sha256, "mask_resize": job.mask_resize,
            "data_fingerprint": job.data_fingerprint, "data_root": job.root,
            "eval_version": EVAL_VERSION, "git_commit": job.git_commit,
            "split": job.options.get("visa_split", "1cls") if job.dataset == "visa"
            else "official",
            "pgray_version": pgray.__version__, "node": self.node,
            "device": str(self.device), "wall_s": wall, "finished_at": time.time(),
        }

    @staticmethod
    def _panels(outputs, dataset, n: int) -> dict[str, bytes]:
        from pgray.tracking.plots import write_panels

        with tempfile.TemporaryDirectory() as tmp:
            paths = write_panels(outputs, dataset, Path(tmp), n)
            return {p.name: p.read_bytes() for p in paths}
