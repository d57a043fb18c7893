"""Columns of result rows beside the metrics (docs/INTERFACES.md, "Results files"): the
threat's budget as it lands on the model's input, the precision attacks ran in and why
(`members_as_run`), the operating points, what a worst case was the worst of, and that worst
case split by the side attacked.

A budget means different things at different input sizes (an L2 norm spreads over more pixels
at 256 px than at 224; a patch side is rounded to whole pixels), so attacked rows carry
`input_size` and what their eps really was there: `l2_per_pixel` = eps / sqrt(3 H W), the RMS
change per pixel value on [0, 1], and `patch_area`, the fraction of the image the square
really covers.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np
import torch

from pgray.attacks.patch import patch_side
from pgray.attacks.precision import member_precisions
from pgray.core.metrics import image_auroc, tpr_at_fpr

OPERATING_POINTS = {"tpr_at_fpr1": 0.01, "tpr_at_fpr5": 0.05}


def threat_columns(threat: str, eps: float, height: int, width: int) -> dict[str, Any]:
    """`input_size` (H) and, on l2 rows, `l2_per_pixel`; on patch rows, `patch_area`."""
    out: dict[str, Any] = {"input_size": int(height)}
    if threat == "l2":
        out["l2_per_pixel"] = float(eps) / math.sqrt(3 * height * width)
    elif threat == "patch":
        out["patch_area"] = patch_side(eps, height, width) ** 2 / (height * width)
    return out


def _both_classes(labels: np.ndarray) -> bool:
    return len(np.unique(labels)) == 2


def operating_points(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """TPR at 1 % and at 5 % FPR (`pgray.core.metrics.tpr_at_fpr`); NaN with one class."""
    if not _both_classes(labels):
        return dict.fromkeys(OPERATING_POINTS, float("nan"))
    return {k: tpr_at_fpr(scores, labels, fpr) for k, fpr in OPERATING_POINTS.items()}


def attacked_sides(worst: np.ndarray, clean: np.ndarray, labels: np.ndarray
                   ) -> dict[str, float]:
    """Image AUROC when only one side is attacked, from the per-image picks (no new attack):
    `image_auroc_attack_normal` takes the worst-case scores of normal images and the clean
    scores of anomalous ones, `image_auroc_attack_anomalous` the converse."""
    if not _both_classes(labels):
        return {"image_auroc_attack_normal": float("nan"),
                "image_auroc_attack_anomalous": float("nan")}
    anomalous = labels > 0.5
    return {"image_auroc_attack_normal": image_auroc(np.where(anomalous, clean, worst), labels),
            "image_auroc_attack_anomalous": image_auroc(np.where(anomalous, worst, clean),
                                                        labels)}


def suite_columns(name: str, members: list) -> dict[str, Any]:
    """`suite` and `suite_members`, a JSON list of each member's name, method, library,
    objective, steps, restarts and queries (`pgray.attacks.suite.Member.describe`)."""
    return {"suite": name, "suite_members": json.dumps([m.describe() for m in members])}


def input_size(dataset) -> tuple[int, int]:
    """(H, W) of the split's images: the model's input size, where budgets are measured."""
    height, width = dataset[0]["image"].shape[-2:]
    return int(height), int(width)


def members_as_run(model, dataset, suite_members: list, *, device: torch.device,
                    batch_size: int) -> tuple[list, dict[str, Any]]:
    """The members at the split's input size, each in the precision decided for its family
    at this threat and eps (`pgray.attacks.precision`), and {member key: the columns saying
    so}: `precision`, `precision_reason`, `bf16_gap`, `input_size` and the threat's budget
    per pixel or area."""
    height, width = input_size(dataset)
    sized = [m.at_input(height, width) for m in suite_members]
    choices = member_precisions(model, dataset, sized, device=device, batch_size=batch_size)
    out, columns = [], {}
    for m in sized:
        choice = choices[m.family]
        m = dataclasses.replace(m, cfg=dataclasses.replace(m.cfg, precision=choice.precision))
        out.append(m)
        columns[m.key] = ({"precision": choice.precision, "precision_reason": choice.reason,
                           "bf16_gap": choice.gap}
                          | threat_columns(m.cfg.threat, m.cfg.eps, height, width))
    return out, columns
