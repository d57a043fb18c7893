"""The adaptive attack suite: every robust number pgray reports is the worst case of several
attacks, each aimed at what the metric measures, with the paper protocol beside it.

Members (suite `adaptive`), all at the same eps:
- `protocol`: the reference PGD exactly (mask objective, alpha 2.5 eps / steps, no random
  start, last iterate). Reported, labelled as the paper protocol; also a candidate below.
- `det_topk`: PGD on the signed image score (top-k mean), random start, restarts, best iterate.
- `det_lse`: the same direction through a smooth maximum of all units (the top-k mean passes
  gradient to k units only); iterates judged by the true image score.
- `loc_mask`: PGD on the mask objective with random start, restarts and best iterate.
- `apgd_det`, `apgd_loc`: torchattacks' APGD (best-loss path) on the two objectives.
- `square_det`: torchattacks' Square, a black-box attack, on the detection objective, on a
  class-balanced subset (it needs no gradient, so it catches masked gradients).
- `worst_case`: per image, the candidate that most harms it (the clean image is a candidate
  too): the largest signed image score for detection, the largest mask objective for
  localization; metrics are then computed over those images. AUROC ranks a set, so the
  choice is made image by image, never as a minimum of AUROCs. Pixel AUROC and AUPRO pool
  blurred maps over images, so the per-image pick on raw units can land above a member: the
  reported localization worst case is the lower of the pick and every member
  (`pgray.core.scoring.evaluate_suite`).

Directions and picks come from the image labels; unit labels from the full-resolution masks
(a unit is anomalous if any of its source pixels is). The protocol member alone keeps the
reference's unit labels, from the resized mask: a thin defect lost in that resize leaves an
anomalous image with no anomalous unit there (the reference's quirk, kept to stay
bit-identical).

Suite `protocol` runs the protocol alone (the paper's number, and nothing a skeptic needs).

Threats beyond linf (`members(..., threat=...)`) have members of their own, at budgets in
their own unit, and their own worst case over those members and the clean image: l2
(`pgd_det`, `pgd_loc`: torchattacks' PGDL2; `apgd_det`, `apgd_loc`: APGD with norm L2;
`square_det`: Square with norm L2) and patch (`patch_det`, `patch_loc`:
`pgray.attacks.patch`; `patch_random_det`: the random search of
`pgray.attacks.patch_search`). The protocol is linf only. Every threat has a black-box member
(on the subset) and a large-budget check (`large_eps_check`): the two masking checks of
`pgray.attacks.checks` run on each threat's rows.

Subsets (the black-box members', the bf16 probe's) are seeded, random and class-balanced
(`balanced_subset`): never the first images of each class in file order, whose order can
follow a defect type.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pgray.attacks.objectives import (
    detector_outputs,
    image_score_objective,
    make_objective,
    mask_objective,
)
from pgray.attacks.pgd import attack
from pgray.attacks.trajectory import eval_mode, frozen, input_gradient
from pgray.config import AttackConfig, SuiteConfig
from pgray.core.device import resolve_precision, strict_fp32
from pgray.errors import ConfigError

DETECTION, LOCALIZATION, BOTH = "detection", "localization", "both"
WORST = "worst_case"
CHECK = "check_large_eps"
BLACK_BOX = ("square", "random")  # methods that ask the detector for scores only
SUBSET_SEED = 0  # of every subset the suite draws


@dataclass(frozen=True)
class Member:
    name: str
    cfg: AttackConfig
    aims_at: str  # detection | localization | both
    subset: bool = False  # runs on the black-box subset only
    # l2 only: the radius is this RMS change per pixel value times sqrt(3 H W) at the input
    # size (`at_input`); until then cfg.eps holds this value, not a radius
    l2_per_pixel: float | None = None

    @property
    def key(self) -> str:
        """Unique within a suite run (protocol variants share the name `protocol`)."""
        return f"{self.name}:{self.cfg.setting_name()}"

    @property
    def family(self) -> str:
        """Members whose attacks share an implementation (the unit bf16 is decided for)."""
        return f"{self.cfg.method} ({self.cfg.library})"

    @property
    def black_box(self) -> bool:
        return self.cfg.method in BLACK_BOX

    def at_input(self, height: int, width: int) -> Member:
        """This member with its budget in its threat's unit at an input of height x width."""
        if self.l2_per_pixel is None:
            return self
        radius = self.l2_per_pixel * math.sqrt(3 * height * width)
        return dataclasses.replace(self, cfg=dataclasses.replace(self.cfg, eps=radius),
                                   l2_per_pixel=None)

    def describe(self) -> dict[str, object]:
        """What a worst-case row's `suite_members` says of this member."""
        steps, queries = (0, self.cfg.steps) if self.black_box else (self.cfg.steps, 0)
        return {"name": self.name, "method": self.cfg.method, "library": self.cfg.library,
                "objective": self.cfg.objective, "steps": steps, "restarts": self.cfg.restarts,
                "queries": queries}

    def image_steps(self, n_images: int, n_subset: int) -> int:
        """Forward-equivalent work: a PGD step is a forward and an input gradient (counted 1),
        a black-box query a forward (counted 1 as well, since it is printed separately)."""
        n = n_subset if self.subset else n_images
        places = self.cfg.positions if self.cfg.threat == "patch" else 1
        return n * self.cfg.steps * self.cfg.restarts * places


