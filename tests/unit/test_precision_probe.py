"""bf16 is decided per (model, threat, eps, member family), measured as the suite scores (the
attack in bf16, its images scored in fp32), and every attacked row says what decided it. The
probe's and the black-box members' subsets are seeded, random and class-balanced.

The CPU has no `auto` bf16, but an explicit `bf16` runs under CPU autocast, so the probe runs
here for real; `Bf16MaskedDetector` loses its gradients under autocast only."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from masked_detectors import Bf16MaskedDetector, StepDetector

from pgray.attacks.precision import (
    BF16_TOLERANCE,
    from_probe,
    member_precisions,
    probe_aurocs,
    without_probe,
)
from pgray.attacks.suite import Member, balanced_subset, members
from pgray.config import AttackConfig, SuiteConfig
from pgray.core.scoring import evaluate_suite

CPU = torch.device("cpu")
TINY = SuiteConfig(steps=3, restarts=1, square_queries=10, square_images=8)
BF16 = AttackConfig(steps=3, precision="bf16")


def _choices(model, dataset, eps, threat="linf"):
    sized = [m.at_input(32, 32) for m in members(TINY, BF16, eps, threat=threat)]
    return member_precisions(model, dataset, sized, device=CPU, batch_size=24)


def test_the_decision_from_two_aurocs():
    keep = from_probe(0.800, 0.805, "linf eps 8, pgd (pgray)")
    assert keep.precision == "bf16" and keep.gap == pytest.approx(0.005)
    assert keep.reason == "bf16 probe gap 0.0050 <= 0.01 (linf eps 8, pgd (pgray))"
    drop = from_probe(0.10, 0.30, "l2 eps 1, apgd (torchattacks)")
    assert drop.precision == "fp32" and drop.gap == pytest.approx(0.2)
    assert drop.reason == "bf16 probe gap 0.2000 > 0.01, fp32 used (l2 eps 1, apgd (torchattacks))"
    assert from_probe(0.5, float("nan"), "x").precision == "fp32"  # NaN agrees with nothing
    assert from_probe(0.5, 0.509, "x").precision == "bf16" and BF16_TOLERANCE == 0.01
    assert without_probe("fp32", CPU).reason == "fp32 asked"
    assert without_probe("auto", CPU).reason == "no bf16 on cpu"
    assert without_probe("bf16", CPU) is None  # asked for explicitly: probed


def test_each_member_family_is_decided_for_itself(trained, test_split):
    """Gradients vanish under bf16 on this detector: the gradient families fall back to
    fp32, the black-box Square (scores only) keeps bf16. Before, one probe (det_topk)
    decided for every member."""
    choices = _choices(Bf16MaskedDetector(trained), test_split, 8.0)
    assert set(choices) == {"pgd (pgray)", "apgd (torchattacks)", "square (torchattacks)"}
    for family in ("pgd (pgray)", "apgd (torchattacks)"):
        assert choices[family].precision == "fp32", choices[family]
        assert choices[family].reason.endswith(f", fp32 used (linf eps 8, {family})")
    square = choices["square (torchattacks)"]
    assert square.precision == "bf16" and square.gap <= BF16_TOLERANCE, square
    # and the rows say so, member by member; the worst case ran some bf16 attacks
    rows, _ = evaluate_suite(Bf16MaskedDetector(trained), test_split,
                             members(TINY, BF16, 8.0), batch_size=24, device=CPU,
                             subset_size=8, progress=False)
    by = {r["attack"]: r for r in rows}
    assert by["det_topk"]["precision"] == by["apgd_det"]["precision"] == "fp32"
    assert by["square_det"]["precision"] == "bf16"
    assert by["square_det"]["precision_reason"] == square.reason
    worst = by["worst_case"]
    assert worst["precision"] == "bf16"
    assert worst["precision_reason"].split("; ")[2] == f"square (torchattacks): {square.reason}"


def test_a_decision_is_never_carried_to_another_eps_or_threat(trained, test_split):
    """Before, the first eps a model met decided for every later eps and threat (one entry
    per model object). Here bf16 is fine on the model at eps 8, then its bf16 gradients break:
    eps 16 and the l2 threat are probed again and fall back to fp32."""
    model = Bf16MaskedDetector(trained, masked=False)
    first = _choices(model, test_split, 8.0)
    assert first["pgd (pgray)"].precision == "bf16", first["pgd (pgray)"]
    model.masked = True
    later = _choices(model, test_split, 16.0)
    assert later["pgd (pgray)"].precision == "fp32"
    assert "linf eps 16" in later["pgd (pgray)"].reason
    l2 = _choices(model, test_split, 1.0, threat="l2")
    assert l2["pgd (torchattacks)"].precision == "fp32"
    assert "l2 eps 1, pgd (torchattacks)" in l2["pgd (torchattacks)"].reason


class NoisyInBf16(StepDetector):
    """Exact in fp32; under autocast its units carry a large fixed noise. Scoring a bf16
    attack's images under autocast, as the old probe did, sees that noise; the suite never
    does (it scores every candidate in fp32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        units = self.inner(x)
        if torch.is_autocast_enabled(x.device.type):
            gen = torch.Generator().manual_seed(0)
            units = units + 5.0 * torch.randn(units.shape, generator=gen)
        return units


def test_the_probe_scores_both_arms_in_fp32(trained, test_split):
    # an attack that changes nothing: both arms score the clean images, in fp32
    nothing = Member("det_topk", dataclasses.replace(BF16, eps=0.0, objective="image_score"),
                     "detection")
    fp32, bf16 = probe_aurocs(NoisyInBf16(trained), test_split, nothing, device=CPU,
                              batch_size=24)
    assert fp32 == bf16


def test_every_attacked_row_says_what_decided_its_precision(trained, test_split):
    def rows(precision):
        out, _ = evaluate_suite(trained, test_split,
                                members(TINY, AttackConfig(steps=3, precision=precision), 8.0),
                                batch_size=24, device=CPU, subset_size=8, progress=False)
        return out

    for asked, reason in (("fp32", "fp32 asked"), ("auto", "no bf16 on cpu")):
        out = rows(asked)
        assert out[-1]["attack"] == "worst_case"
        assert {(r["precision"], r["precision_reason"]) for r in out} == {("fp32", reason)}


def test_subsets_are_random_within_each_class_and_seeded():
    """Before, the first N of each class in file order: files sorted by defect type made the
    subset one defect type."""
    labels = [0] * 30 + [1] * 30
    subset = balanced_subset(labels, 10)
    assert len(subset) == 10 and sum(labels[i] for i in subset) == 5
    assert subset != frozenset([*range(5), *range(30, 35)])
    assert balanced_subset(labels, 10) == subset  # seeded
    assert balanced_subset(labels, 10, seed=1) != subset
    assert balanced_subset(labels, 0) == frozenset(range(60))
    few = balanced_subset([0] * 20 + [1] * 2, 10)  # too few anomalies: the rest normal
    assert {20, 21} <= few and len(few) == 10
