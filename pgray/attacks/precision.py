"""The precision attack gradients run in: fp32, unless bf16 is shown on the same model to give
a robust image AUROC within BF16_TOLERANCE of fp32's.

bf16 halves an attack's cost on a GPU, but its gradients are coarser: a model whose scores sit
close together can be attacked less well, which overstates robustness. The only earlier check
ran on a model at chance, where nothing can be seen. So `precision: auto` (and an explicit
`bf16`) asks once per model: one detection attack on a class-balanced subset, in fp32 and in
bf16; bf16 is used only when the two robust AUROCs agree. Rows record the precision used and
the gap measured.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

BF16_TOLERANCE = 0.01
CHECK_IMAGES = 64
# per model: (precision, gap) of its check; a new model object is asked again
_CHECKED: weakref.WeakKeyDictionary[nn.Module, tuple[str, float]] = weakref.WeakKeyDictionary()


def attack_precision(model: nn.Module, dataset, attack_cfg, *, wanted: str,
                     device: torch.device, batch_size: int) -> tuple[str, float | None]:
    """('bf16' or 'fp32', the robust-AUROC gap of the check, or None where nothing was
    checked: fp32 asked for, or no bf16 on this device)."""
    import dataclasses

    from pgray.attacks.suite import balanced_subset
    from pgray.core.device import resolve_precision
    from pgray.core.scoring import score_batches

    if resolve_precision(wanted, device) != "bf16":
        return "fp32", None
    if model in _CHECKED:
        return _CHECKED[model]
    subset = sorted(balanced_subset([s.label for s in dataset.samples], CHECK_IMAGES))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, subset),
                                         batch_size=batch_size)
    aurocs = [score_batches(model, loader, dataclasses.replace(attack_cfg, precision=p),
                            device=device).metrics()["image_auroc"] for p in ("fp32", "bf16")]
    gap = abs(aurocs[1] - aurocs[0])
    _CHECKED[model] = ("bf16" if gap <= BF16_TOLERANCE else "fp32", gap)
    return _CHECKED[model]
