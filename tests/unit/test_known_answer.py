"""The attack suite against detectors whose exact worst case is known in closed form
(`pgray.detectors.known_answer`): its worst case over members, as `evaluate_suite` computes
it, must reach the exact worst-case image AUROC within 0.01 for linf, l2 and patch, and never
go below it (that would be an attack outside its budget). The members are read from
`pgray.attacks.suite`, so new members are covered."""

from __future__ import annotations

import pytest
import torch

from pgray.attacks.patch import patch_side
from pgray.attacks.suite import members
from pgray.config import AttackConfig, SuiteConfig
from pgray.core.scoring import evaluate_suite
from pgray.detectors.known_answer import (
    PixelLinearDetector,
    exact_adversarial,
    exact_worst_auroc,
    known_answer_cases,
    known_answer_split,
    pixel_weights,
)

CPU = torch.device("cpu")
SUITE = SuiteConfig(steps=20, restarts=1, square_queries=100, square_images=16)
CASES = {f"{c.threat}-{c.name}": c for c in known_answer_cases(size=32, n_per_class=20)}


def _images(split):
    x = torch.stack([split[i]["image"] for i in range(len(split))])
    return x, torch.tensor([s.label for s in split.samples])


@pytest.mark.parametrize("key", CASES)
def test_the_suite_reaches_the_exact_worst_case(key):
    case = CASES[key]
    clean, exact = exact_worst_auroc(case.detector, case.split, case.threat, case.eps)
    assert 0.0 < exact < 1.0 and clean - exact > 0.1, (clean, exact)  # not a vacuous check
    rows, _ = evaluate_suite(case.detector, case.split,
                             members(SUITE, AttackConfig(steps=10), case.eps,
                                     threat=case.threat),
                             batch_size=40, device=CPU, subset_size=SUITE.square_images,
                             progress=False)
    attained = rows[-1]["image_auroc"]
    assert rows[-1]["attack"] == "worst_case"
    assert exact - 1e-9 <= attained <= exact + 0.01, (key, clean, exact, attained)


@pytest.mark.parametrize("key", CASES)
def test_the_closed_form_is_within_budget_and_no_sampled_perturbation_beats_it(key):
    """The exact images respect the threat, and 64 random perturbations of the same budget
    (at the budget's edge, random signs or directions or places) never harm an image more."""
    case = CASES[key]
    x, labels = _images(case.split)
    signs = 1.0 - 2.0 * labels.float()
    adv = exact_adversarial(case.detector, x, labels, case.threat, case.eps)
    delta = adv - x
    assert adv.min() >= 0 and adv.max() <= 1
    if case.threat == "linf":
        assert delta.abs().max() <= case.eps / 255 + 1e-6
    elif case.threat == "l2":
        assert (delta.flatten(1).norm(dim=1) <= case.eps + 1e-4).all()
    else:
        side = patch_side(case.eps, 32, 32)
        changed = (delta != 0).any(dim=1).flatten(1).sum(dim=1)
        assert (changed <= side * side).all()
    best = case.detector.score(adv)[0] * signs
    gen = torch.Generator().manual_seed(1)
    for _ in range(64):
        other = _random_within(x, case.threat, case.eps, gen)
        assert (case.detector.score(other)[0] * signs <= best + 1e-5).all(), key


def _random_within(x, threat, eps, gen):
    if threat == "linf":
        signs = torch.randint(0, 2, x.shape, generator=gen).float() * 2 - 1
        return (x + eps / 255 * signs).clamp(0, 1)
    if threat == "l2":
        noise = torch.randn(x.shape, generator=gen)
        return (x + eps * noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).clamp(0, 1)
    side = patch_side(eps, *x.shape[-2:])
    out = x.clone()
    for i in range(len(x)):
        r, c = (int(v) for v in torch.randint(0, x.shape[-1] - side + 1, (2,), generator=gen))
        out[i, :, r:r + side, c:c + side] = torch.rand(3, side, side, generator=gen)
    return out


def test_l2_closed_forms_refuse_what_they_cannot_answer():
    split = known_answer_split(2, 2, 16)
    x, labels = _images(split)
    top4 = PixelLinearDetector(pixel_weights(16), top_k=4)
    with pytest.raises(ValueError, match="no closed form under l2 for the top-4 mean"):
        exact_adversarial(top4, x, labels, "l2", 0.1)
    maximum = PixelLinearDetector(pixel_weights(16), top_k=1)
    with pytest.raises(ValueError, match="leaves \\[0, 1\\]"):
        exact_adversarial(maximum, x, labels, "l2", 3.0)  # the whole budget on one pixel


def test_the_water_level_lowers_the_maximum_as_far_as_the_budget_allows():
    """Lowering the maximum under l2: the units above the level all end at it, and the budget
    is spent exactly."""
    case = CASES["l2-maximum"]
    x, labels = _images(case.split)
    anomalous = labels == 1
    adv = exact_adversarial(case.detector, x[anomalous], labels[anomalous], "l2", case.eps)
    norms = (adv - x[anomalous]).flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.full_like(norms, case.eps), rtol=1e-4, atol=1e-5)
    before, after = case.detector.units(x[anomalous]), case.detector.units(adv)
    top = after.max(dim=1, keepdim=True).values
    moved = (after - before).abs() > 1e-6
    assert (moved.sum(dim=1) >= 2).float().mean() > 0.5  # spread over several units
    torch.testing.assert_close(after[moved], top.expand_as(after)[moved], rtol=0, atol=1e-4)
