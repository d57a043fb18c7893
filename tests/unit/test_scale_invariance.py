"""No attack's strength may depend on the scale of a detector's scores: AUROC does not change
when every score is multiplied by a positive constant or shifted, so neither may a robust
number. A tiny PatchGuard (trained for a few seconds), the same model with its score head (the discriminator's final
Linear) multiplied by 25, and the same model with the head's bias shifted by -40 (every
logit 40 lower: a detector confident that everything is normal) must give the same AUROCs
under every member of the adaptive suite, its large-budget check and its worst case, for
every threat. The members are read from `pgray.attacks.suite`, so new members are covered."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from torch import nn

from pgray.attacks.objectives import unit_labels
from pgray.attacks.patch import patch_area, patch_side
from pgray.attacks.suite import large_eps_check, members
from pgray.attacks.torchattacks_adapter import torchattacks_attack
from pgray.config import AttackConfig, SuiteConfig
from pgray.core.model import PatchGuard
from pgray.core.scoring import evaluate_suite

CPU = torch.device("cpu")
SUITE = SuiteConfig(steps=5, restarts=1, square_queries=20, square_images=0, check_steps=5)
PROTOCOL = AttackConfig(steps=3)
# Budgets where the base model's worst case stays above 0: a suite that stalls shows.
BUDGETS = {"linf": 1.0, "l2": 0.1, "patch": 0.005}
HEADS = {"scaled x25": (25.0, 0.0), "shifted -40": (1.0, -40.0)}
# 6 normal and 6 anomalous test images: one swapped pair moves image AUROC by 1/36 = 0.028;
# pixel AUROC pools 12 x 32 x 32 pixels, so it is nearly continuous.
TOL = (0.02, 0.002)  # image, pixel


@pytest.fixture(scope="module")
def model(trained) -> PatchGuard:
    """The session's tiny PatchGuard trained clean (tests/unit/conftest.py): its maps find the
    defects, so AUROCs are neither 0 nor 1 before the attacks."""
    return trained


def with_head(model: PatchGuard, factor: float, shift: float) -> PatchGuard:
    """A copy whose logits are factor * logits + shift: the same ranking of every image and
    every pixel, scores on another scale."""
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.disc.head.weight.mul_(factor)
        changed.disc.head.bias.mul_(factor).add_(shift)
    return changed


def suite_runs(threat: str) -> list[list]:
    """The suite's members at the threat's budget (one run: its rows include the worst case)
    and its large-budget check (a run of its own: another budget)."""
    runs = [members(SUITE, PROTOCOL, BUDGETS[threat], threat=threat)]
    # the large-budget check, for every threat it is defined for (linf, or each threat once
    # large_eps_check takes one)
    if "threat" in inspect.signature(large_eps_check).parameters:
        runs.append([large_eps_check(SUITE, PROTOCOL, threat=threat)])
    elif threat == "linf":
        runs.append([large_eps_check(SUITE, PROTOCOL)])
    return runs


def aurocs(model: nn.Module, dataset, threat: str) -> dict[str, tuple[float, float]]:
    """(image AUROC, pixel AUROC) of every row of the threat's suite runs, by setting."""
    out = {}
    for run in suite_runs(threat):
        rows, _ = evaluate_suite(model, dataset, run, batch_size=12, device=CPU,
                                 progress=False)
        for row in rows:
            out[f"{row['attack']} {row['setting']}"] = (row["image_auroc"], row["pixel_auroc"])
    return out


@pytest.fixture(scope="module")
def base(model, test_split) -> dict[str, dict[str, tuple[float, float]]]:
    return {threat: aurocs(model, test_split, threat) for threat in BUDGETS}


def test_the_base_worst_case_is_informative(base):
    """Above 0 for every threat: a stalled attack on a copy would show as a higher number."""
    for threat, rows in base.items():
        worst = [v for k, v in rows.items()
                 if k.startswith("worst_case") and k.endswith(f"eps{BUDGETS[threat]:g}")]
        assert len(worst) == 1, rows
        assert 0.05 < worst[0][0] < 0.95, (threat, rows)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("threat", list(BUDGETS))
def test_every_member_and_the_worst_case_ignore_the_score_scale(model, test_split, base,
                                                                threat, head):
    changed = aurocs(with_head(model, *HEADS[head]), test_split, threat)
    assert changed.keys() == base[threat].keys()
    moved = {name: (before, changed[name]) for name, before in base[threat].items()
             if any(abs(a - b) > tol for a, b, tol in zip(before, changed[name], TOL))}
    assert not moved, f"{threat}, {head}: (image, pixel) AUROC before -> after: {moved}"


def _batch(dataset, n: int = 12):
    return next(iter(torch.utils.data.DataLoader(dataset, batch_size=n)))


def test_an_l2_step_has_its_full_length_on_a_confident_detector(model, test_split):
    """One PGDL2 step from the clean image moves every image by alpha, whether or not the
    detector is confident: the cross-entropy the step follows never saturates (the loss
    averaged over the batch, then divided by the gradient norm + 1e-10, as PGDL2 does)."""
    batch = _batch(test_split)
    labels = unit_labels(model, batch["mask"])
    cfg = AttackConfig(threat="l2", library="torchattacks", eps=1.0, alpha=0.25, steps=1,
                       objective="image_score")
    for factor, shift in [(1.0, 0.0), *HEADS.values(), (1.0, -200.0)]:
        detector = with_head(model, factor, shift)
        adv = torchattacks_attack(detector, batch["image"], labels, cfg,
                                  image_labels=batch["label"])
        moved = (adv - batch["image"]).flatten(1).norm(dim=1)
        torch.testing.assert_close(moved, torch.full_like(moved, 0.25), rtol=0, atol=0.01,
                                   msg=f"head x{factor} {shift:+g}")


def test_square_keeps_querying_a_detector_with_huge_scores(model, test_split):
    """Square follows a margin whose class-0 logit sits far above the objective; scores of
    1e7 (a squared distance, say) must not turn it negative and stop the attack."""
    batch = _batch(test_split)
    labels = unit_labels(model, batch["mask"])
    cfg = AttackConfig(method="square", library="torchattacks", objective="image_score",
                       eps=4.0, steps=30, random_start=True)
    advs = [torchattacks_attack(with_head(model, factor, 0.0), batch["image"], labels, cfg,
                                seed=5, image_labels=batch["label"])
            for factor in (1.0, 1e7)]
    assert (advs[0] != batch["image"]).any()
    torch.testing.assert_close(advs[1], advs[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize(("eps", "size", "side"), [
    (0.02, 32, 4),  # 20.5 px asked: 16 is nearer than 25 (rounding the side gave 5)
    (0.01, 32, 3),  # 10.2 px: 9, not 16
    (0.05, 32, 7),  # 51.2 px: 49, not 64
    (0.02, 224, 32),  # 1003.5 px: 1024 is nearer than 961
    (0.0001, 32, 1),  # never below one pixel
    (0.99, 32, 32),  # never beyond the image
])
def test_the_patch_side_is_the_one_nearest_in_area(eps, size, side):
    assert patch_side(eps, size, size) == side
    assert patch_area(eps, size, size) == side * side / (size * size)
    target = eps * size * size
    for other in range(1, size + 1):
        assert abs(side * side - target) <= abs(other * other - target)
