"""Typed configs for every section of one experiment (one model, one category).

Each dataclass checks its own ranges in `validate()`; `pgray.config.base.from_dict` names the
key of any unknown, mistyped or out-of-range value. Keep this module free of heavy imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pgray.config.base import check, check_eps, from_dict, load_yaml, to_dict
from pgray.config.pseudo import PseudoConfig

Precision = Literal["auto", "fp32", "bf16"]
# What an attacker may change (docs/method.md, "Threat models"), each with its own budget unit:
# linf: every pixel by at most eps/255; l2: the perturbation's L2 norm on [0, 1] pixels is at
# most eps; patch: one square whose area is a fraction eps of the image, its pixels free.
Threat = Literal["linf", "l2", "patch"]
THREATS = ("linf", "l2", "patch")


@dataclass
class DataConfig:
    dataset: str = "synthetic"
    root: str = ""
    category: str = ""
    mask_resize: Literal["nearest", "lanczos_any"] = "nearest"
    visa_split: Literal["1cls", "reference"] = "1cls"
    # Layout-specific options, e.g. the `folder` layout's normal_dir / abnormal_dir / mask_dir.
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        check(bool(self.dataset), "dataset", "must name a dataset")

    def layout_options(self) -> dict[str, Any]:
        """What a layout's `discover` takes: the VisA split rule plus the layout's options."""
        return {"visa_split": self.visa_split, **self.options}


@dataclass
class ModelConfig:
    backbone: str = "vit_small_patch14_dinov2"
    img_size: int = 224
    pretrained: bool = False
    weights: str | None = None  # local backbone checkpoint, used instead of a hub download
    # timm constructor overrides, e.g. {patch_size: 8, depth: 2, embed_dim: 64, num_heads: 2}
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    # 1-based block indices whose (final-normed) patch tokens are concatenated; -1 is the last
    feature_layers: list[int] = field(default_factory=lambda: [-1])
    disc_heads: int = 4
    disc_mlp_dim: int = 2048
    disc_dropout: float = 0.2
    disc_attn_dropout: float = 0.2
    top_k: int = 3
    smoothing_sigma: float = 6.0
    smoothing_radius: int = 7

    def validate(self) -> None:
        check(self.img_size >= 8, "img_size", f"must be >= 8, got {self.img_size}")
        check(self.top_k >= 1, "top_k", f"must be >= 1, got {self.top_k}")
        check(self.disc_heads >= 1, "disc_heads", f"must be >= 1, got {self.disc_heads}")
        check(0 <= self.disc_dropout < 1, "disc_dropout", "must be in [0, 1)")
        check(0 <= self.disc_attn_dropout < 1, "disc_attn_dropout", "must be in [0, 1)")
        check(self.smoothing_sigma >= 0, "smoothing_sigma", "must be >= 0")
        check(self.smoothing_radius >= 0, "smoothing_radius", "must be >= 0")
        check(len(self.feature_layers) >= 1, "feature_layers", "needs at least one layer")
        check(0 not in self.feature_layers, "feature_layers", "layers are 1-based (or -1)")


@dataclass
class LossConfig:
    # 1-based transformer block indices whose attention is regularised (negative: from the end)
    attention_layers: list[int] = field(default_factory=lambda: [6, 9, 12])
    attention_weights: list[float] = field(default_factory=lambda: [0.005, 0.01, 0.05])
    attention_lambda: float = 1.0
    # "mean": the reference's element-wise mean of KL terms (about 1/N of a per-row KL);
    # "row": KL per attention row, averaged over rows, heads and images.
    reduction: Literal["mean", "row"] = "mean"

    def validate(self) -> None:
        check(
            len(self.attention_layers) == len(self.attention_weights),
            "attention_weights",
            f"needs one weight per layer in attention_layers ({len(self.attention_layers)}),"
            f" got {len(self.attention_weights)}",
        )
        check(self.attention_lambda >= 0, "attention_lambda", "must be >= 0")
        check(0 not in self.attention_layers, "attention_layers", "layers are 1-based")


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
    steps: int = 10  # PGD / APGD steps; Square: queries
    alpha: float | None = None  # step size in 1/255 units; None: 2.5 * eps / steps
    random_start: bool = False
    restarts: int = 1
    keep_best: bool = False
    # mask: the reference (localization) objective; image_score: the signed image score
    objective: Literal["mask", "image_score"] = "mask"
    # lse: step along a smooth maximum of the units instead of the top-k mean (image_score
    # only); iterates are still judged by the image score itself
    surrogate: Literal["none", "lse"] = "none"
    temperature: float = 1.0  # of the lse surrogate, in logit units
    start_scale: float = 1.0  # a random start is uniform in +-start_scale * eps
    project: bool = True  # False: no projection onto the eps-ball, [0, 1] only (N-FGSM)
    method: Literal["pgd", "apgd", "square"] = "pgd"
    library: Literal["pgray", "torchattacks"] = "pgray"
    precision: Precision = "fp32"
    threat: Threat = "linf"
    positions: int = 4  # patch: seeded random places tried per image (the worst one is kept)

    def validate(self) -> None:
        check_budget(self.threat, self.eps)
        check(self.positions >= 1, "positions", f"must be >= 1, got {self.positions}")
        check(self.threat != "l2" or self.library == "torchattacks", "library",
              "threat l2 runs through library: torchattacks (PGDL2, APGD norm L2)")
        check(self.threat != "l2" or self.method in ("pgd", "apgd"), "method",
              "threat l2 takes method pgd or apgd")
        check(self.threat != "patch" or (self.method == "pgd" and self.library == "pgray"),
              "method", "threat patch takes method pgd, library pgray")
        check(self.threat == "linf" or self.project, "project",
              f"threat {self.threat} always projects")
        check(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        check(self.restarts >= 1, "restarts", f"must be >= 1, got {self.restarts}")
        check(self.alpha is None or self.alpha > 0, "alpha", "must be > 0")
        check(self.temperature > 0, "temperature", "must be > 0")
        check(self.start_scale > 0, "start_scale", "must be > 0")
        check(self.surrogate == "none" or self.objective == "image_score", "surrogate",
              "a surrogate replaces the image score: it needs objective image_score")
        check(self.method == "pgd" or self.library == "torchattacks", "method",
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
    square_queries: int = 1000  # the black-box member's queries per image
    square_images: int = 64  # its class-balanced subset of the test split (0: every image)
    check_eps: float = 64.0  # the large-budget check: detection AUROC must fall to ~0 there
    check_steps: int = 50
    patch_positions: int = 4  # threat patch: places tried per image (seeded), worst one kept

    def validate(self) -> None:
        for key in ("steps", "restarts", "square_queries", "check_steps", "patch_positions"):
            check(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        check(self.square_images >= 0, "square_images", "must be >= 0 (0: every image)")
        check(self.temperature > 0, "temperature", "must be > 0")
        check_eps(self.check_eps, "check_eps")


# Metrics the held-out proxy reports (pgray.core.scoring.proxy_metrics), all higher-is-better and
# never from the test split: what a run selects its best epoch by and a sweep optimises.
# clean; robust: under the short protocol attack; detect: under a short detection attack (the
# adaptive suite's det_topk); worst: per image, the worse of the two; proxy_score: the mean of
# the clean and the worst-case image AUROC.
PROXY_KINDS = ("clean", "robust", "detect", "worst")
PROXY_METRICS: tuple[str, ...] = tuple(
    f"proxy_{kind}_{metric}"
    for kind in PROXY_KINDS
    for metric in ("image_auroc", "pixel_auroc", "aupro")
) + ("proxy_score",)


@dataclass
class TrainConfig:
    epochs: int = 1000
    batch_size: int = 16  # global batch: split evenly across Ray Train workers
    lr: float = 8e-4
    min_lr: float = 1e-5
    weight_decay: float = 0.01
    seed: int = 0
    adversarial: bool = True  # False drops the two PGD terms (the clean baseline)
    attack: AttackConfig = field(default_factory=AttackConfig)
    # How the training attack is made (pgray.core.step.TRAIN_ATTACKS): pgd, the reference,
    # uses `attack` as given (PGD-10); fgsm_rs, nfgsm and pgd2 are cheaper single- or
    # two-step methods at attack.eps. Never changed silently: rows and runs record it.
    attack_method: Literal["pgd", "fgsm_rs", "nfgsm", "pgd2"] = "pgd"
    # Catastrophic overfitting guard: a proxy epoch whose worst-case image AUROC fell this
    # far below its best while the clean one held is reported, and never selected.
    collapse_drop: float = 0.2
    # DataLoader workers decoding, resizing and making pseudo-anomalies; None: 0 on the CPU
    # (the step is the bottleneck there) and min(4, CPUs) on CUDA, where a ViT-S PGD-10 step
    # takes tens of milliseconds and generation on the training thread would starve it
    loader_workers: int | None = None
    holdout_fraction: float = 0.1  # normal train images kept out for the proxy metric
    proxy_steps: int = 10
    proxy_every: int = 1  # epochs between proxies (the first and the last epoch always have one)
    # pseudo-anomalies drawn per held-out normal image: a finer proxy from few images
    proxy_repeats: int = 4
    # The generator of the held-out proxy's anomalies, fixed for a whole study: null is the
    # reference pseudo config, never the trial's own `pseudo` (a trial that made its anomalies
    # larger would otherwise get an easier test, not a better model). Another config here
    # measures generalisation beyond the training distribution.
    proxy_pseudo: PseudoConfig | None = None
    # None: every epoch on the CPU, every 10 on CUDA: a full checkpoint (weights + AdamW,
    # hundreds of MB at ViT-S, fsync'd) costs about as much as a whole GPU epoch of 15-25 steps
    checkpoint_every: int | None = None
    # Keep the weights of the proxy epoch where this held-out metric peaked (written as
    # best.pt beside the checkpoint): adversarial training overfits robustly late in a run,
    # and the held-out proxy sees it without touching the test split. None keeps the last.
    select_metric: str | None = None
    precision: Precision = "auto"
    max_steps_per_epoch: int | None = None

    def validate(self) -> None:
        check(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        check(self.attack.threat == "linf", "attack.threat",
              "training attacks are linf (other threats are for evaluation)")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.lr > 0, "lr", "must be > 0")
        check(0 <= self.min_lr <= self.lr, "min_lr", "must be in [0, lr]")
        check(0 <= self.holdout_fraction < 1, "holdout_fraction", "must be in [0, 1)")
        check(self.proxy_steps >= 1, "proxy_steps", "must be >= 1")
        check(self.proxy_repeats >= 1, "proxy_repeats", "must be >= 1")
        check(self.checkpoint_every is None or self.checkpoint_every >= 1, "checkpoint_every",
              "must be >= 1 (or null: chosen for the device)")
        check(self.loader_workers is None or self.loader_workers >= 0, "loader_workers",
              "must be >= 0 (or null: chosen for the device)")
        check(0 < self.collapse_drop <= 1, "collapse_drop", "must be in (0, 1]")
        check(
            self.select_metric is None or self.select_metric in PROXY_METRICS,
            "select_metric",
            f"must be one of {list(PROXY_METRICS)} or null, got {self.select_metric!r}",
        )
        check(
            self.select_metric is None or self.holdout_fraction > 0,
            "select_metric",
            "needs held-out images for the proxy (train.holdout_fraction > 0)",
        )


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


@dataclass
class EvalConfig:
    eps: list[float] = field(default_factory=lambda: [8.0])  # linf budgets (1/255 units)
    attack: AttackConfig = field(default_factory=lambda: AttackConfig(steps=1000))  # protocol
    suite: SuiteConfig = field(default_factory=SuiteConfig)
    batch_size: int | None = None  # None: 256 on CUDA (it fits many times over), 32 on the CPU
    n_panels: int = 4
    # more threat models, each with its budgets: [{threat: l2, eps: [0.5, 1.0]}, ...]
    threats: list[ThreatConfig] = field(default_factory=list)

    def validate(self) -> None:
        check_eps(self.eps)
        check(self.attack.threat == "linf", "attack.threat",
              "the protocol attack is linf; other threats go under `threats`")
        check_threats(self.threats, self.suite)
        check(self.batch_size is None or self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.n_panels >= 0, "n_panels", "must be >= 0")


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @classmethod
    def from_dict(cls, data: dict | None) -> ExperimentConfig:
        return from_dict(cls, data or {})

    @classmethod
    def from_yaml(cls, path: str | Path) -> ExperimentConfig:
        return cls.from_dict(load_yaml(path))

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def tiny_model_config(img_size: int = 32, patch_size: int = 8, depth: int = 2) -> ModelConfig:
    """A ViT small enough for CPU tests and the demo."""
    return ModelConfig(
        backbone="vit_tiny_patch16_224",
        img_size=img_size,
        backbone_kwargs={"patch_size": patch_size, "depth": depth, "embed_dim": 64, "num_heads": 2},
        disc_heads=2,
        disc_mlp_dim=128,
        top_k=3,
        smoothing_sigma=max(1.0, 6.0 * img_size / 224),
        smoothing_radius=max(1, round(7 * img_size / 224)),
    )


def merge(base: dict, override: dict) -> dict:
    """Deep-merge two plain dicts (override wins)."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out
