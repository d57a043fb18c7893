"""PatchGuard's training loss: per-patch BCE plus the attention-degree regulariser.

    L = (1/B) sum_b sum_p BCEWithLogits(s_bp, y_bp) + lambda * sum_l c_l * R(A_l)

R(A) is KL(uniform || attention row) over patch tokens. Decisions (see docs):
- Prefix tokens (CLS, registers) are dropped as rows and columns. Rows are *not* renormalised by
  default, as in the reference: the row then sums to slightly under 1, which adds -log(row sum)
  to each row's term and so also discourages attention to the prefix tokens. Uniform attention
  over the patch tokens gives exactly 0 either way; `renormalize=True` gives a true KL.
- reduction "mean" is the reference's plain element-wise mean over (B, heads, N, N), which is
  exactly the per-row KL divided by N; "row" is the per-row KL averaged over rows, heads, images.
- log(a + 1e-8) as the reference, so attention that underflows to 0 stays finite.
- loss.attention_ratio r replaces lambda by r * BCE / R per step, both detached
  (`attention_weight`): the term then equals r times the BCE whatever R's scale.
All terms are computed in float32 whatever the autocast dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pgray.config import LossConfig

LOG_EPS = 1e-8


def patch_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits summed over patches, averaged over images."""
    if logits.shape != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ")
    per_patch = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")
    return per_patch.sum(dim=1).mean()


def trades_kl(clean_logits: torch.Tensor, attacked_logits: torch.Tensor) -> torch.Tensor:
    """Per-patch binary KL(sigmoid(clean) || sigmoid(attacked)), summed over patches and
    averaged over images like `patch_bce`: 0 where the attacked scores equal the clean ones.

    The clean side is the target and is detached: the term pulls the attacked scores towards
    the clean ones and leaves the clean scores to their own label-true BCE. Left attached, it
    would also pull the clean scores towards the attacked ones, trading clean detection for
    agreement through a second path that beta = 0 (the reference) does not have.
    """
    if clean_logits.shape != attacked_logits.shape:
        raise ValueError(f"clean {tuple(clean_logits.shape)} and attacked"
                         f" {tuple(attacked_logits.shape)} logits differ")
    clean = clean_logits.detach().float()
    attacked = attacked_logits.float()
    p = torch.sigmoid(clean)
    # p (log p - log q) + (1 - p) (log(1 - p) - log(1 - q)), through logsigmoid for stability
    per_patch = (p * (F.logsigmoid(clean) - F.logsigmoid(attacked))
                 + (1 - p) * (F.logsigmoid(-clean) - F.logsigmoid(-attacked)))
    return per_patch.sum(dim=1).mean()


def attention_weight(loss_cfg: LossConfig, bce: torch.Tensor, reg: torch.Tensor
                     ) -> torch.Tensor | float:
    """The attention term's weight this step: loss.attention_lambda, or with
    loss.attention_ratio r, r * BCE / R from detached values (so the term is r x the BCE and
    its gradient is R's, scaled), 0 where R is 0 (nothing to weigh)."""
    ratio = loss_cfg.attention_ratio
    if ratio is None:
        return loss_cfg.attention_lambda
    reg = reg.detach()
    return torch.where(reg > 0, ratio * bce.detach() / torch.where(reg > 0, reg, 1.0), 0.0)


def uniform_kl(
    attn: torch.Tensor,
    num_prefix_tokens: int = 1,
    reduction: str = "mean",
    renormalize: bool = False,
) -> torch.Tensor:
    """KL(uniform 1/N || row) of one block's attention (B, heads, T, T), prefix tokens dropped."""
    a = attn.float()[..., num_prefix_tokens:, num_prefix_tokens:]
    n = a.shape[-1]
    if renormalize:
        a = a / a.sum(dim=-1, keepdim=True)
    # KL(u || a) element-wise: u * (log u - log a), with u = 1/N for every entry.
    terms = (1.0 / n) * (-math.log(n) - torch.log(a + LOG_EPS))
    if reduction == "mean":
        return terms.mean()
    if reduction == "row":
        return terms.sum(dim=-1).mean()
    raise ValueError(f"reduction must be 'mean' or 'row', got {reduction!r}")


def patchguard_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    maps: Sequence[torch.Tensor] | None,
    loss_cfg: LossConfig,
    num_prefix_tokens: int,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and its parts (detached tensors: bce, attn_reg, attn_lambda_eff (the
    attention term's weight), attn_kl_<layer>..., total).

    `maps` are the captured attention maps of `loss_cfg.attention_layers`, in that order; they
    may be None or empty only when the regulariser is off (lambda 0 or no layers).
    """
    bce = patch_bce(logits, labels)
    parts: dict[str, torch.Tensor] = {"bce": bce.detach()}
    active = loss_cfg.attention_lambda > 0 and len(loss_cfg.attention_layers) > 0
    if not active:
        parts["attn_reg"] = torch.zeros((), device=bce.device)
        parts["attn_lambda_eff"] = torch.zeros((), device=bce.device)
        parts["total"] = bce.detach()
        return bce, parts
    if not maps or len(maps) != len(loss_cfg.attention_layers):
        got = 0 if not maps else len(maps)
        raise ValueError(
            f"expected {len(loss_cfg.attention_layers)} attention maps for layers"
            f" {loss_cfg.attention_layers}, got {got}"
        )
    kls = [uniform_kl(a, num_prefix_tokens, loss_cfg.reduction) for a in maps]
    reg = torch.stack([w * kl for w, kl in zip(loss_cfg.attention_weights, kls)]).sum()
    weight = attention_weight(loss_cfg, bce, reg)
    total = bce + weight * reg
    for layer, kl in zip(loss_cfg.attention_layers, kls):
        parts[f"attn_kl_{layer}"] = kl.detach()
    parts["attn_reg"] = reg.detach()
    parts["attn_lambda_eff"] = torch.as_tensor(weight, dtype=torch.float32,
                                               device=bce.device).detach()
    parts["total"] = total.detach()
    return total, parts