def members(suite: SuiteConfig, protocol: AttackConfig, eps: float,
            variants: tuple[AttackConfig, ...] = (), threat: str = "linf") -> list[Member]:
    """The members of `suite` at `eps` (in `threat`'s unit). The protocol keeps every
    parameter it was given; `variants` are more protocol runs (other steps or restarts), also
    named `protocol`. The protocol is linf: other threats have their own members only, and
    take only the protocol's precision."""
    if threat != "linf":
        return _threat_members(suite, protocol.precision, float(eps), threat)
    proto = [Member("protocol", dataclasses.replace(p, eps=float(eps)), BOTH)
             for p in (protocol, *variants)]
    if suite.name == "protocol":
        return proto
    strong = dict(eps=float(eps), steps=suite.steps, alpha=None, restarts=suite.restarts,
                  random_start=True, keep_best=True, precision=protocol.precision)
    pgd = AttackConfig(method="pgd", library="pgray", **strong)
    apgd = AttackConfig(method="apgd", library="torchattacks", **strong | {"keep_best": False})
    square = AttackConfig(method="square", library="torchattacks", objective="image_score",
                          eps=float(eps), steps=suite.square_queries, restarts=1,
                          random_start=True, precision=protocol.precision)
    return [
        *proto,
        Member("det_topk", dataclasses.replace(pgd, objective="image_score"), DETECTION),
        Member("det_lse", dataclasses.replace(pgd, objective="image_score", surrogate="lse",
                                              temperature=suite.temperature), DETECTION),
        Member("loc_mask", dataclasses.replace(pgd, objective="mask"), LOCALIZATION),
        Member("apgd_det", dataclasses.replace(apgd, objective="image_score"), DETECTION),
        Member("apgd_loc", dataclasses.replace(apgd, objective="mask"), LOCALIZATION),
        Member("square_det", square, DETECTION, subset=True),
    ]


def _threat_members(suite: SuiteConfig, precision: str, eps: float, threat: str
                    ) -> list[Member]:
    """l2: torchattacks' PGDL2 (random start, restarts, the best restart kept; it returns its
    last iterate) and APGD with norm L2, on detection and on localization, and Square with
    norm L2 on detection. patch: pgray's patch PGD (random start, best iterate) at
    `suite.patch_positions` places, on the two objectives (the places stand in for
    restarts), and the random patch search on detection. The black-box members run on the
    subset, `suite.square_queries` queries per image."""
    if suite.name != "adaptive":
        raise ConfigError(f"threat {threat}: needs suite adaptive (the protocol is linf)")
    base = dict(eps=eps, steps=suite.steps, alpha=None, random_start=True,
                precision=precision, threat=threat)
    black_box = dict(objective="image_score", eps=eps, steps=suite.square_queries, restarts=1,
                     random_start=True, precision=precision, threat=threat)
    if threat == "patch":
        patch = AttackConfig(method="pgd", library="pgray", restarts=1, keep_best=True,
                             positions=suite.patch_positions, **base)
        search = AttackConfig(method="random", library="pgray", positions=1, **black_box)
        return [Member("patch_det", dataclasses.replace(patch, objective="image_score"),
                       DETECTION),
                Member("patch_loc", dataclasses.replace(patch, objective="mask"), LOCALIZATION),
                Member("patch_random_det", search, DETECTION, subset=True)]
    pgd = AttackConfig(method="pgd", library="torchattacks", restarts=suite.restarts, **base)
    apgd = dataclasses.replace(pgd, method="apgd")
    square = AttackConfig(method="square", library="torchattacks", **black_box)
    return [
        Member("pgd_det", dataclasses.replace(pgd, objective="image_score"), DETECTION),
        Member("pgd_loc", dataclasses.replace(pgd, objective="mask"), LOCALIZATION),
        Member("apgd_det", dataclasses.replace(apgd, objective="image_score"), DETECTION),
        Member("apgd_loc", dataclasses.replace(apgd, objective="mask"), LOCALIZATION),
        Member("square_det", square, DETECTION, subset=True),
    ]


