"""Typed configs of attacks: one attack, the suite of attacks, and the threat models beyond
L-infinity with their budgets. Free of heavy imports, as every config module."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pgray.config.base import check, check_eps

Precision = Literal["auto", "fp32", "bf16"]
# What an attacker may change (docs/method.md, "Threat models"), each with its own budget unit:
# linf: every pixel by at most eps/255; l2: the perturbation's L2 norm on [0, 1] pixels is at
# most eps; patch: one square whose area is a fraction eps of the image, its pixels free.
Threat = Literal["linf", "l2", "patch"]
THREATS = ("linf", "l2", "patch")


def check_budget(threat: str, eps: float, key: str = "eps", *, zero: bool = True) -> None:
    """The range of one budget in its threat's unit (`zero`: 0, no attack, is allowed)."""
    if threat == "linf":
        check_eps(eps, key)
        check(zero or eps > 0, key, "must be > 0")
    elif threat == "l2":
        check(eps > 0 or (zero and eps == 0), key,
              f"must be {'>=' if zero else '>'} 0 (the L2 norm on [0, 1] pixels), got {eps:g}")
    else:
        check((0 < eps < 1) or (zero and eps == 0), key,
              f"must be in {'[' if zero else '('}0, 1) (the patch area as a fraction of the"
              f" image), got {eps:g}")


