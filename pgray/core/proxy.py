"""The held-out proxy (docs/method.md): clean, short-protocol, short-detection and per-image
worst-case metrics on held-out normals and their pseudo-anomalies (AUROCs, image margins and
the clean and worst-case image AUROC's bootstrap interval). Never touches the test split.
Its batches may be scored in shares by several ranks (pgray.core.fit) and joined."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from pgray.config import ExperimentConfig
from pgray.config.experiment import PROXY_INTERVAL_KINDS
from pgray.core.intervals import image_auroc_replicates, percentile_interval, resample_counts
from pgray.core.metrics import image_margin
from pgray.core.scoring import Batch, EvalOutputs, score_batches, score_suite

PROXY_PARTS = ("clean", "robust", "detect", "worst")


def proxy_metrics(
    model: torch.nn.Module,
    batches: list[Batch],
    cfg: ExperimentConfig,
    *,
    device: torch.device,
    precision: str = "fp32",
) -> dict[str, float]:
    """The held-out proxy: clean, short-protocol, short-detection and per-image worst-case
    AUROCs on held-out normals and their pseudo-anomalies (`batches`, built once per run from
    the study's fixed proxy generator). Never touches the test split."""
    return proxy_metrics_of(proxy_outputs(model, list(enumerate(batches)), cfg, device=device,
                                          precision=precision))


def proxy_outputs(
    model: torch.nn.Module,
    batches: list[tuple[int, Batch]],
    cfg: ExperimentConfig,
    *,
    device: torch.device,
    precision: str = "fp32",
) -> dict[str, list[tuple[int, EvalOutputs]]]:
    """Each proxy part's outputs per (index, batch) pair. Every batch's attacks are seeded
    by its index in the whole proxy set, so ranks that each score a share of the batches
    produce, together, exactly what one process scoring all of them does."""
    members = proxy_members(cfg, precision)
    out: dict[str, list[tuple[int, EvalOutputs]]] = {name: [] for name in PROXY_PARTS}
    for index, batch in batches:
        clean = score_batches(model, [batch], None, device=device)
        suite = score_suite(model, [batch], members, device=device,
                            seed=cfg.train.seed + index)
        robust, detect = (suite.members[m.key] for m in members)
        for name, result in zip(PROXY_PARTS, (clean, robust, detect, suite.worst)):
            out[name].append((index, result))
    return out


def proxy_metrics_of(parts: dict[str, list[tuple[int, EvalOutputs]]]) -> dict[str, float]:
    """The proxy metrics of every part's batches, joined in batch order (parts from several
    ranks may be listed in any order)."""
    joined = {name: join_outputs([o for _, o in sorted(parts[name], key=lambda pair: pair[0])])
              for name in PROXY_PARTS}
    clean = joined["clean"]
    out: dict[str, float] = {}
    for name, result in joined.items():
        for key, value in result.metrics().items():
            out[f"proxy_{name}_{key}"] = value
        out[f"proxy_{name}_image_margin"] = _margin(result, clean.scores)
    out["proxy_score"] = 0.5 * (out["proxy_clean_image_auroc"] + out["proxy_worst_image_auroc"])
    counts = resample_counts(clean.labels)  # one seeded draw: the parts score the same images
    for name in PROXY_INTERVAL_KINDS:
        low, high = image_auroc_interval(joined[name].scores, joined[name].labels, counts)
        out[f"proxy_{name}_image_auroc_lo"], out[f"proxy_{name}_image_auroc_hi"] = low, high
    return out


def _margin(result: EvalOutputs, clean_scores: np.ndarray) -> float:
    """The part's image margin in the clean spread; NaN where it is undefined (one class,
    or clean scores that are all equal)."""
    try:
        return image_margin(result.scores, result.labels, clean_scores)
    except ValueError:
        return float("nan")


def image_auroc_interval(scores: np.ndarray, labels: np.ndarray,
                         counts: np.ndarray | None = None) -> tuple[float, float]:
    """The bootstrap 95 % interval of one image AUROC (`pgray.core.intervals`: exact in every
    resample, so nothing to centre). `counts`: `resample_counts(labels)` by default (seeded:
    the same outputs give the same interval), or the caller's, to share one draw among the
    parts, which score the same images. About 10 ms for a hundred images; NaN with one class."""
    if counts is None:
        counts = resample_counts(labels)
    return percentile_interval(image_auroc_replicates(scores, labels, counts))


def join_outputs(parts: list[EvalOutputs]) -> EvalOutputs:
    """Several batches' outputs as one (kept images are not carried: the proxy keeps none)."""
    return EvalOutputs(scores=np.concatenate([p.scores for p in parts]),
                       labels=np.concatenate([p.labels for p in parts]),
                       maps=np.concatenate([p.maps for p in parts]),
                       masks=np.concatenate([p.masks for p in parts]))


def proxy_members(cfg: ExperimentConfig, precision: str) -> list:
    """The proxy's two short attacks: the protocol's (eval.attack: its objective, never the
    training attack's, which a search may move) and the suite's detection attack, at
    train.proxy_eps (train.attack.eps where unset) and train.proxy_steps."""
    from pgray.attacks.suite import DETECTION, Member, members

    eps = cfg.train.proxy_eps if cfg.train.proxy_eps is not None else cfg.train.attack.eps
    short = dataclasses.replace(cfg.eval.attack, eps=eps, steps=cfg.train.proxy_steps,
                                alpha=None, restarts=1, keep_best=False, precision=precision)
    detect = next(m for m in members(cfg.eval.suite, short, short.eps) if m.name == "det_topk")
    detect_cfg = dataclasses.replace(detect.cfg, steps=cfg.train.proxy_steps, restarts=1)
    return [Member("robust", short, "both"), Member("detect", detect_cfg, DETECTION)]
