"""The precision attack gradients run in: fp32, unless bf16 is shown, on the same model, at
the same threat and budget, for the same family of attacks, to give a robust image AUROC
within BF16_TOLERANCE of fp32's.

bf16 halves an attack's cost on a GPU, but its gradients are coarser: a model whose scores sit
close together can be attacked less well, which overstates robustness, and how much depends on
the budget and on the attack (a step-size rule, a random search). So an attack asked to run in
bf16 (`precision: bf16`, or `auto` where the device has it) is probed per (model, threat,
eps, member family): the family's detection member runs on a seeded, random, class-balanced
subset once in fp32 and once in bf16, both results scored in fp32 as the suite scores its
candidates, and bf16 is kept only when the two image AUROCs agree. The decision is made
afresh for every suite run (nothing is carried over from another budget, threat or job), and
every row says what decided it (`PrecisionChoice.reason`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pgray.attacks.objectives import detector_outputs, unit_labels
from pgray.attacks.pgd import attack
from pgray.attacks.suite import DETECTION, Member, balanced_subset
from pgray.core.device import resolve_precision, strict_fp32
from pgray.core.metrics import image_auroc

BF16_TOLERANCE = 0.01
PROBE_IMAGES = 64


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # fp32 | bf16
    reason: str  # the row's `precision_reason`
    gap: float | None = None  # the probe's |AUROC(bf16) - AUROC(fp32)|; None: no probe


def without_probe(wanted: str, device: torch.device) -> PrecisionChoice | None:
    """The choice where no probe is needed (fp32 asked, or no bf16 here), else None."""
    if wanted == "fp32":
        return PrecisionChoice("fp32", "fp32 asked")
    if resolve_precision(wanted, device) != "bf16":
        return PrecisionChoice("fp32", f"no bf16 on {device.type}")
    return None


def from_probe(fp32_auroc: float, bf16_auroc: float, where: str) -> PrecisionChoice:
    """bf16 where the probe's two image AUROCs agree within BF16_TOLERANCE (a NaN AUROC, a
    subset of one class, agrees with nothing)."""
    gap = abs(bf16_auroc - fp32_auroc)
    if gap <= BF16_TOLERANCE:
        return PrecisionChoice("bf16", f"bf16 probe gap {gap:.4f} <= {BF16_TOLERANCE:g}"
                                       f" ({where})", gap)
    return PrecisionChoice("fp32", f"bf16 probe gap {gap:.4f} > {BF16_TOLERANCE:g}, fp32 used"
                                   f" ({where})", None if np.isnan(gap) else gap)


def _where(member: Member) -> str:
    return f"{member.cfg.threat} eps {member.cfg.eps:g}, {member.family}"


def probe_aurocs(model: nn.Module, dataset, member: Member, *, device: torch.device,
                 batch_size: int, seed: int = 0) -> tuple[float, float]:
    """Image AUROC of `member`'s attack on the probe subset, run in fp32 and in bf16, the
    adversarial images scored in fp32 both times."""
    labels = [s.label for s in dataset.samples]
    subset = sorted(balanced_subset(labels, PROBE_IMAGES))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, subset),
                                         batch_size=batch_size)
    aurocs = []
    for precision in ("fp32", "bf16"):
        cfg = dataclasses.replace(member.cfg, precision=precision)
        scores, truth = [], []
        for i, batch in enumerate(loader):
            x, images = batch["image"].to(device), batch["label"].to(device)
            units = unit_labels(model, batch.get("unit_mask", batch["mask"]).to(device))
            with strict_fp32(device, precision):
                adv = attack(model, x, units, cfg, seed=seed + i, image_labels=images)
            with torch.no_grad():
                scores.append(detector_outputs(model, adv)[0].float().cpu())
            truth.append(images.cpu())
        aurocs.append(image_auroc(torch.cat(scores), torch.cat(truth)))
    return aurocs[0], aurocs[1]


def _probed(members: list[Member]) -> Member:
    """The member a family is probed with: its first detection attack, else its first."""
    return next((m for m in members if m.aims_at == DETECTION), members[0])


def member_precisions(model: nn.Module, dataset, suite_members: list[Member], *,
                      device: torch.device, batch_size: int) -> dict[str, PrecisionChoice]:
    """family -> the precision its members run in at this threat and eps, and why (each
    member's own `cfg.precision` is what was asked; members already at their input size)."""
    families: dict[str, list[Member]] = {}
    for m in suite_members:
        families.setdefault(m.family, []).append(m)
    out = {}
    labels = {s.label for s in dataset.samples}
    for family, mine in families.items():
        probe = _probed(mine)
        fixed = without_probe(probe.cfg.precision, device)
        if fixed is None and len(labels) < 2:
            fixed = PrecisionChoice("fp32", "bf16 not probed: the split has one class")
        out[family] = fixed or from_probe(*probe_aurocs(model, dataset, probe, device=device,
                                                        batch_size=batch_size),
                                          _where(probe))
    return out