@dataclass
class AttackConfig:
    # The budget in the threat's unit: linf radius in 1/255 pixel units (as the field writes
    # it), l2 norm on [0, 1] pixels, or patch area as a fraction of the image
    eps: float = 8.0
    steps: int = 10  # PGD / APGD steps; Square and random search: queries
    alpha: float | None = None  # step size in 1/255 units; None: 2.5 * eps / steps
    random_start: bool = False
    restarts: int = 1
    keep_best: bool = False
    # mask: the reference (localization) objective; image_score: the signed image score
    objective: Literal["mask", "image_score"] = "mask"
    # lse: step along a smooth maximum of the units instead of the top-k mean (image_score
    # only); iterates are still judged by the image score itself
    surrogate: Literal["none", "lse"] = "none"
    temperature: float = 1.0  # of the lse surrogate, in units of each image's clean unit spread
    start_scale: float = 1.0  # a random start is uniform in +-start_scale * eps
    project: bool = True  # False: no projection onto the eps-ball, [0, 1] only (N-FGSM)
    # square: torchattacks' Square (black-box, linf and l2); random: pgray's random search over
    # patch places and fills (black-box, patch only: `pgray.attacks.patch_search`)
    method: Literal["pgd", "apgd", "square", "random"] = "pgd"
    library: Literal["pgray", "torchattacks"] = "pgray"
    precision: Precision = "fp32"
    threat: Threat = "linf"
    positions: int = 4  # patch: seeded random places tried per image (the worst one is kept)

    def validate(self) -> None:
        check_budget(self.threat, self.eps)
        check(self.positions >= 1, "positions", f"must be >= 1, got {self.positions}")
        check(self.threat != "l2" or self.library == "torchattacks", "library",
              "threat l2 runs through library: torchattacks (PGDL2, APGD norm L2)")
        check(self.threat != "l2" or self.method in ("pgd", "apgd", "square"), "method",
              "threat l2 takes method pgd, apgd or square")
        check(self.threat != "patch" or (self.method in ("pgd", "random")
                                         and self.library == "pgray"),
              "method", "threat patch takes method pgd or random, library pgray")
        check(self.method != "random" or self.threat == "patch", "method",
              "random (the random search over patch places and fills) is for threat patch")
        check(self.threat == "linf" or self.project, "project",
              f"threat {self.threat} always projects")
        check(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        check(self.restarts >= 1, "restarts", f"must be >= 1, got {self.restarts}")
        check(self.alpha is None or self.alpha > 0, "alpha", "must be > 0")
        check(self.temperature > 0, "temperature", "must be > 0")
        check(self.start_scale > 0, "start_scale", "must be > 0")
        check(self.surrogate == "none" or self.objective == "image_score", "surrogate",
              "a surrogate replaces the image score: it needs objective image_score")
        check(self.method in ("pgd", "random") or self.library == "torchattacks", "method",
              f"{self.method} runs through library: torchattacks")
        check(self.method == "pgd" or self.surrogate == "none", "surrogate",
              f"{self.method} takes no surrogate (pgd only)")

    @property
    def eps_unit(self) -> float:
        """eps in [0, 1] pixel space (linf radius, l2 norm); patch: the area fraction."""
        return self.eps / 255.0 if self.threat == "linf" else self.eps

    @property
    def alpha_unit(self) -> float:
        """Step size in [0, 1] pixel space: per pixel for linf and patch (sign steps), an L2
        length for l2. Unset: the reference rule 2.5 * radius / steps, whose radius for a
        patch is that of the [0, 1] box its pixels move in (0.5)."""
        if self.alpha is not None:
            return self.alpha if self.threat == "l2" else self.alpha / 255.0
        radius = {"linf": self.eps_unit, "l2": self.eps, "patch": 0.5}[self.threat]
        return 2.5 * radius / self.steps

    def setting_name(self) -> str:
        """A short, unique name of this attack setting for tables and file names (threats
        other than linf lead it, so names stay unique across threats)."""
        name = f"{self.method}_eps{self.eps:g}_steps{self.steps}"
        if self.threat != "linf":
            name = f"{self.threat}_{name}"
        if self.threat == "patch":
            name += f"_pos{self.positions}"
        if self.restarts > 1:
            name += f"_r{self.restarts}"
        if self.random_start:
            name += "_rs"
        if self.keep_best:
            name += "_best"
        if self.objective != "mask":
            name += f"_{self.objective}"
        if self.surrogate != "none":
            name += f"_{self.surrogate}{self.temperature:g}"
        if self.start_scale != 1.0:
            name += f"_start{self.start_scale:g}"
        if not self.project:
            name += "_noproj"
        return name

    def describe(self) -> dict[str, Any]:
        """The parameters that define a robust number, recorded next to it."""
        return {
            "threat": self.threat,
            "eps": self.eps,
            "steps": self.steps,
            # in 1/255 pixel units, but an L2 length on [0, 1] pixels for l2
            "alpha": self.alpha_unit * (1.0 if self.threat == "l2" else 255.0),
            "restarts": self.restarts,
            "random_start": self.random_start,
            "keep_best": self.keep_best,
            "objective": self.objective,
            "surrogate": self.surrogate,
            "temperature": self.temperature,
            "start_scale": self.start_scale,
            "project": self.project,
            "method": self.method,
            "library": self.library,
            "precision": self.precision,
        } | ({"positions": self.positions} if self.threat == "patch" else {})


@dataclass
class SuiteConfig:
    """The attack suite a robust number comes from (pgray.attacks.suite): `adaptive` runs the
    paper protocol and attacks aimed at detection and at localization, and reports the worst
    case per image; `protocol` runs the paper protocol alone."""

    SHORTHAND: ClassVar[str] = "name"  # `suite: protocol` in YAML means {name: protocol}

    name: Literal["adaptive", "protocol"] = "adaptive"
    steps: int = 100  # of each adaptive member (the protocol keeps its own steps)
    restarts: int = 2  # of each adaptive member, random starts, best iterate kept
    temperature: float = 1.0  # of the smooth-maximum detection member
    # the black-box members' queries per image (Square for linf and l2, the random patch
    # search for patch)
    square_queries: int = 1000
    # their seeded, random, class-balanced subset of the test split (0: every image)
    square_images: int = 64
    # The large-budget checks, one per threat evaluated: detection AUROC must fall to ~0 there.
    check_eps: float = 64.0  # linf, in 1/255
    # l2, as the RMS change per pixel value on [0, 1] (the rows' `l2_per_pixel`): the radius
    # is check_l2_per_pixel * sqrt(3 H W) at the model's input size (13.9 at 32 px, 97 at
    # 224). That ball holds the linf ball of radius 0.25 (about 64/255), so at least what the
    # linf check allows: a budget no detector survives, whatever the image size.
    check_l2_per_pixel: float = 0.25
    # patch, as an area fraction: half the image. Any such square covers the image's centre;
    # painted freely, it can hide most defects and paint one on a normal image.
    check_patch_eps: float = 0.5
    check_steps: int = 50
    patch_positions: int = 4  # threat patch: places tried per image (seeded), worst one kept

    def validate(self) -> None:
        for key in ("steps", "restarts", "square_queries", "check_steps", "patch_positions"):
            check(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        check(self.square_images >= 0, "square_images", "must be >= 0 (0: every image)")
        check(self.temperature > 0, "temperature", "must be > 0")
        check_eps(self.check_eps, "check_eps")
        check(self.check_l2_per_pixel > 0, "check_l2_per_pixel", "must be > 0 (the RMS"
              f" change per pixel value on [0, 1]), got {self.check_l2_per_pixel:g}")
        check_budget("patch", self.check_patch_eps, "check_patch_eps", zero=False)


@dataclass
class ThreatConfig:
    """A threat model beyond linf and its budgets in its own unit (`AttackConfig.eps`): the
    suite runs its own members at each, with its own per-image worst case."""

    threat: Threat = "l2"
    eps: list[float] = field(default_factory=list)

    def validate(self) -> None:
        check(self.threat != "linf", "threat",
              "linf budgets are the top-level `eps` (1/255 units); list l2 or patch here")
        check(len(self.eps) >= 1, "eps", "needs at least one budget")
        for i, e in enumerate(self.eps):
            check_budget(self.threat, e, f"eps[{i}]", zero=False)


def check_threats(threats: list[ThreatConfig], suite: SuiteConfig) -> None:
    """Threats beyond linf need the adaptive suite (the protocol is linf) and appear once."""
    names = [t.threat for t in threats]
    for i, name in enumerate(names):
        check(name not in names[:i], f"threats[{i}].threat",
              f"{name} is listed twice: give all its budgets in one eps list")
    check(not threats or suite.name == "adaptive", "threats",
          "threats beyond linf need suite adaptive (the protocol suite is the linf paper PGD)")
