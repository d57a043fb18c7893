"""Typed config of a benchmark: which checkpoints, which test splits, which attack grid."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgray.config.base import check, check_eps, from_dict, load_yaml
from pgray.config.certify import CertifyConfig
from pgray.config.experiment import AttackConfig, SuiteConfig, ThreatConfig, check_threats
from pgray.config.search_sections import Resources, check_seeds

# what a benchmark entry's `reported:` may give per category: the paper's clean and adversarial
# AD (image AUROC), AL (pixel AUROC) and AUPRO in [0, 1], and the eps (1/255) it attacked at
REPORTED_KEYS = frozenset({"clean_image_auroc", "clean_pixel_auroc", "clean_aupro",
                           "image_auroc", "pixel_auroc", "aupro", "eps"})


@dataclass
class DetectorEntry:
    """Another detector evaluated on an entry's categories under the same suite."""

    name: str  # patchguard_reference, or a baseline (python -m pgray.detectors list)
    checkpoint: str  # path template; {dataset} and {category} are filled in
    # a baseline with no checkpoint yet is fitted first (train_missing) with these
    # DetectorConfig keys (img_size, backbone, layers, pretrained, weights, options)
    fit: dict[str, Any] = field(default_factory=dict)
    # a reference state dict: the ModelConfig keys of its architecture (default: the
    # reference's own, DINOv2 ViT-S/14 at 224)
    model: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        check(bool(self.name), "name", "must name a detector")
        check(bool(self.checkpoint), "checkpoint", "needs a path template")


@dataclass
class DatasetEntry:
    dataset: str
    root: str = ""  # "" with dataset synthetic: the generated dataset (cached)
    categories: list[str] | str = "all"  # "all": every category present under the root
    # PatchGuard's checkpoint path template; {dataset}, {category} and {seed} are filled in
    # (with `seeds` and no {seed} in it, each seed's file goes in a folder seed<n> beside it)
    checkpoint: str = "runs/benchmark/checkpoints/{dataset}/{category}/checkpoint.pt"
    patchguard: bool = True  # false: only the `detectors` below
    detectors: list[DetectorEntry] = field(default_factory=list)
    seed: int | None = None  # PatchGuard's training seed here (set per seed by `seeds`)
    options: dict[str, Any] = field(default_factory=dict)
    # the paper's numbers per category, copied onto PatchGuard's L-inf robustness cards:
    # {category: {image_auroc: 0.9, clean_image_auroc: 0.99, eps: 8, ...}} (REPORTED_KEYS)
    reported: dict[str, dict[str, float]] = field(default_factory=dict)

    def validate(self) -> None:
        check(bool(self.dataset), "dataset", "must name a dataset")
        for category, numbers in self.reported.items():  # types: checked by from_dict
            for key in numbers:
                check(key in REPORTED_KEYS, f"reported.{category}.{key}",
                      f"unknown; known: {', '.join(sorted(REPORTED_KEYS))}")
        check(self.patchguard or bool(self.detectors), "detectors",
              "with patchguard: false, list at least one detector")


@dataclass
class ActorConfig:
    count: int = 2  # at most; fewer when the cluster holds fewer (every resource counted)
    cpus: float = 1.0
    gpus: float = 0.0  # fractional GPUs pack small categories onto one device
    threads: int = 1
    max_retries: int = 3

    def validate(self) -> None:
        check(self.count >= 1, "count", f"must be >= 1, got {self.count}")
        check(self.cpus >= 0, "cpus", "must be >= 0")
        check(self.gpus >= 0, "gpus", "must be >= 0")


