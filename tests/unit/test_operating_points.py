"""What users report beside AUROC: the TPR at 1 % and 5 % FPR (clean, member and worst-case
rows), the worst case split into an attack on normal images only and on anomalous images
only, and the columns that say what a row's budget and suite were."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pgray.attacks.suite import members
from pgray.config import AttackConfig, SuiteConfig
from pgray.core.metrics import image_auroc, tpr_at_fpr
from pgray.core.row_columns import attacked_sides, operating_points
from pgray.core.scoring import evaluate_model, evaluate_suite

CPU = torch.device("cpu")
TINY = SuiteConfig(steps=3, restarts=1, square_queries=10, square_images=8, patch_positions=2)

# 10 normal images scored 0.0 .. 0.9 and 5 anomalous ones
NORMAL = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
ANOMALOUS = [0.95, 0.85, 0.5, 0.35, 0.05]
SCORES = np.array(NORMAL + ANOMALOUS)
LABELS = np.array([0] * 10 + [1] * 5)


def test_tpr_at_fpr_by_hand():
    # no false positive allowed (FPR <= 0.05 of 10 normals): only 0.95 is above 0.9
    assert tpr_at_fpr(SCORES, LABELS, 0.05) == pytest.approx(1 / 5)
    assert tpr_at_fpr(SCORES, LABELS, 0.0) == pytest.approx(1 / 5)
    # one false positive (0.9): the threshold may drop to just above 0.8 -> 0.95, 0.85
    assert tpr_at_fpr(SCORES, LABELS, 0.10) == pytest.approx(2 / 5)
    assert tpr_at_fpr(SCORES, LABELS, 0.19) == pytest.approx(2 / 5)  # no interpolation
    # five false positives (0.5 .. 0.9): a threshold of 0.5 counts the tied anomaly 0.5
    assert tpr_at_fpr(SCORES, LABELS, 0.5) == pytest.approx(3 / 5)
    assert tpr_at_fpr(SCORES, LABELS, 1.0) == 1.0


def test_a_tie_straddling_the_limit_is_left_out_whole():
    scores = np.array([0.9, 0.5, 0.5, 0.1, 0.5, 0.2])
    labels = np.array([0, 0, 0, 0, 1, 1])
    # the tie at 0.5 holds 2 normals and one anomaly: taking it flags 3 of 4 normals (0.9
    # too), so below an FPR of 0.75 only thresholds above 0.5 are allowed (no anomaly)
    assert tpr_at_fpr(scores, labels, 0.25) == 0.0
    assert tpr_at_fpr(scores, labels, 0.5) == 0.0
    assert tpr_at_fpr(scores, labels, 0.75) == 1.0  # down to 0.2: both anomalies


def test_tpr_at_fpr_agrees_with_sklearn_roc_corners():
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=300), 1)  # ties on purpose
    labels = rng.integers(0, 2, size=300)
    scores[labels == 1] += 0.7
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    for limit in (0.0, 0.01, 0.05, 0.2, 0.5):
        assert tpr_at_fpr(scores, labels, limit) == pytest.approx(tpr[fpr <= limit].max())
    with pytest.raises(ValueError, match="undefined"):
        tpr_at_fpr(scores, np.zeros(300), 0.01)
    with pytest.raises(ValueError, match="max_fpr"):
        tpr_at_fpr(scores, labels, 5.0)
    assert math.isnan(operating_points(scores, np.zeros(300))["tpr_at_fpr1"])


def test_each_side_attacked_alone_by_hand():
    labels = np.array([0, 0, 1, 1])
    clean = np.array([0.1, 0.2, 0.8, 0.9])
    worst = np.array([0.85, 0.2, 0.05, 0.84])  # normals pushed up, anomalies down
    sides = attacked_sides(worst, clean, labels)
    # normals attacked (0.85, 0.2) against clean anomalies (0.8, 0.9): 3 of 4 pairs right
    assert sides["image_auroc_attack_normal"] == pytest.approx(0.75)
    # clean normals (0.1, 0.2) against attacked anomalies (0.05, 0.84): 2 of 4
    assert sides["image_auroc_attack_anomalous"] == pytest.approx(0.5)
    assert image_auroc(worst, labels) == pytest.approx(0.25)  # both sides at once: 1 of 4


def test_rows_carry_operating_points_and_the_worst_case_by_side(trained, test_split):
    clean_rows, clean_out = evaluate_model(trained, test_split, [None], batch_size=24,
                                           device=CPU, progress=False)
    clean = clean_out["clean"]
    rows, outputs = evaluate_suite(trained, test_split,
                                   members(TINY, AttackConfig(steps=3), 4.0), batch_size=24,
                                   device=CPU, subset_size=8, progress=False)
    for row, out in ((clean_rows[0], clean), *((r, outputs[r["setting"]]) for r in rows)):
        for key, fpr in (("tpr_at_fpr1", 0.01), ("tpr_at_fpr5", 0.05)):
            assert row[key] == pytest.approx(tpr_at_fpr(out.scores, out.labels, fpr))
    worst = rows[-1]
    assert worst["attack"] == "worst_case"
    assert worst["tpr_at_fpr5"] <= clean_rows[0]["tpr_at_fpr5"]
    # from the picks the suite kept, no attack of its own
    expected = attacked_sides(outputs[worst["setting"]].scores, clean.scores, clean.labels)
    for key, value in expected.items():
        assert worst[key] == pytest.approx(value), key
        # one side attacked hurts no more than both, and no less than none
        assert worst["image_auroc"] - 1e-12 <= worst[key] <= clean_rows[0]["image_auroc"] + 1e-12


def test_the_worst_case_row_names_its_suite_and_members(trained, test_split):
    adaptive = members(TINY, AttackConfig(steps=3), 4.0)
    rows, _ = evaluate_suite(trained, test_split, adaptive, batch_size=24, device=CPU,
                             subset_size=8, progress=False)
    worst = rows[-1]
    assert worst["suite"] == "adaptive" and worst["precision"] == "fp32"
    listed = json.loads(worst["suite_members"])
    assert [m["name"] for m in listed] == [m.name for m in adaptive]
    square = next(m for m in listed if m["name"] == "square_det")
    assert square == {"name": "square_det", "method": "square", "library": "torchattacks",
                      "objective": "image_score", "steps": 0, "restarts": 1, "queries": 10}
    det = next(m for m in listed if m["name"] == "det_topk")
    assert (det["steps"], det["restarts"], det["queries"]) == (3, 1, 0)
    protocol_only = members(SuiteConfig(name="protocol"), AttackConfig(steps=3), 4.0)
    rows, _ = evaluate_suite(trained, test_split, protocol_only, batch_size=24, device=CPU,
                             progress=False)
    assert rows[-1]["suite"] == "protocol"
    assert [m["name"] for m in json.loads(rows[-1]["suite_members"])] == ["protocol"]


@pytest.mark.parametrize("threat, eps, column, value", [
    ("l2", 1.0, "l2_per_pixel", 1.0 / math.sqrt(3 * 32 * 32)),
    ("patch", 0.05, "patch_area", 49 / 1024),  # a 7 px side: 4.79 % of the image, not 5 %
])
def test_rows_say_what_their_budget_was_at_the_input_size(trained, test_split, threat, eps,
                                                          column, value):
    rows, _ = evaluate_suite(trained, test_split, members(TINY, AttackConfig(), eps,
                                                          threat=threat),
                             batch_size=24, device=CPU, subset_size=8, progress=False)
    for row in rows:
        assert row["input_size"] == 32
        assert row[column] == pytest.approx(value), row["attack"]
        assert row["precision_reason"]