def large_budget(suite: SuiteConfig, threat: str) -> float:
    """The large-budget check's eps of `threat` as the config gives it (l2: the RMS change
    per pixel value, a radius only at an input size: `Member.at_input`)."""
    return {"linf": suite.check_eps, "l2": suite.check_l2_per_pixel,
            "patch": suite.check_patch_eps}[threat]


def large_eps_check(suite: SuiteConfig, protocol: AttackConfig, threat: str = "linf"
                    ) -> Member:
    """A detection attack at a budget no detector survives (linf 64/255, l2 an RMS of 0.25
    per pixel value, patch half the image: `SuiteConfig`): AUROC must fall to about 0, else
    the attack does not converge or gradients are masked. linf and patch: pgray's PGD (random
    start, best iterate; patch at `suite.patch_positions` places); l2: APGD with norm L2."""
    eps = large_budget(suite, threat)
    common = dict(steps=suite.check_steps, objective="image_score", random_start=True,
                  precision=protocol.precision, threat=threat)
    if threat == "l2":
        cfg = AttackConfig(eps=eps, method="apgd", library="torchattacks", **common)
        return Member(CHECK, cfg, DETECTION, l2_per_pixel=eps)
    places = {"positions": suite.patch_positions} if threat == "patch" else {}
    return Member(CHECK, AttackConfig(eps=eps, keep_best=True, **places, **common), DETECTION)


def balanced_subset(labels: list[int], size: int, seed: int = SUBSET_SEED) -> frozenset[int]:
    """Up to `size` indices, half normal and half anomalous where possible, drawn at random
    within each class by a generator seeded with `seed` (file order can follow a defect type,
    so the first images of a class are not a sample of it)."""
    if size <= 0 or size >= len(labels):
        return frozenset(range(len(labels)))
    normal = [i for i, y in enumerate(labels) if y == 0]
    anomalous = [i for i, y in enumerate(labels) if y != 0]
    half = size // 2
    take_a = min(len(anomalous), max(half, size - len(normal)))
    take_n = min(len(normal), size - take_a)
    rng = np.random.default_rng(seed)
    picked = [*rng.choice(normal, take_n, replace=False), *rng.choice(anomalous, take_a,
                                                                      replace=False)]
    return frozenset(int(i) for i in picked)


def suite_name(suite_members: list[Member]) -> str:
    """`protocol` where every member is a protocol run (the paper's PGD alone), else
    `adaptive`."""
    return "protocol" if all(m.name == "protocol" for m in suite_members) else "adaptive"


@dataclass(frozen=True)
class Truth:
    """What the attacks and the worst-case pick know of a batch's images."""

    units: torch.Tensor  # (B, U) a unit is anomalous if any of its source pixels is
    images: torch.Tensor  # (B,) image labels: the direction of every detection attack
    # (B, U) the protocol's unit labels, from the resized mask as the reference makes them
    reference_units: torch.Tensor | None = None

    def lost(self) -> torch.Tensor:
        """(B,) anomalous images without an anomalous unit (no mask, or none at this grid)."""
        return (self.images.reshape(-1) > 0.5) & ~(self.units > 0.5).any(dim=1)


@dataclass
class Candidate:
    """One member's adversarial images of a batch, scored once in fp32."""

    name: str
    scores: torch.Tensor  # (B,) image scores
    units: torch.Tensor  # (B, U)
    detection: torch.Tensor  # (B,) signed image score (larger: detection hurt more)
    localization: torch.Tensor  # (B,) mask objective (larger: localization hurt more)
    present: torch.Tensor  # (B,) bool: False where the member did not run (subset)
    images: torch.Tensor  # (B, 3, H, W) the adversarial images (the clean ones where absent)


@dataclass
class SuiteBatch:
    """Everything the suite learned about one batch."""

    candidates: list[Candidate]  # one per member, in the members' order
    clean: Candidate  # the unattacked images: a candidate of every pick
    worst_scores: torch.Tensor  # (B,) per image, the most harmful candidate for detection
    worst_units: torch.Tensor  # (B, U) per image, the most harmful one for localization
    whitebox_scores: torch.Tensor  # (B,) the same over the white-box detection attacks only
    zero_gradient: dict[str, torch.Tensor]  # objective -> (B,) bool


