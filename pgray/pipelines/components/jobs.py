"""Benchmark jobs: one unit of evaluation work (`BenchJob`), the grid of jobs a benchmark runs
on each checkpoint, and a checkpoint's jobs expanded from that grid."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from pgray.config import AttackConfig, CertifyConfig, DataConfig, EvalConfig, SuiteConfig
from pgray.config.base import from_dict, to_dict
from pgray.config.benchmark import BenchmarkConfig
from pgray.config.certify import suite_threats
from pgray.config.passes import FORWARD_PASS_COST
from pgray.core.eval_version import EVAL_VERSION, git_commit
from pgray.errors import CheckpointError
from pgray.io import file_sha256
from pgray.pipelines.components.checkpoint_files import Evaluated, evaluated_checkpoint
from pgray.pipelines.components.targets import (
    categories_of,
    checkpoint_path,
    detectors_of,
    entry_root,
    local_root,
)

CLEAN, SUITE, ATTACK, CHECK = "clean", "suite", "attack", "check"
# the smoothed detector's certification at every radius of `certify:`, with the l2 suite on it
CERTIFY = "certify"
# an explicit short suite (`attacks`, with `members`' names and aims) and the clean scores
SHORT = "short"


@dataclass(frozen=True)
class BenchJob:
    """One unit of evaluation work: the clean scores, the suite at one eps, one extra attack
    at one eps, the suite's large-budget check, a short suite given member by member (the
    sweep's rank agreement: the proxy's attacks on the test split), or the certification at
    every radius of `certify:`, of one checkpoint on one test split."""

    dataset: str
    root: str
    category: str
    checkpoint: str
    checkpoint_sha256: str
    kind: str  # clean | suite | attack | check | short | certify
    # suite: the protocol runs (the first is the paper's); attack: the one attack; certify:
    # the protocol (its precision for the l2 members); else empty
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
    # of a certify job: the `certify:` section (CertifyConfig keys)
    certify: dict[str, Any] | None = field(default=None, hash=False, compare=False)

    @property
    def setting(self) -> str:
        if self.kind == CLEAN:
            return "clean"
        if self.kind == ATTACK:
            return AttackConfig(**self.attacks[0]).setting_name()
        if self.kind == SHORT:
            return f"short_suite_eps{self.eps:g}"
        if self.kind == CERTIFY:
            return "certified_l2_r" + "_".join(f"{r:g}" for r in self.certify_config().radii)
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
        if self.certify is not None:
            parts["certify"] = self.certify
        blob = json.dumps(parts, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def suite_config(self) -> SuiteConfig:
        return from_dict(SuiteConfig, self.suite or {}, "suite")

    def attack_configs(self) -> list[AttackConfig]:
        return [from_dict(AttackConfig, a, "attack") for a in self.attacks]

    def certify_config(self) -> CertifyConfig:
        return from_dict(CertifyConfig, self.certify or {}, "certify")

    def eval_config(self) -> EvalConfig:
        """A certify job's evaluation: the suite's l2 members (protocol: its precision) on
        the smoothed detector, this job's batch."""
        return EvalConfig(eps=[], attack=self.attack_configs()[0], suite=self.suite_config(),
                          batch_size=self.batch_size, n_panels=0,
                          certify=self.certify_config())

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
        if self.kind == CERTIFY:
            return self.certify_work().image_steps(FORWARD_PASS_COST)
        square = self.suite_config().square_images
        subset = self.n_test if square == 0 else min(square, self.n_test)
        work = planned_work(self.suite_members(), self.n_test, subset)
        return float(work["image_steps"] + work["queries"] + self.n_test)

    def certify_work(self):
        """A certify job's passes (`pgray.core.certify.CertifyWork`)."""
        from pgray.core.certify import certify_work

        return certify_work(self.eval_config(), self.n_test)

    def label(self) -> str:
        who = "" if self.detector == "patchguard" else f" {self.detector}"
        seed = "" if self.seed is None else f" seed {self.seed}"
        return f"{self.dataset}/{self.category}{who}{seed} {self.setting}"


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
    passed for their precision), l2 also at each certified radius; each extra attack at each
    budget of its threat; the large-budget check of the adaptive suite, per threat; the
    certification of every radius (`certify:`), one job."""
    grid: list[GridCell] = [(CLEAN, 0.0, [], "linf")]
    for eps in cfg.eps:
        if eps > 0:
            grid.append((SUITE, float(eps), protocol_runs(cfg, eps), "linf"))
    threats = suite_threats(cfg.threats, cfg.certify)
    for threat, budgets in threats:
        for eps in budgets:
            grid.append((SUITE, eps, [cfg.attack], threat))
    for extra in cfg.extra_attacks:
        for eps in cfg.budgets(extra.threat):
            grid.append((ATTACK, float(eps), [dataclasses.replace(extra, eps=float(eps))],
                         extra.threat))
    if cfg.suite.name == "adaptive":
        from pgray.attacks.suite import large_budget

        for threat in ("linf", *(t for t, _ in threats)):
            grid.append((CHECK, large_budget(cfg.suite, threat), [cfg.attack], threat))
    if cfg.certify is not None:
        grid.append((CERTIFY, 0.0, [cfg.attack], "l2"))
    return grid


def job_fields(cfg: BenchmarkConfig, kind: str, attacks: list[AttackConfig], threat: str
               ) -> dict[str, Any]:
    """What a grid cell's job takes from the benchmark beside its cell: the suite (suite,
    check and certify jobs), the threat (those alone; the others score linf or clean), the
    `certify:` section (certify jobs)."""
    suited = kind in (SUITE, CHECK, CERTIFY)
    return {"attacks": tuple(to_dict(a) for a in attacks),
            "suite": to_dict(cfg.suite) if suited else None,
            "threat": threat if suited else "linf",
            "certify": to_dict(cfg.certify) if kind == CERTIFY else None}


def jobs_for(cfg: BenchmarkConfig, entry, category: str, detector=None,
             grid: list[GridCell] | None = None) -> list[BenchJob]:
    """One job per grid cell (`grid`, else the benchmark's `job_grid`) on one detector's file
    for the category (PatchGuard: best.pt where selection wrote one, else its checkpoint),
    which must exist by now."""
    from pgray.data.registry import get_layout
    from pgray.detectors.registry import CLEAN_TWIN, RECIPE

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
        checkpoint=str(evaluated.path.resolve()), checkpoint_sha256=sha, kind=kind, eps=eps,
        mask_resize=cfg.mask_resize, batch_size=cfg.batch_size, n_panels=cfg.n_panels,
        n_test=n_test, options=entry.options, checkpoint_epoch=evaluated.epoch,
        detector=name, reference_model=dict(detector.model) if detector else {},
        seed=entry.seed if detector is None else None, data_fingerprint=fingerprint,
        git_commit=git_commit(), **job_fields(cfg, kind, attacks, threat),
    ) for kind, eps, attacks, threat in (job_grid(cfg) if grid is None else grid)]


def expand_jobs(cfg: BenchmarkConfig) -> list[BenchJob]:
    """Every job of the benchmark (every checkpoint must exist)."""
    return [job for entry in cfg.entries() for category in categories_of(entry)
            for detector in detectors_of(entry)
            for job in jobs_for(cfg, entry, category, detector)]


