"""Gradient-masking checks for every threat: each threat has its own large-budget check and
black-box member (Square with norm L2; the random patch search), and a model flagged at one
threat carries a flag on the rows and cards of its other threats."""

from __future__ import annotations

import math

import pytest
import torch
from masked_detectors import NoGradDetector, StepDetector

from pgray.attacks.checks import FLAG_MEANINGS, OTHER_THREAT, reliability_flags
from pgray.attacks.objectives import image_score_objective, unit_labels
from pgray.attacks.patch import patch_side
from pgray.attacks.patch_search import patch_random_search
from pgray.attacks.suite import CHECK, large_eps_check, members
from pgray.config import AttackConfig, EvalConfig, SuiteConfig, ThreatConfig
from pgray.core.metrics import image_auroc
from pgray.core.robustness import evaluate_robustness
from pgray.errors import ConfigError

CPU = torch.device("cpu")
SUITE = SuiteConfig(steps=3, restarts=1, square_queries=50, square_images=0, check_steps=5,
                    patch_positions=2)
EVAL = EvalConfig(eps=[8.0], attack=AttackConfig(steps=3), suite=SUITE, batch_size=24,
                  threats=[ThreatConfig(threat="l2", eps=[1.0]),
                           ThreatConfig(threat="patch", eps=[0.05])])
IDENTITY = {"dataset": "synthetic", "category": "disc", "checkpoint_sha256": "x"}


def _first_batch(dataset, n=24):
    return next(iter(torch.utils.data.DataLoader(dataset, batch_size=n)))


@pytest.mark.parametrize("wrap", [NoGradDetector, StepDetector])
def test_masked_gradients_trip_the_checks_of_l2_and_patch_themselves(trained, test_split, wrap):
    """Before, l2 and patch rows had no check of their own: a detector without usable
    gradients got only `zero_gradients` there. Now each threat's large-budget check stays
    far above 0 and its black-box member beats the white-box ones on the same images."""
    rows, _ = evaluate_robustness(wrap(trained), test_split, EVAL, device=CPU,
                                  identity=IDENTITY, progress=False)
    for threat, black_box in (("l2", "square_det"), ("patch", "patch_random_det")):
        mine = {r["attack"]: r for r in rows if r["threat"] == threat}
        assert mine[CHECK]["image_auroc"] > 0.05
        box = mine[black_box]
        assert box["image_auroc"] < box["whitebox_image_auroc"] - 0.01, box
        worst = mine["worst_case"]
        assert {"weak_at_large_eps", "blackbox_stronger"} <= set(worst["flags"]), worst
        own = [n for n in worst["flag_notes"] if n.startswith("weak_at_large_eps:")]
        assert own and f"at {threat} eps" in own[0]  # its own threat's check, not linf's
    checks = {r["threat"]: r for r in rows if r["attack"] == CHECK}
    assert checks["l2"]["eps"] == pytest.approx(0.25 * math.sqrt(3 * 32 * 32))
    assert checks["l2"]["l2_per_pixel"] == pytest.approx(0.25)
    assert checks["patch"]["eps"] == 0.5


def test_a_model_flagged_at_one_threat_is_flagged_on_all_its_rows_and_cards():
    from pgray.tracking.cards import build_cards

    base = dict(IDENTITY, steps=5, restarts=1, precision="fp32", pixel_auroc=0.5)
    other = dict(base, checkpoint_sha256="y")  # another model: never touched
    rows = [dict(base, attack="clean", threat="none", eps=0.0, image_auroc=0.9),
            dict(base, attack="worst_case", threat="linf", eps=8.0, image_auroc=0.3),
            dict(base, attack=CHECK, threat="linf", eps=64.0, image_auroc=0.6),
            dict(base, attack="worst_case", threat="l2", eps=1.0, image_auroc=0.2),
            dict(base, attack="worst_case", threat="patch", eps=0.05, image_auroc=0.1),
            dict(other, attack="clean", threat="none", eps=0.0, image_auroc=0.9),
            dict(other, attack="worst_case", threat="l2", eps=1.0, image_auroc=0.2)]
    flagged = reliability_flags(rows)
    assert flagged[1]["flags"] == ["weak_at_large_eps"]
    for r in flagged[3:5]:
        assert r["flags"] == [OTHER_THREAT]
        assert r["flag_notes"] == [f"{OTHER_THREAT}: linf: weak_at_large_eps"]
    assert flagged[0]["flags"] == flagged[5]["flags"] == flagged[6]["flags"] == []
    assert OTHER_THREAT in FLAG_MEANINGS
    cards = {(c["threat"], c["model"]["checkpoint_sha256"]): c for c in build_cards(flagged)}
    assert cards[("l2", "x")]["unreliable"] and cards[("patch", "x")]["unreliable"]
    assert not cards[("l2", "y")]["unreliable"]


