"""Typed configs for every section of one experiment (one model, one category).

Each dataclass checks its own ranges in `validate()`; `pgray.config.base.from_dict` names the
key of any unknown, mistyped or out-of-range value. Keep this module free of heavy imports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pgray.config.attack import (  # noqa: F401 - part of this module's interface
    THREATS,
    AttackConfig,
    Precision,
    SuiteConfig,
    Threat,
    ThreatConfig,
    check_budget,
    check_threats,
)
from pgray.config.base import check, check_eps, from_dict, load_yaml, to_dict
from pgray.config.certify import CertifyConfig
from pgray.config.pseudo import PseudoConfig


@dataclass
class DataConfig:
    dataset: str = "synthetic"
    root: str = ""
    category: str = ""
    mask_resize: Literal["nearest", "lanczos_any"] = "nearest"
    visa_split: Literal["1cls", "reference"] = "1cls"
    # Read items from the node's decode cache (pgray/data/cache.py) instead of decoding and
    # resizing every source file at every epoch; the items are the same, bit for bit.
    decode_cache: bool = True
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
    # None: attention_lambda as given (the reference). r >= 0: the attention term's weight is
    # set every step so that the term is r times that step's detection loss (the BCE): one
    # range of r means the same at every depth, layer count and attention scale. The weight
    # is then the step's, so attention_lambda must stay at its default 1.0.
    attention_ratio: float | None = None
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
        check(self.attention_ratio is None or 0 <= self.attention_ratio < math.inf,
              "attention_ratio", f"must be a number >= 0 (or null), got {self.attention_ratio}")
        check(self.attention_ratio is None or self.attention_lambda == 1.0, "attention_ratio",
              "sets the attention weight every step: leave loss.attention_lambda at its"
              f" default 1.0 (got {self.attention_lambda:g}), or unset attention_ratio")
        check(0 not in self.attention_layers, "attention_layers", "layers are 1-based")


# Metrics the held-out proxy reports (pgray.core.proxy.proxy_metrics), all higher-is-better and
# never from the test split: what a run selects its best epoch by and a sweep optimises.
# clean; robust: under the short protocol attack; detect: under a short detection attack (the
# adaptive suite's det_topk); worst: per image, the worse of the two; proxy_score: the mean of
# the clean and the worst-case image AUROC. image_margin (pgray.core.metrics.image_margin):
# the anomalous minus the normal images' mean score in units of the clean scores' spread,
# continuous where the AUROC ties and below zero where an attack wins.
PROXY_KINDS = ("clean", "robust", "detect", "worst")
PROXY_METRICS: tuple[str, ...] = tuple(
    f"proxy_{kind}_{metric}"
    for kind in PROXY_KINDS
    for metric in ("image_auroc", "pixel_auroc", "aupro", "image_margin")
) + ("proxy_score",)
# Logged beside them each proxy epoch, never objectives: the bootstrap 95 % interval of the
# clean and the worst-case image AUROC (pgray.core.proxy.image_auroc_interval).
PROXY_INTERVAL_KINDS = ("clean", "worst")
PROXY_INTERVALS: tuple[str, ...] = tuple(
    f"proxy_{kind}_image_auroc_{end}" for kind in PROXY_INTERVAL_KINDS for end in ("lo", "hi"))


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
    # How the training attack is made (pgray.config.passes.TRAIN_ATTACKS): pgd, the reference,
    # uses `attack` as given (PGD-10); fgsm_rs, nfgsm and pgd2 are cheaper single- or
    # two-step methods at attack.eps. Never changed silently: rows and runs record it.
    attack_method: Literal["pgd", "fgsm_rs", "nfgsm", "pgd2"] = "pgd"
    # None: every attacked batch uses attack.objective. p in [0, 1]: in each step, each of
    # the two attacked batches (normal, pseudo-anomalous) uses objective image_score with
    # probability p and mask otherwise, drawn from the step's seed (the same on a resume).
    image_score_share: float | None = None
    # >= 0: weight of a TRADES-style term, the per-patch binary KL from the clean scores to
    # the attacked ones (pgray.core.losses.trades_kl), for both pairs; 0 is the reference.
    trades_beta: float = 0.0
    # Catastrophic overfitting guard: a proxy epoch whose worst-case image AUROC fell this
    # far below its best while the clean one held is reported, and never selected.
    collapse_drop: float = 0.2
    # DataLoader workers decoding, resizing and making pseudo-anomalies; None: 0 on the CPU
    # (the step is the bottleneck there) and on CUDA, where a ViT-S PGD-10 step takes tens of
    # milliseconds and generation on the training thread would starve it, the CPUs Ray
    # reserved for the worker less one (min(4, CPUs) outside Ray): core.device.loader_workers
    loader_workers: int | None = None
    holdout_fraction: float = 0.1  # normal train images kept out for the proxy metric
    proxy_steps: int = 10
    # The budget of the held-out proxy's attacks (1/255 units), fixed for a whole study. None:
    # train.attack.eps. A search over train.attack.eps must fix it: a trial trained at a smaller
    # eps would otherwise be tested at that smaller eps, an easier test, not a better model.
    proxy_eps: float | None = None
    # Epochs between proxies (the first and the last epoch always have one). None: the
    # proxy takes about 10 % of the run (pgray.config.passes.default_proxy_every: every 9
    # epochs at the reference); a sweep with ASHA fixes it to a divisor of its grace period.
    proxy_every: int | None = None
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
        self._check_attack_mix()
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.lr > 0, "lr", "must be > 0")
        check(0 <= self.min_lr <= self.lr, "min_lr", "must be in [0, lr]")
        check(0 <= self.holdout_fraction < 1, "holdout_fraction", "must be in [0, 1)")
        check(self.proxy_steps >= 1, "proxy_steps", "must be >= 1")
        check(self.proxy_repeats >= 1, "proxy_repeats", "must be >= 1")
        check(self.proxy_eps is None or 0 < self.proxy_eps < math.inf, "proxy_eps",
              f"must be > 0 (or null: train.attack.eps), got {self.proxy_eps}")
        check(self.proxy_every is None or self.proxy_every >= 1, "proxy_every",
              "must be >= 1 (or null: about 10 % of the run)")
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

    def _check_attack_mix(self) -> None:
        """The keys that reshape the training attack's objective and the adversarial balance."""
        share = self.image_score_share
        check(share is None or 0 <= share <= 1, "image_score_share",
              f"must be in [0, 1] (or null), got {share}")
        check(share is None or self.attack.objective == "mask", "image_score_share",
              "mixes image_score into the mask objective: it needs train.attack.objective mask,"
              f" got {self.attack.objective} (share 1 is image_score on every batch)")
        check(share is None or self.adversarial, "image_score_share",
              "mixes the training attack's objectives: it needs train.adversarial true")
        check(0 <= self.trades_beta < math.inf, "trades_beta",
              f"must be a number >= 0, got {self.trades_beta}")
        check(self.trades_beta == 0 or self.adversarial, "trades_beta",
              "weighs attacked against clean scores: it needs train.adversarial true")