@torch.no_grad()
def score_candidate(model: nn.Module, name: str, adv: torch.Tensor, truth: Truth,
                    present: torch.Tensor) -> Candidate:
    scores, units = detector_outputs(model, adv)
    return Candidate(name, scores, units,
                     image_score_objective(scores, truth.units, truth.images),
                     mask_objective(units, truth.units), present, adv)


def _pick(candidates: list[Candidate], key: str) -> torch.Tensor:
    """Per image, the index of the candidate with the largest `key` objective."""
    values = torch.stack([getattr(c, key).masked_fill(~c.present, -torch.inf)
                          for c in candidates])
    return values.argmax(dim=0)


def _gather(candidates: list[Candidate], field: str, pick: torch.Tensor) -> torch.Tensor:
    stacked = torch.stack([getattr(c, field) for c in candidates])
    return stacked[pick, torch.arange(pick.shape[0], device=pick.device)]


def attack_batch(model: nn.Module, x: torch.Tensor, truth: Truth,
                 suite_members: list[Member], *, in_subset: torch.Tensor, seed: int,
                 on_member: Callable[[str], None] | None = None,
                 scorer: nn.Module | None = None) -> SuiteBatch:
    """Run every member on the batch (subset members on `in_subset` images only), score each
    result once, and choose each image's worst case among them and the clean image.
    `scorer`: the detector whose scores are judged (same units as `model`); None: `model`
    itself. A smoothed detector is attacked through its noise expectation and judged by its
    percentile (`pgray.core.smoothing`)."""
    scorer = model if scorer is None else scorer
    candidates = []
    for k, member in enumerate(suite_members):
        member = member.at_input(*x.shape[-2:])
        present = in_subset if member.subset else torch.ones_like(in_subset)
        units = (truth.reference_units if member.name == "protocol"
                 and truth.reference_units is not None else truth.units)
        adv = x.clone()
        if present.any():
            with strict_fp32(x.device, resolve_precision(member.cfg.precision, x.device)):
                adv[present] = attack(model, x[present], units[present], member.cfg,
                                      seed=seed * 31 + k, image_labels=truth.images[present])
        candidates.append(score_candidate(scorer, member.name, adv, truth, present))
        if on_member is not None:
            on_member(member.name)
    clean = score_candidate(scorer, "clean", x.clone(), truth, torch.ones_like(in_subset))
    picks = [*candidates, clean]
    whitebox = [c for c, m in zip(candidates, suite_members)
                if m.aims_at != LOCALIZATION and not m.black_box] + [clean]
    return SuiteBatch(
        candidates=candidates, clean=clean,
        worst_scores=_gather(picks, "scores", _pick(picks, "detection")),
        worst_units=_gather(picks, "units", _pick(picks, "localization")),
        whitebox_scores=_gather(whitebox, "scores", _pick(whitebox, "detection")),
        zero_gradient=zero_gradient_images(model, x, truth),
    )


def worst_images(batch: SuiteBatch) -> torch.Tensor:
    """Per image, the image chosen for detection (panels show it)."""
    picks = [*batch.candidates, batch.clean]
    return _gather(picks, "images", _pick(picks, "detection"))


def zero_gradient_images(model: nn.Module, x: torch.Tensor, truth: Truth
                         ) -> dict[str, torch.Tensor]:
    """Per objective, which images have an all-zero input gradient at the clean image: an
    attack from there does nothing (a detector run under no_grad, a step function)."""
    out = {}
    with frozen(model), eval_mode(model), torch.enable_grad():
        for name, kind in (("detection", "image_score"), ("localization", "mask")):
            xg = x.detach().clone().requires_grad_(True)
            objective = make_objective(truth.units, kind, image_labels=truth.images)
            obj = objective(*detector_outputs(model, xg))
            out[name] = input_gradient(obj, xg).flatten(1).abs().amax(dim=1) == 0
    return out


def planned_work(suite_members: list[Member], n_images: int, n_subset: int) -> dict[str, int]:
    """Image-steps (forward + input gradient) of the gradient members and queries (forward
    only) of the black-box one, for printing before a suite runs."""
    steps = sum(m.image_steps(n_images, n_subset) for m in suite_members if not m.black_box)
    queries = sum(m.image_steps(n_images, n_subset) for m in suite_members if m.black_box)
    return {"image_steps": steps, "queries": queries}
