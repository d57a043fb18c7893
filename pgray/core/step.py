"""One PatchGuard training step and one epoch (docs/method.md, "Loss" and "Training step")."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from pgray.config import AttackConfig, ExperimentConfig
from pgray.config.passes import TRAIN_ATTACKS, passes_per_image
from pgray.core.device import autocast
from pgray.core.losses import patchguard_loss, trades_kl

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
    """The attack of the training step: train.attack, reshaped by train.attack_method."""
    preset = dict(TRAIN_ATTACKS[cfg.train.attack_method])
    base = cfg.train.attack
    if "alpha_eps" in preset:
        preset["alpha"] = preset.pop("alpha_eps") * base.eps
    return dataclasses.replace(base, precision=precision, restarts=1, keep_best=False,
                               **preset) if preset else dataclasses.replace(
        base, precision=precision)


# The objective draws of train.image_score_share come from their own stream of the step seed,
# so they are independent of the attacks' random starts (seeded by the step seed itself).
OBJECTIVE_STREAM = 0x0B7EC7


def batch_objectives(cfg: ExperimentConfig, step_seed: int) -> tuple[str, str]:
    """The objective of each attacked batch (normal, pseudo-anomalous) of the step seeded
    `step_seed`: train.attack.objective, or with train.image_score_share p, image_score with
    probability p and mask otherwise (the same draws whenever the step is run again)."""
    share = cfg.train.image_score_share
    if share is None:
        return (cfg.train.attack.objective,) * 2
    draws = np.random.default_rng([step_seed % 2**63, OBJECTIVE_STREAM]).random(2)
    return tuple("image_score" if draw < share else "mask" for draw in draws)


def _step_batches(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], cfg: ExperimentConfig,
    device: torch.device, precision: str, step_seed: int,
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], tuple[str, ...]]:
    """The (images, patch labels) of the step's terms in TERMS order (the clean ones alone
    without train.adversarial) and the objective each attacked batch used."""
    from pgray.attacks.pgd import attack

    x = batch["image"].to(device, non_blocking=True)
    xt = batch["pseudo_image"].to(device, non_blocking=True)
    yt = batch["pseudo_patch_labels"].to(device, non_blocking=True).float()
    y0 = torch.zeros_like(yt)
    if not cfg.train.adversarial:
        return [(x, y0), (xt, yt)], ()
    attack_cfg = training_attack(cfg, precision)
    objectives = batch_objectives(cfg, step_seed)
    normal_cfg, pseudo_cfg = (attack_cfg if objective == attack_cfg.objective
                              else dataclasses.replace(attack_cfg, objective=objective)
                              for objective in objectives)
    x_adv = attack(model, x, y0, normal_cfg, seed=step_seed)
    xt_adv = attack(model, xt, yt, pseudo_cfg, seed=step_seed + 1)
    return [(x, y0), (x_adv, y0), (xt, yt), (xt_adv, yt)], objectives


def _step_loss(
    logits: torch.Tensor, labels: torch.Tensor, maps: list[torch.Tensor],
    cfg: ExperimentConfig, n_terms: int, num_prefix_tokens: int,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The step's total loss (the sum of its terms' losses, TRADES added) and its reported
    parts. With four terms the logits are clean normal, attacked normal, clean pseudo,
    attacked pseudo (TERMS)."""
    loss, parts = patchguard_loss(logits, labels, maps, cfg.loss, num_prefix_tokens)
    total = loss * n_terms
    trades = torch.zeros((), device=logits.device)
    if cfg.train.trades_beta > 0:
        clean_n, adv_n, clean_p, adv_p = logits.chunk(n_terms)
        trades = cfg.train.trades_beta * (trades_kl(clean_n, adv_n) + trades_kl(clean_p, adv_p))
        total = total + trades
    total_value = total.detach()
    # The regulariser is reported per forward (the mean over the four terms' batches); its
    # share of the loss counts it once per term, as the total does.
    attention = n_terms * parts["attn_lambda_eff"] * parts["attn_reg"]
    out = {"loss": total_value} | {
        k: v for k, v in parts.items() if k in ("attn_reg", "attn_lambda_eff")
        or k.startswith("attn_kl_")
    } | {
        "attn_share": torch.where(total_value > 0, attention / total_value, 0.0),
        "trades": trades.detach(),
    }
    return total, out


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
    """The four-term PatchGuard step: L(x,0) + L(PGD x,0) + L(x~,y~) + L(PGD x~,y~), plus
    train.trades_beta x the clean-to-attacked KL of both pairs.

    `model` is the bare PatchGuard (attacked with frozen weights); `forward_model` is what the
    loss forward runs through (the DDP wrapper under Ray Train). The four batches go through
    one forward: per-term losses are means over their own batch, so their sum equals four
    times the loss of the concatenated batch, and one big forward is cheaper than four.
    """
    forward_model = forward_model or model
    parts_in, objectives = _step_batches(model, batch, cfg, device, precision, step_seed)
    names = TERMS if cfg.train.adversarial else (TERMS[0], TERMS[2])
    images = torch.cat([p[0] for p in parts_in])
    labels = torch.cat([p[1] for p in parts_in])

    model.train()
    with model.capture_attention(cfg.loss.attention_layers) as maps, autocast(device, precision):
        logits = forward_model(images)
    logits = logits.float()
    maps = [m.float() for m in maps]
    total, out = _step_loss(logits, labels, maps, cfg, len(parts_in), model.num_prefix_tokens)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()

    out["image_score_batches"] = torch.tensor(
        sum(o == "image_score" for o in objectives) / max(len(objectives), 1), device=device)
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
    return {k: v / max(steps, 1) for k, v in sums.items()} | {
        "steps": float(steps), "passes_per_image": passes_per_image(cfg)}