# Searchable keys that only mean something with train.adversarial true: a clean-trained
# twin of a trial drops them (its config would not validate with them set).
ADVERSARIAL_ONLY_KEYS = ("train.image_score_share", "train.trades_beta")


@dataclass
class EvalConfig:
    eps: list[float] = field(default_factory=lambda: [8.0])  # linf budgets (1/255 units)
    attack: AttackConfig = field(default_factory=lambda: AttackConfig(steps=1000))  # protocol
    suite: SuiteConfig = field(default_factory=SuiteConfig)
    batch_size: int | None = None  # None: 256 on CUDA (it fits many times over), 32 on the CPU
    n_panels: int = 4
    # more threat models, each with its budgets: [{threat: l2, eps: [0.5, 1.0]}, ...]
    threats: list[ThreatConfig] = field(default_factory=list)
    # certified L2 bounds by percentile smoothing, beside the attacked ones (None: none)
    certify: CertifyConfig | None = None

    def validate(self) -> None:
        check_eps(self.eps)
        check(self.attack.threat == "linf", "attack.threat",
              "the protocol attack is linf; other threats go under `threats`")
        check_threats(self.threats, self.suite)
        check(self.batch_size is None or self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.n_panels >= 0, "n_panels", "must be >= 0")
        check(self.certify is None or self.suite.name == "adaptive", "certify",
              "needs suite adaptive (its l2 members attack the smoothed detector)")


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
