"""The adaptive attack suite and its reliability checks, on real tiny PatchGuards and on
detectors built to break an attack (a step function, one run under no_grad, one whose
gradient points the wrong way)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from masked_detectors import NoGradDetector, ReversedGradientDetector, StepDetector

from pgray.attacks.checks import reliability_flags
from pgray.attacks.objectives import mask_objective, unit_labels
from pgray.attacks.pgd import attack
from pgray.attacks.suite import Truth, attack_batch, balanced_subset, members
from pgray.config import AttackConfig, EvalConfig, SuiteConfig, ThreatConfig
from pgray.core.robustness import evaluate_robustness
from pgray.core.scoring import evaluate_suite, score_batches

SMALL = SuiteConfig(steps=4, restarts=2, square_queries=20, square_images=0, check_steps=10)
EVAL = EvalConfig(eps=[2.0, 8.0], attack=AttackConfig(steps=5), suite=SMALL, batch_size=16)
CPU = torch.device("cpu")
THREATS_EVAL = dataclasses.replace(EVAL, threats=[
    ThreatConfig(threat="l2", eps=[0.5, 2.0]), ThreatConfig(threat="patch", eps=[0.05])])
IDENTITY = {"dataset": "synthetic", "category": "disc", "checkpoint_sha256": "x"}


def _suite_rows(model, dataset, eps, suite=SMALL, protocol=AttackConfig(steps=5),
                threat="linf"):
    rows, outputs = evaluate_suite(model, dataset, members(suite, protocol, eps, threat=threat),
                                   batch_size=16, device=CPU, subset_size=suite.square_images,
                                   progress=False)
    return rows, outputs


def _truth(model, batch) -> Truth:
    return Truth(units=unit_labels(model, batch["unit_mask"]), images=batch["label"],
                 reference_units=unit_labels(model, batch["mask"]))


def test_worst_case_is_no_better_than_any_member_nor_clean(trained, test_split):
    """For detection, localization and AUPRO alike (the localization pick on raw units once
    sat above a member's pooled pixel AUROC)."""
    clean = score_batches(trained, torch.utils.data.DataLoader(test_split, batch_size=16), None,
                          device=CPU).metrics()
    for eps in (2.0, 8.0):
        rows, _ = _suite_rows(trained, test_split, eps)
        by = {r["attack"]: r for r in rows}
        assert set(by) == {"protocol", "det_topk", "det_lse", "loc_mask", "apgd_det",
                           "apgd_loc", "square_det", "worst_case"}
        worst = by["worst_case"]
        for key in ("image_auroc", "pixel_auroc", "aupro"):
            assert worst[key] <= clean[key] + 1e-12, key
            for name, row in by.items():
                assert worst[key] <= row[key] + 1e-12, (key, name)
        assert worst["pixel_auroc"] <= worst["pixel_auroc_pick"] + 1e-12
        # bootstrap intervals (pgray.core.intervals) around every number; the localization
        # worst case's is that of the lowest candidate per resample
        for name, row in by.items():
            for key in ("image_auroc", "pixel_auroc", "aupro"):
                assert row[f"{key}_ci_low"] <= row[key] <= row[f"{key}_ci_high"], (key, name)
        for key in ("pixel_auroc", "aupro"):
            for name in ("protocol", "loc_mask"):
                assert worst[f"{key}_ci_high"] <= by[name][f"{key}_ci_high"] + 1e-12


def test_worst_case_picks_the_most_harmful_candidate_per_image(trained, test_split):
    batch = next(iter(torch.utils.data.DataLoader(test_split, batch_size=24)))
    truth = _truth(trained, batch)
    result = attack_batch(trained, batch["image"], truth, members(SMALL, AttackConfig(steps=5),
                                                                  8.0),
                          in_subset=torch.ones(24, dtype=torch.bool), seed=0)
    signs = 1.0 - 2.0 * batch["label"].float()
    picks = [*result.candidates, result.clean]  # the clean image is a candidate too
    detection = torch.stack([c.detection for c in picks])
    localization = torch.stack([c.localization for c in picks])
    torch.testing.assert_close(result.worst_scores * signs, detection.max(dim=0).values)
    torch.testing.assert_close(mask_objective(result.worst_units, truth.units),
                               localization.max(dim=0).values)
    clean_scores = result.clean.scores
    assert (result.worst_scores * signs >= clean_scores * signs - 1e-6).all()


def test_an_anomalous_image_without_an_anomalous_unit_is_still_attacked_downward(
        trained, test_split):
    """Its mask lost (a folder dataset without masks, a thin defect gone in a resize): the
    detection attacks must still push its score down, and the pick keep the lowest. Taking
    the direction from the mask pushed it up and kept the candidate that helped the detector
    (worst-case AUROC 0.021 with masks, 0.611 with most of them blanked, on one model)."""
    batch = next(iter(torch.utils.data.DataLoader(test_split, batch_size=24)))
    blank = batch["label"] == 1
    assert blank.any()
    unit_mask = batch["unit_mask"].clone()
    unit_mask[blank] = 0
    truth = Truth(units=unit_labels(trained, unit_mask), images=batch["label"],
                  reference_units=unit_labels(trained, batch["mask"]))
    assert truth.lost().sum() == blank.sum()
    det = [m for m in members(SMALL, AttackConfig(steps=5), 8.0) if m.name == "det_topk"]
    result = attack_batch(trained, batch["image"], truth, det,
                          in_subset=torch.zeros(24, dtype=torch.bool), seed=0)
    clean, attacked = result.clean.scores, result.candidates[0].scores
    assert (attacked[blank] < clean[blank]).all(), (clean[blank], attacked[blank])
    assert (result.worst_scores[blank] <= clean[blank]).all()


def test_unit_labels_come_from_the_full_resolution_mask():
    """A 2 px scratch on a 256 px mask: a nearest-neighbour resize to 32 px can miss it, the
    cover never does, and its units are labelled where its source pixels fall."""
    import numpy as np

    from pgray.data.imageio import cover_mask, resize_mask

    mask = np.zeros((256, 256), bool)
    mask[:, 101:103] = True  # between the pixels a nearest resize samples (every 8th, at 4)
    assert not resize_mask(mask, 32).any()
    cover = cover_mask(mask, 32)
    assert cover[:, 12].all() and cover.sum() == 32
    random = np.random.default_rng(0).random((32, 32)) > 0.8
    assert (cover_mask(random, 32) == random).all()  # same size: the mask itself


def test_suite_at_eps_zero_is_clean(trained, test_split):
    clean = score_batches(trained, torch.utils.data.DataLoader(test_split, batch_size=16), None,
                          device=CPU).metrics()
    rows, _ = _suite_rows(trained, test_split, 0.0)
    for row in rows:
        for key, value in clean.items():
            assert row[key] == value, (row["attack"], key)


def test_protocol_member_is_the_reference_attack_bit_for_bit(trained, test_split):
    protocol = AttackConfig(eps=8.0, steps=5)
    batch = next(iter(torch.utils.data.DataLoader(test_split, batch_size=24)))
    labels = unit_labels(trained, batch["mask"])  # the reference's: from the resized mask
    direct = attack(trained, batch["image"], labels, protocol)
    result = attack_batch(trained, batch["image"], _truth(trained, batch),
                          members(SMALL, protocol, 8.0),
                          in_subset=torch.zeros(24, dtype=torch.bool), seed=5)
    torch.testing.assert_close(result.candidates[0].images, direct, rtol=0, atol=0)
    alone = score_batches(trained, torch.utils.data.DataLoader(test_split, batch_size=16),
                          protocol, device=CPU).metrics()
    rows, _ = _suite_rows(trained, test_split, 8.0)
    assert {k: rows[0][k] for k in alone} == alone


def test_a_plain_patchguard_raises_no_flag(trained, test_split):
    """Under every threat: linf at two eps, l2 at two norms, a patch (each its own worst
    case, rows named uniquely across threats, flags comparing rows of one threat only)."""
    rows, _ = evaluate_robustness(trained, test_split, THREATS_EVAL, device=CPU,
                                  identity=IDENTITY, progress=False)
    assert [r["flags"] for r in rows] == [[]] * len(rows), [
        (r["threat"], r["attack"], r["eps"], r["flag_notes"]) for r in rows if r["flags"]]
    checks = {r["threat"]: r for r in rows if r["attack"] == "check_large_eps"}
    assert set(checks) == {"linf", "l2", "patch"}  # a large-budget check per threat
    assert all(c["image_auroc"] <= 0.05 for c in checks.values())
    worst = {(r["threat"], r["eps"]) for r in rows if r["attack"] == "worst_case"}
    assert worst == {("linf", 2.0), ("linf", 8.0), ("l2", 0.5), ("l2", 2.0), ("patch", 0.05)}
    assert next(r for r in rows if r["attack"] == "clean")["threat"] == "none"
    assert len({r["setting"] for r in rows}) == len(rows)
    assert all(r["threat"] == "linf" for r in rows if r["attack"] == "protocol")


def _flags(model, dataset) -> dict[str, set[str]]:
    rows, _ = evaluate_robustness(model, dataset, EVAL, device=CPU, identity=IDENTITY,
                                  progress=False)
    return {f: {r["attack"] for r in rows if f in r["flags"]}
            for f in {f for r in rows for f in r["flags"]}}


def test_flags_fire_on_a_step_function_detector(trained, test_split):
    flags = _flags(StepDetector(trained), test_split)
    assert "worst_case" in flags["zero_gradients"]
    assert "worst_case" in flags["weak_at_large_eps"]


def test_flags_fire_on_a_detector_run_under_no_grad(trained, test_split):
    flags = _flags(NoGradDetector(trained), test_split)
    assert "worst_case" in flags["zero_gradients"]
    assert "check_large_eps" in flags["weak_at_large_eps"]


def test_flags_fire_when_the_score_rises_with_eps(trained, test_split):
    flags = _flags(ReversedGradientDetector(trained), test_split)
    # The protocol follows its gradient to the last iterate: it helps the detector more with
    # more budget. The members that keep their best iterate stay near the start instead, and
    # the black-box attack, which ignores the gradient, beats them all.
    assert "protocol" in flags["rises_with_eps"]
    assert "protocol" in flags["robust_above_clean"]
    assert "worst_case" in flags["blackbox_stronger"]
    assert "worst_case" in flags["weak_at_large_eps"]


def test_black_box_beating_white_box_is_flagged():
    base = {"dataset": "d", "category": "c", "checkpoint_sha256": "s", "eps": 8.0,
            "steps": 10, "restarts": 1}
    rows = [base | {"attack": "clean", "eps": 0.0, "image_auroc": 0.9, "pixel_auroc": 0.9},
            base | {"attack": "square_det", "aims_at": "detection", "image_auroc": 0.2,
                    "pixel_auroc": 0.9, "whitebox_image_auroc": 0.6},
            base | {"attack": "worst_case", "image_auroc": 0.3, "pixel_auroc": 0.5}]
    flagged = reliability_flags(rows)
    assert flagged[0]["flags"] == []
    assert flagged[1]["flags"] == flagged[2]["flags"] == ["blackbox_stronger"]
    assert "0.2000 < white-box 0.6000" in flagged[2]["flag_notes"][0]


def test_more_steps_raising_auroc_is_flagged():
    base = {"dataset": "d", "category": "c", "checkpoint_sha256": "s", "eps": 8.0,
            "attack": "protocol", "restarts": 1, "pixel_auroc": 0.5}
    rows = reliability_flags([base | {"steps": 10, "image_auroc": 0.40},
                              base | {"steps": 100, "image_auroc": 0.45}])
    assert rows[0]["flags"] == [] and rows[1]["flags"] == ["more_steps_higher"]


def test_balanced_subset_takes_both_classes():
    labels = [0] * 10 + [1] * 3
    subset = balanced_subset(labels, 6)
    assert len(subset) == 6 and {labels[i] for i in subset} == {0, 1}
    assert sum(labels[i] for i in subset) == 3
    assert balanced_subset(labels, 0) == frozenset(range(13))


def test_surrogate_needs_the_image_score_objective():
    from pgray.errors import ConfigError

    with pytest.raises(ConfigError, match="surrogate"):
        dataclasses.replace(AttackConfig(), surrogate="lse").validate()


def test_flags_never_compare_rows_of_different_precision():
    base = dict(IDENTITY, attack="det_topk", steps=5, restarts=1, flags=[])
    rows = [dict(base, attack="clean", eps=0.0, image_auroc=0.9),
            dict(base, eps=2.0, precision="fp32", image_auroc=0.30),
            dict(base, eps=8.0, precision="bf16", image_auroc=0.40)]
    flagged = reliability_flags(rows)
    assert not any("rises_with_eps" in r["flags"] for r in flagged)
    rows[2]["precision"] = "fp32"
    assert "rises_with_eps" in reliability_flags(rows)[2]["flags"]


# --- threats beyond linf: l2 and patch ------------------------------------------------------

def _first_batch(test_split, n=24):
    return next(iter(torch.utils.data.DataLoader(test_split, batch_size=n)))


def test_l2_attacks_stay_in_the_ball_and_lower_detection(trained, test_split):
    """PGDL2 and APGD-L2 on the detection objective: every perturbation's L2 norm (on [0, 1]
    pixels) is at most eps, and the image AUROC falls below the clean one."""

    batch = _first_batch(test_split)
    truth = _truth(trained, batch)
    for member in members(SMALL, AttackConfig(steps=5), 2.0, threat="l2"):
        assert member.cfg.threat == "l2" and member.cfg.library == "torchattacks"
        adv = attack(trained, batch["image"], truth.units, member.cfg, seed=1,
                     image_labels=truth.images)
        norms = (adv - batch["image"]).flatten(1).norm(dim=1)
        assert (norms <= 2.0 + 1e-4).all(), (member.name, norms.max())
        assert adv.min() >= 0 and adv.max() <= 1
    rows, _ = _suite_rows(trained, test_split, 2.0, threat="l2")
    by = {r["attack"]: r for r in rows}
    clean = score_batches(trained, torch.utils.data.DataLoader(test_split, batch_size=16), None,
                          device=CPU).metrics()
    assert set(by) == {"pgd_det", "pgd_loc", "apgd_det", "apgd_loc", "square_det", "worst_case"}
    assert {r["threat"] for r in rows} == {"l2"}
    assert by["pgd_det"]["image_auroc"] < clean["image_auroc"] - 0.1, (by, clean)
    assert by["worst_case"]["setting"] == "l2_worst_case_eps2"


def test_a_patch_changes_one_square_of_the_right_area(trained, test_split):
    from pgray.attacks.patch import patch_side

    batch = _first_batch(test_split)
    truth = _truth(trained, batch)
    cfg = AttackConfig(threat="patch", eps=0.05, steps=3, random_start=True, keep_best=True,
                       objective="image_score", positions=3)
    adv = attack(trained, batch["image"], truth.units, cfg, seed=2, image_labels=truth.images)
    side = patch_side(0.05, 32, 32)
    assert side == 7  # round(sqrt(0.05 * 32 * 32))
    changed = (adv != batch["image"]).any(dim=1)  # (B, H, W)
    for img in changed:
        ys, xs = torch.nonzero(img, as_tuple=True)
        # one side x side square, nearly every pixel of it moved (49 of 49 when measured)
        assert ys.max() - ys.min() + 1 == side and xs.max() - xs.min() + 1 == side
        assert len(ys) >= 0.9 * side * side
    assert adv.min() >= 0 and adv.max() <= 1
    again = attack(trained, batch["image"], truth.units, cfg, seed=2, image_labels=truth.images)
    torch.testing.assert_close(adv, again, rtol=0, atol=0)  # seeded places and starts


def test_each_threat_has_its_own_worst_case_no_better_than_its_members(trained, test_split):
    clean = score_batches(trained, torch.utils.data.DataLoader(test_split, batch_size=16), None,
                          device=CPU).metrics()
    for threat, eps in (("l2", 1.0), ("patch", 0.05)):
        rows, _ = _suite_rows(trained, test_split, eps, threat=threat)
        assert "protocol" not in {r["attack"] for r in rows}  # the paper's PGD is linf
        worst = rows[-1]
        assert worst["attack"] == "worst_case" and worst["threat"] == threat
        for key in ("image_auroc", "pixel_auroc", "aupro"):
            assert worst[key] <= clean[key] + 1e-12, (threat, key)
            for row in rows:
                assert worst[key] <= row[key] + 1e-12, (threat, key, row["attack"])


def test_flags_never_compare_rows_of_different_threats():
    base = dict(IDENTITY, attack="worst_case", steps=5, restarts=1, precision="fp32")
    rows = [dict(base, attack="clean", threat="none", eps=0.0, image_auroc=0.9),
            dict(base, threat="linf", eps=1.0, image_auroc=0.30),
            dict(base, threat="l2", eps=2.0, image_auroc=0.60),  # another unit: not a rise
            dict(base, threat="patch", eps=0.05, image_auroc=0.50),
            dict(base, attack="check_large_eps", threat="linf", eps=64.0, image_auroc=0.5)]
    flagged = reliability_flags(rows)
    assert not any("rises_with_eps" in r["flags"] for r in flagged)
    assert "weak_at_large_eps" in flagged[1]["flags"]  # the linf check speaks for linf
    assert "weak_at_large_eps" not in flagged[2]["flags"] + flagged[3]["flags"]
    rows[2]["threat"] = "linf"
    assert "rises_with_eps" in reliability_flags(rows)[2]["flags"]


def test_threat_budgets_are_validated_with_their_key():
    from pgray.config.base import from_dict
    from pgray.errors import ConfigError

    with pytest.raises(ConfigError, match=r"eval\.threats\[0\]\.eps\[0\]: must be in \(0, 1\)"):
        from_dict(EvalConfig, {"threats": [{"threat": "patch", "eps": [2.0]}]}, "eval")
    with pytest.raises(ConfigError, match=r"threats\[0\]\.threat: linf budgets"):
        from_dict(EvalConfig, {"threats": [{"threat": "linf", "eps": [8]}]}, "eval")
    with pytest.raises(ConfigError, match=r"threats: .*suite adaptive"):
        from_dict(EvalConfig, {"suite": "protocol", "threats": [{"threat": "l2",
                                                                 "eps": [0.5]}]}, "eval")
    ok = from_dict(EvalConfig, {"threats": [{"threat": "l2", "eps": [0.5, 1.0]}]}, "eval")
    assert ok.threats[0].eps == [0.5, 1.0] and ok.eps == [8.0]