def test_flags_of_two_threats_are_named_in_one_note():
    base = dict(IDENTITY, steps=5, restarts=1, precision="fp32")
    rows = [dict(base, attack=CHECK, threat="linf", eps=64.0, image_auroc=0.6),
            dict(base, attack="square_det", threat="l2", eps=1.0, aims_at="detection",
                 image_auroc=0.1, whitebox_image_auroc=0.4),
            dict(base, attack="worst_case", threat="patch", eps=0.05, image_auroc=0.1)]
    patch = reliability_flags(rows)[2]
    assert patch["flag_notes"] == [
        f"{OTHER_THREAT}: l2: blackbox_stronger; linf: weak_at_large_eps"]


def test_each_threat_has_a_black_box_member_and_a_large_budget_check():
    l2 = {m.name: m for m in members(SUITE, AttackConfig(), 1.0, threat="l2")}
    assert l2["square_det"].cfg.method == "square" and l2["square_det"].subset
    assert l2["square_det"].cfg.threat == "l2" and l2["square_det"].cfg.steps == 50
    patch = {m.name: m for m in members(SUITE, AttackConfig(), 0.05, threat="patch")}
    assert patch["patch_random_det"].cfg.method == "random"
    assert patch["patch_random_det"].subset and patch["patch_random_det"].black_box
    check = large_eps_check(SuiteConfig(), AttackConfig(), "l2")
    assert check.at_input(224, 224).cfg.eps == pytest.approx(0.25 * math.sqrt(3 * 224 * 224))
    assert large_eps_check(SuiteConfig(), AttackConfig(), "patch").cfg.eps == 0.5
    assert large_eps_check(SuiteConfig(), AttackConfig()).cfg.eps == 64.0


def test_square_runs_at_l2_and_random_search_only_at_patch():
    AttackConfig(threat="l2", method="square", library="torchattacks", eps=1.0).validate()
    AttackConfig(threat="patch", method="random", eps=0.05).validate()
    with pytest.raises(ConfigError, match="method: random"):
        AttackConfig(method="random").validate()
    with pytest.raises(ConfigError, match="check_patch_eps"):
        from pgray.config.base import from_dict

        from_dict(SuiteConfig, {"check_patch_eps": 1.5}, "suite")


def test_the_random_patch_search_changes_one_square_and_is_seeded(trained, test_split):
    batch = _first_batch(test_split)
    units = unit_labels(trained, batch["mask"])
    cfg = AttackConfig(threat="patch", method="random", eps=0.05, steps=40,
                       objective="image_score")
    adv = patch_random_search(trained, batch["image"], units, cfg, seed=3,
                              image_labels=batch["label"])
    side = patch_side(0.05, 32, 32)
    for img in (adv != batch["image"]).any(dim=1):
        ys, xs = torch.nonzero(img, as_tuple=True)
        assert ys.max() - ys.min() + 1 <= side and xs.max() - xs.min() + 1 <= side
    assert adv.min() >= 0 and adv.max() <= 1
    again = patch_random_search(trained, batch["image"], units, cfg, seed=3,
                                image_labels=batch["label"])
    torch.testing.assert_close(adv, again, rtol=0, atol=0)
    other = patch_random_search(trained, batch["image"], units, cfg, seed=4,
                                image_labels=batch["label"])
    assert not torch.equal(adv, other)
    with torch.no_grad():
        clean, attacked = (trained.image_scores(trained(x)) for x in (batch["image"], adv))
    # it asks for scores only, and still hurts detection badly on this model
    assert image_auroc(attacked, batch["label"]) < image_auroc(clean, batch["label"]) - 0.2
    gain = (image_score_objective(attacked, units, batch["label"])
            - image_score_objective(clean, units, batch["label"]))
    assert (gain > 0).float().mean() > 0.8


def test_the_benchmark_schedules_a_large_budget_check_per_threat():
    from pgray.config.base import from_dict, to_dict
    from pgray.config.benchmark import BenchmarkConfig
    from pgray.pipelines.components.jobs import CHECK as CHECK_JOB
    from pgray.pipelines.components.jobs import BenchJob, job_grid

    cfg = from_dict(BenchmarkConfig, {
        "datasets": [{"dataset": "synthetic"}], "eps": [8.0],
        "threats": [{"threat": "l2", "eps": [1.0]}, {"threat": "patch", "eps": [0.05]}]},
        "benchmark")
    checks = [(eps, threat) for kind, eps, _, threat in job_grid(cfg) if kind == CHECK_JOB]
    assert checks == [(64.0, "linf"), (0.25, "l2"), (0.5, "patch")]
    jobs = [BenchJob(dataset="synthetic", root="", category="disc", checkpoint="c",
                     checkpoint_sha256="abc", kind=CHECK_JOB, attacks=(to_dict(cfg.attack),),
                     suite=to_dict(cfg.suite), eps=eps, mask_resize="nearest", batch_size=8,
                     n_panels=0, n_test=10, threat=threat) for eps, threat in checks]
    assert len({j.key for j in jobs}) == len({j.setting for j in jobs}) == 3
    l2 = jobs[1].suite_members()[0]
    assert l2.cfg.threat == "l2" and l2.l2_per_pixel == 0.25 and l2.name == CHECK
