"""What the attacks maximise, per image: the reference mask objective and the signed image
score. Each takes patch logits (B, N) in float32 and patch labels (B, N) in {0, 1}."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pgray.errors import ConfigError

# Patch logits (B, N) float32 -> per-image objective (B,), maximised by the attack.
Objective = Callable[[torch.Tensor], torch.Tensor]

_COUNT_EPS = 1e-8  # the reference's guard for images without normal or anomalous patches


def _mask_weights(patch_labels: torch.Tensor) -> torch.Tensor:
    """Per-patch weights w with sum(logits * w) = mean(normal logits) - mean(anomalous logits).

    Folding both means into one weight tensor makes the objective a single multiply-sum in the
    attack loop instead of four reductions per step.
    """
    anomalous = patch_labels.float()
    normal = 1.0 - anomalous
    n_normal = normal.sum(dim=1, keepdim=True) + _COUNT_EPS
    n_anomalous = anomalous.sum(dim=1, keepdim=True) + _COUNT_EPS
    return normal / n_normal - anomalous / n_anomalous


def mask_objective(logits: torch.Tensor, patch_labels: torch.Tensor) -> torch.Tensor:
    """Mean logit of normal patches minus mean logit of anomalous patches, per image (B,).

    Maximising it raises normal patches and lowers anomalous ones: both hurt localization, and
    for a normal image (all labels 0) it raises every patch, which hurts detection.
    """
    _check_shapes(logits, patch_labels)
    return (logits.float() * _mask_weights(patch_labels)).sum(dim=1)


def _image_signs(patch_labels: torch.Tensor) -> torch.Tensor:
    """+1 for normal images (score pushed up), -1 for images with any anomalous patch."""
    anomalous = (patch_labels > 0.5).any(dim=1)
    return 1.0 - 2.0 * anomalous.float()


def image_score_objective(scores: torch.Tensor, patch_labels: torch.Tensor) -> torch.Tensor:
    """Image scores (B,) signed so that maximising them hurts detection."""
    return scores.float() * _image_signs(patch_labels)


def _check_shapes(logits: torch.Tensor, patch_labels: torch.Tensor) -> None:
    if logits.shape != patch_labels.shape:
        raise ValueError(
            f"patch labels {tuple(patch_labels.shape)} do not match the model's patch logits"
            f" {tuple(logits.shape)}"
        )


def make_objective(model: nn.Module, patch_labels: torch.Tensor, kind: str) -> Objective:
    """The objective as a closure over constants computed once (weights or signs)."""
    if kind == "mask":
        weights = _mask_weights(patch_labels)

        def mask(logits: torch.Tensor) -> torch.Tensor:
            _check_shapes(logits, weights)
            return (logits * weights).sum(dim=1)

        return mask
    if kind == "image_score":
        image_scores = getattr(model, "image_scores", None)
        if not callable(image_scores):
            raise ConfigError(
                f"objective: image_score needs a model with image_scores(logits);"
                f" {type(model).__name__} has none"
            )
        signs = _image_signs(patch_labels)

        def image_score(logits: torch.Tensor) -> torch.Tensor:
            _check_shapes(logits, patch_labels)
            return image_scores(logits).float() * signs

        return image_score
    raise ConfigError(f"objective: {kind!r} is not one of ['mask', 'image_score']")
