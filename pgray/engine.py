"""One training step, one epoch, one evaluation: the pure-PyTorch heart of pgray.

Nothing here knows about Ray or MLflow; the distributed layer and the entry points call these.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pgray.config import AttackConfig, ExperimentConfig

TERMS = ("clean_normal", "adv_normal", "clean_pseudo", "adv_pseudo")


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" means bf16 on CUDA and fp32 elsewhere (CPU bf16 autocast is slow and lossy)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def mask_to_patch_labels(mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B,1,H,W) pixel mask -> (B,N) patch labels: a patch is anomalous if any pixel is."""
    pooled = F.max_pool2d(mask.float(), kernel_size=patch_size, stride=patch_size)
    return (pooled.flatten(1) > 0).float()


def build_optimizer(model: torch.nn.Module, cfg: ExperimentConfig):
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
    )
    # Cosine to min_lr, stepped once per epoch, no warm-up (the reference schedule).
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=cfg.train.epochs, eta_min=cfg.train.min_lr
    )
    return optimizer, scheduler


def training_attack(cfg: ExperimentConfig, precision: str) -> AttackConfig:
    return dataclasses.replace(cfg.train.attack, precision=precision)


def train_step(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    cfg: ExperimentConfig,
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device,
    precision: str = "fp32",
    forward_model: torch.nn.Module | None = None,
    step_seed: int = 0,
) -> dict[str, torch.Tensor]:
    """The four-term PatchGuard step: L(x,0) + L(PGD x,0) + L(x~,y~) + L(PGD x~,y~).

    `model` is the bare PatchGuard (attacked with frozen weights); `forward_model` is what the
    loss forward runs through (the DDP wrapper under Ray Train). The four batches go through
    one forward: per-term losses are means over their own batch, so their sum equals four
    times the loss of the concatenated batch, and one big forward is cheaper than four.
    """
    from pgray.attacks import attack
    from pgray.losses import patchguard_loss

    forward_model = forward_model or model
    x = batch["image"].to(device, non_blocking=True)
    xt = batch["pseudo_image"].to(device, non_blocking=True)
    yt = batch["pseudo_patch_labels"].to(device, non_blocking=True).float()
    y0 = torch.zeros_like(yt)
    parts_in = [(x, y0), (xt, yt)]
    if cfg.train.adversarial:
        attack_cfg = training_attack(cfg, precision)
        x_adv = attack(model, x, y0, attack_cfg, seed=step_seed)
        xt_adv = attack(model, xt, yt, attack_cfg, seed=step_seed + 1)
        parts_in = [(x, y0), (x_adv, y0), (xt, yt), (xt_adv, yt)]
    names = TERMS if cfg.train.adversarial else (TERMS[0], TERMS[2])
    images = torch.cat([p[0] for p in parts_in])
    labels = torch.cat([p[1] for p in parts_in])

    model.train()
    with model.capture_attention(cfg.loss.attention_layers) as maps, autocast(device, precision):
        logits = forward_model(images)
    logits = logits.float()
    maps = [m.float() for m in maps]
    loss, parts = patchguard_loss(logits, labels, maps, cfg.loss, model.num_prefix_tokens)
    total = loss * len(parts_in)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()

    # The regulariser is reported per forward (the mean over the four terms' batches).
    out = {"loss": total.detach()} | {
        k: v for k, v in parts.items() if k == "attn_reg" or k.startswith("attn_kl_")
    }
    with torch.no_grad():
        for name, chunk_logits, chunk_labels in zip(
            names, logits.detach().chunk(len(parts_in)), labels.chunk(len(parts_in))
        ):
            out[f"bce_{name}"] = F.binary_cross_entropy_with_logits(
                chunk_logits, chunk_labels, reduction="sum"
            ) / chunk_logits.shape[0]
    return out


def train_epoch(
    model: torch.nn.Module,
    loader: Iterable[dict[str, torch.Tensor]],
    cfg: ExperimentConfig,
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device,
    precision: str = "fp32",
    forward_model: torch.nn.Module | None = None,
    epoch: int = 0,
    rank: int = 0,
    on_step: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
) -> dict[str, float]:
    """Run one epoch; returns the mean of each reported term (one host sync per step)."""
    sums: dict[str, float] = {}
    steps = 0
    for i, batch in enumerate(loader):
        if cfg.train.max_steps_per_epoch is not None and i >= cfg.train.max_steps_per_epoch:
            break
        seed = (cfg.train.seed * 1_000_003 + epoch * 10_007 + rank * 101 + i) * 2
        out = train_step(
            model, batch, cfg, optimizer, device=device, precision=precision,
            forward_model=forward_model, step_seed=seed,
        )
        values = torch.stack(list(out.values())).tolist()
        for key, value in zip(out, values):
            sums[key] = sums.get(key, 0.0) + value
        steps += 1
        if on_step is not None:
            on_step(i, out)
    return {k: v / max(steps, 1) for k, v in sums.items()} | {"steps": float(steps)}


@dataclasses.dataclass
class EvalOutputs:
    """Scores of one setting over a split, kept for metrics and panels."""

    scores: np.ndarray  # (N,) image scores
    labels: np.ndarray  # (N,)
    maps: np.ndarray  # (N,H,W) float32 anomaly maps
    masks: np.ndarray  # (N,H,W) uint8 ground truth
    adv_images: dict[int, torch.Tensor] = dataclasses.field(default_factory=dict)  # picked only

    def metrics(self) -> dict[str, float]:
        from pgray.metrics import aupro, image_auroc, pixel_auroc

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
    from pgray.attacks import attack

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
