"""One PatchGuard training step and one epoch (docs/method.md, "Loss" and "Training step")."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from pgray.config import AttackConfig, ExperimentConfig
from pgray.core.device import autocast

TERMS = ("clean_normal", "adv_normal", "clean_pseudo", "adv_pseudo")


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
    from pgray.attacks.pgd import attack
    from pgray.core.losses import patchguard_loss

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
