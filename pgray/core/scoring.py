"""Scoring a model on a split, clean or under attack: the test-split evaluation and the
held-out proxy. One attacked image serves both the detection and localization metrics."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pgray.config import AttackConfig, EvalConfig, ExperimentConfig
from pgray.core.device import autocast


def mask_to_patch_labels(mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B,1,H,W) pixel mask -> (B,N) patch labels: a patch is anomalous if any pixel is."""
    pooled = F.max_pool2d(mask.float(), kernel_size=patch_size, stride=patch_size)
    return (pooled.flatten(1) > 0).float()


@dataclasses.dataclass
class EvalOutputs:
    """Scores of one setting over a split, kept for metrics and panels."""

    scores: np.ndarray  # (N,) image scores
    labels: np.ndarray  # (N,)
    maps: np.ndarray  # (N,H,W) float32 anomaly maps
    masks: np.ndarray  # (N,H,W) uint8 ground truth
    adv_images: dict[int, torch.Tensor] = dataclasses.field(default_factory=dict)  # picked only

    def metrics(self) -> dict[str, float]:
        from pgray.core.metrics import aupro, image_auroc, pixel_auroc

        out = {"image_auroc": float("nan"), "pixel_auroc": float("nan"), "aupro": float("nan")}
        if len(np.unique(self.labels)) == 2:
            out["image_auroc"] = image_auroc(self.scores, self.labels)
        if self.masks.any() and not self.masks.all():
            out["pixel_auroc"] = pixel_auroc(self.maps, self.masks)
            out["aupro"] = aupro(self.maps, self.masks)
        return out


def score_batches(
    model: torch.nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    attack_cfg: AttackConfig | None,
    *,
    device: torch.device,
    keep: frozenset[int] = frozenset(),
    seed: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> EvalOutputs:
    """Score every batch clean (attack_cfg None) or under attack; one attacked image serves
    both the detection (image score) and localization (map) metrics."""
    from pgray.attacks.pgd import attack

    model.eval()
    scores, labels, maps, masks, kept = [], [], [], [], {}
    offset = 0
    for i, batch in enumerate(batches):
        x = batch["image"].to(device)
        mask = batch["mask"].to(device)
        if attack_cfg is not None and attack_cfg.eps > 0:
            patch_labels = mask_to_patch_labels(mask, model.patch_size)
            x = attack(model, x, patch_labels, attack_cfg, seed=seed + i)
        with torch.no_grad(), autocast(device, attack_cfg.precision if attack_cfg else "fp32"):
            logits = model(x)
        logits = logits.float()
        scores.append(model.image_scores(logits).cpu())
        maps.append(model.anomaly_maps(logits)[:, 0].cpu())
        labels.append(batch["label"].cpu())
        masks.append(mask[:, 0].cpu().to(torch.uint8))
        for j in range(x.shape[0]):
            if offset + j in keep:
                kept[offset + j] = x[j].detach().cpu()
        offset += x.shape[0]
        if on_batch is not None:
            on_batch(x.shape[0])
    return EvalOutputs(
        scores=torch.cat(scores).numpy(),
        labels=torch.cat(labels).numpy(),
        maps=torch.cat(maps).numpy().astype(np.float32),
        masks=torch.cat(masks).numpy(),
        adv_images=kept,
    )


def pseudo_eval_batches(
    loader: Iterable[dict[str, torch.Tensor]],
) -> Iterable[dict[str, torch.Tensor]]:
    """Turn (normal, pseudo-anomaly) pairs into an evaluation split: each normal image with an
    empty mask and label 0, each pseudo-anomaly with its pasted mask and label 1."""
    for batch in loader:
        x, xt = batch["image"], batch["pseudo_image"]
        pm = batch["pseudo_mask"].float()
        yield {
            "image": torch.cat([x, xt]),
            "mask": torch.cat([torch.zeros_like(pm), pm]),
            "label": torch.cat([torch.zeros(len(x)), torch.ones(len(xt))]).long(),
        }


def proxy_metrics(
    model: torch.nn.Module,
    loader: Iterable[dict[str, torch.Tensor]],
    cfg: ExperimentConfig,
    *,
    device: torch.device,
    precision: str = "fp32",
) -> dict[str, float]:
    """Held-out proxy: clean and short-PGD AUROCs on held-out normals and their pseudo-anomalies.

    Never touches the test split, so the sweep can optimise it without leaking test labels.
    """
    batches = list(pseudo_eval_batches(loader))
    out: dict[str, float] = {}
    short = dataclasses.replace(
        cfg.train.attack, steps=cfg.train.proxy_steps, alpha=None, precision=precision
    )
    for name, attack_cfg in (("clean", None), ("robust", short)):
        result = score_batches(model, batches, attack_cfg, device=device, seed=cfg.train.seed)
        for key, value in result.metrics().items():
            out[f"proxy_{name}_{key}"] = value
    out["proxy_score"] = 0.5 * (out["proxy_clean_image_auroc"] + out["proxy_robust_image_auroc"])
    return out


def describe_setting(attack_cfg: AttackConfig | None) -> dict[str, Any]:
    if attack_cfg is None:
        return {"setting": "clean", "eps": 0.0, "steps": 0, "alpha": 0.0, "restarts": 0}
    return {"setting": attack_cfg.setting_name()} | attack_cfg.describe()


def attack_settings(eval_cfg: EvalConfig) -> list[AttackConfig | None]:
    """Clean first, then the base attack at each eps."""
    return [None] + [dataclasses.replace(eval_cfg.attack, eps=float(e)) for e in eval_cfg.eps]


def test_loader(dataset, batch_size: int, device: torch.device):
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0,
                      pin_memory=device.type == "cuda")


def evaluate_model(
    model,
    dataset,
    settings: list[AttackConfig | None],
    *,
    batch_size: int,
    device: torch.device,
    progress: bool = True,
    keep: frozenset[int] = frozenset(),
) -> tuple[list[dict[str, Any]], dict[str, EvalOutputs]]:
    """Rows of metrics, one per setting, and the raw outputs keyed by setting name."""
    rows, outputs = [], {}
    for attack_cfg in settings:
        desc = describe_setting(attack_cfg)
        bar = _bar(len(dataset), desc["setting"], progress)
        started = time.perf_counter()
        out = score_batches(
            model, test_loader(dataset, batch_size, device), attack_cfg, device=device,
            keep=keep, on_batch=bar.update if bar else None,
        )
        if bar:
            bar.close()
        rows.append(desc | out.metrics() | {
            "n_images": int(len(out.labels)),
            "n_anomalous": int(out.labels.sum()),
            "time_s": time.perf_counter() - started,
        })
        outputs[desc["setting"]] = out
    return rows, outputs


def _bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True)


def panel_indices(dataset, n: int) -> frozenset[int]:
    """The first n anomalous test images (their attacked versions are kept for panels)."""
    return frozenset([i for i, s in enumerate(dataset.samples) if s.label == 1][:n])
