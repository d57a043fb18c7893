"""What attacks maximise, per image, written against the detector interface.

A detector seen by an attack maps images (B, 3, H, W) in [0, 1] to image scores (B,) and
localization units (B, U): PatchGuard's units are its patch logits, a pixel-level detector's are
its anomaly map flattened. Ground-truth masks become unit labels (B, U) in {0, 1}.

- mask (the reference objective): mean of the normal units minus mean of the anomalous units.
  It raises normal units and lowers anomalous ones: a localization attack; for a normal image
  it raises every unit, which also hurts detection.
- image_score: the image score signed by the image's label (+ for normal, - for anomalous):
  raising it is exactly what hurts detection. The sign comes from the image label wherever
  one is given: an anomalous image whose mask holds no anomalous unit (no mask at all, or a
  thin defect lost in a resize) is still pushed down, never up.
- surrogate lse: the same signed direction, but through a smooth maximum of the units
  (t * logsumexp(units / t)). The top-k mean passes gradient to k units only; the smooth
  maximum passes it to all of them. Iterates are still judged by the true image score. The
  temperature t is per image, `temperature` times the spread of that image's units at the
  clean image (`unit_spread`): a detector whose scores are multiplied by a constant and
  shifted gets the same smooth maximum, multiplied and shifted alike, so the same steps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pgray.errors import ConfigError

# (image scores (B,), units (B, U)), both float32 -> per-image objective (B,), maximised.
Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
KINDS = ("mask", "image_score")

_COUNT_EPS = 1e-8  # the reference's guard for images without normal or anomalous units


def detector_outputs(model: nn.Module, x: torch.Tensor
                     ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(image scores, units) of `model` on `x`, in float32.

    A model with `score(x) -> (scores, units)` is asked directly (the detector interface);
    a patch-logit model (PatchGuard, and any module with `forward` -> units and
    `image_scores(units)`) is asked for its units, then their image score. A model with
    neither gives units only (scores None): only the mask objective can attack it.
    """
    score = getattr(model, "score", None)
    if callable(score):
        scores, units = score(x)
        return scores.float(), units.float()
    units = model(x).float()
    image_scores = getattr(model, "image_scores", None)
    return (image_scores(units).float() if callable(image_scores) else None), units


def _need_scores(scores: torch.Tensor | None) -> torch.Tensor:
    if scores is None:
        raise ConfigError("objective image_score needs a detector with image_scores(units) or"
                          " score(x)")
    return scores


def mask_to_patch_labels(mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B,1,H,W) pixel mask -> (B,N) patch labels: a patch is anomalous if any pixel is."""
    pooled = F.max_pool2d(mask.float(), kernel_size=patch_size, stride=patch_size)
    return (pooled.flatten(1) > 0).float()


def unit_labels(model: nn.Module, masks: torch.Tensor) -> torch.Tensor:
    """Ground-truth masks (B, 1, H, W) as the model's unit labels (B, U)."""
    labels = getattr(model, "unit_labels", None)
    if callable(labels):
        return labels(masks).float()
    return mask_to_patch_labels(masks, int(model.patch_size))


def mask_weights(labels: torch.Tensor) -> torch.Tensor:
    """Per-unit weights w with sum(units * w) = mean(normal units) - mean(anomalous units).

    Folding both means into one weight tensor makes the objective a single multiply-sum in the
    attack loop instead of four reductions per step.
    """
    anomalous = labels.float()
    normal = 1.0 - anomalous
    n_normal = normal.sum(dim=1, keepdim=True) + _COUNT_EPS
    n_anomalous = anomalous.sum(dim=1, keepdim=True) + _COUNT_EPS
    return normal / n_normal - anomalous / n_anomalous


def image_signs(labels: torch.Tensor, image_labels: torch.Tensor | None = None
                ) -> torch.Tensor:
    """+1 for normal images (score pushed up), -1 for anomalous ones: by `image_labels` (B,)
    where given, else by whether any unit is anomalous (pseudo-anomalies in training, whose
    labels are their masks)."""
    if image_labels is not None:
        anomalous = image_labels.to(labels.device).reshape(-1) > 0.5
        return 1.0 - 2.0 * anomalous.float()
    return 1.0 - 2.0 * (labels > 0.5).any(dim=1).float()


def mask_objective(units: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean unit of the normal part minus mean unit of the anomalous part, per image (B,)."""
    _check_shapes(units, labels)
    return (units.float() * mask_weights(labels)).sum(dim=1)


def image_score_objective(scores: torch.Tensor, labels: torch.Tensor,
                          image_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Image scores (B,) signed so that maximising them hurts detection."""
    return _need_scores(scores).float() * image_signs(labels, image_labels)


def _check_shapes(units: torch.Tensor, labels: torch.Tensor) -> None:
    if units.shape != labels.shape:
        raise ValueError(f"unit labels {tuple(labels.shape)} do not match the detector's units"
                         f" {tuple(units.shape)}")


def unit_spread(units: torch.Tensor) -> torch.Tensor:
    """Per image, the standard deviation of its units (B,): the unit in which the smooth
    maximum's temperature is measured. An image whose units are all equal (or not finite)
    takes the mean spread of the others, and 1 where no image has any, so the temperature
    stays positive and scales with the detector wherever the detector shows a scale."""
    return positive_scale(units.detach().float().std(dim=1, unbiased=False))


def positive_scale(values: torch.Tensor) -> torch.Tensor:
    """Per-image scales (B,) made usable: where a value is not positive and finite (a flat
    image, a detector without gradients) the mean of the usable ones stands in, 1 where there
    is none. A scale read off the detector itself moves with the detector's own scale."""
    usable = torch.isfinite(values) & (values > 0)
    fallback = values[usable].mean() if bool(usable.any()) else values.new_tensor(1.0)
    return torch.where(usable, values, fallback)


def make_objective(labels: torch.Tensor, kind: str, *, surrogate: str = "none",
                   temperature: float = 1.0, image_labels: torch.Tensor | None = None,
                   spread: torch.Tensor | None = None) -> Objective:
    """The objective as a closure over constants computed once (weights or signs).

    `spread` (B,): the lse surrogate's per-image unit of temperature (`unit_spread` of the
    clean units); None measures the temperature in the units' own scale (not scale-free)."""
    if kind == "mask":
        weights = mask_weights(labels)

        def mask(scores: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
            _check_shapes(units, weights)
            return (units * weights).sum(dim=1)

        return mask
    if kind != "image_score":
        raise ConfigError(f"objective: {kind!r} is not one of {list(KINDS)}")
    signs = image_signs(labels, image_labels)
    if surrogate == "lse":
        per_image = temperature * (torch.ones_like(signs) if spread is None
                                   else spread.to(signs.device).float())
        column = per_image.unsqueeze(1)

        def smooth_max(scores: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
            return per_image * torch.logsumexp(units / column, dim=1) * signs

        return smooth_max

    def image_score(scores: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        return _need_scores(scores) * signs

    return image_score