@dataclass
class BenchmarkConfig:
    name: str = "benchmark"
    datasets: list[DatasetEntry] = field(default_factory=list)
    # The paper protocol; steps and restarts come from the lists below (the largest is the
    # `protocol` column of results.md, the others are more protocol runs in the suite).
    attack: AttackConfig = field(default_factory=lambda: AttackConfig(steps=1000))
    eps: list[float] = field(default_factory=lambda: [8.0])
    steps: list[int] = field(default_factory=lambda: [1000])
    restarts: list[int] = field(default_factory=lambda: [1])
    # The attack suite at each eps (`suite: adaptive` or `suite: protocol`, or a mapping of
    # SuiteConfig keys): the robust number is its per-image worst case.
    suite: SuiteConfig = field(default_factory=SuiteConfig)
    # More threat models, each with its budgets in its own unit, each with its own suite
    # members and worst case: [{threat: l2, eps: [0.5, 1.0]}, {threat: patch, eps: [0.02]}]
    # (linf is `eps` above)
    threats: list[ThreatConfig] = field(default_factory=list)
    # certified L2 bounds by percentile smoothing beside the attacked ones (docs/method.md,
    # "Certification"): one more job per checkpoint, and the l2 suite at each radius too
    certify: CertifyConfig | None = None
    # more single attacks reported beside the suite (not part of its worst case), at each
    # budget of their own threat
    extra_attacks: list[AttackConfig] = field(default_factory=list)
    mask_resize: str = "nearest"
    batch_size: int = 32
    n_panels: int = 2
    train_missing: bool = False  # train a checkpoint first where none exists (Ray Train)
    train: dict[str, Any] = field(default_factory=dict)  # experiment overrides for that training
    # what each of those trainings asks for; they run at once as far as the cluster allows
    train_resources: Resources = field(default_factory=Resources)
    actors: ActorConfig = field(default_factory=ActorConfig)
    # PatchGuard's training seeds: each category's checkpoint is trained (or looked for) once
    # per seed, every one evaluated; tables show the mean and its interval across seeds
    seeds: list[int] = field(default_factory=list)

    def validate(self) -> None:
        from pgray.errors import PgrayError
        from pgray.io import check_name

        try:
            check_name(self.name, "benchmark name")
        except PgrayError as err:
            check(False, "name", str(err))
        check(len(self.datasets) >= 1, "datasets", "needs at least one dataset entry")
        check_eps(self.eps)
        for i, s in enumerate(self.steps):
            check(s >= 1, f"steps[{i}]", f"must be >= 1, got {s}")
        for i, r in enumerate(self.restarts):
            check(r >= 1, f"restarts[{i}]", f"must be >= 1, got {r}")
        check(self.mask_resize in ("nearest", "lanczos_any"), "mask_resize",
              f"must be nearest or lanczos_any, got {self.mask_resize!r}")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check_seeds(self.seeds)
        check(self.attack.threat == "linf", "attack.threat",
              "the protocol attack is linf; other threats go under `threats`")
        check_threats(self.threats, self.suite)
        check(self.certify is None or self.suite.name == "adaptive", "certify",
              "needs suite adaptive (its l2 members attack the smoothed detector)")
        for i, extra in enumerate(self.extra_attacks):
            check(extra.threat == "linf" or bool(self.budgets(extra.threat)),
                  f"extra_attacks[{i}].threat",
                  f"{extra.threat} has no budgets: list it under `threats`")

    def budgets(self, threat: str) -> list[float]:
        """The budgets of one threat, in its unit (linf: `eps`)."""
        if threat == "linf":
            return list(self.eps)
        return [e for t in self.threats if t.threat == threat for e in t.eps]

    def entries(self) -> list[DatasetEntry]:
        """The dataset entries with `seeds` applied: PatchGuard once per seed (its own
        checkpoint file, trained with that seed), the other detectors once."""
        if not self.seeds:
            return list(self.datasets)
        out = []
        for entry in self.datasets:
            if entry.patchguard and entry.seed is None:
                out += [dataclasses.replace(entry, seed=s, detectors=[]) for s in self.seeds]
                if entry.detectors:
                    out.append(dataclasses.replace(entry, patchguard=False))
            else:
                out.append(entry)
        return out

    @classmethod
    def from_yaml(cls, path: str | Path) -> BenchmarkConfig:
        return from_dict(cls, load_yaml(path))
