"""Certification by percentile smoothing (`pgray.core.smoothing`, `pgray.core.certification`,
`pgray.core.certify`) against a detector whose answer is known: a linear image score. Gaussian
noise shifts a linear score by sigma ||W|| / U times a standard normal, the same for every
image (the draws are shared), so the smoothed detector ranks images exactly as the base does,
its percentile at level q is the base score plus sigma ||W|| / U * Phi^-1(q), and the exact
worst case within L2 radius r moves every score by r ||W|| / U (no pixel leaves [0, 1] here):
the certificate is tight, and both sides of the bracket can be checked against the exact
worst-case AUROC."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import stats

from pgray.attacks.checks import CERTIFIED_ABOVE, bracket_flags
from pgray.config import EvalConfig
from pgray.config.base import from_dict
from pgray.core.certification import lower_index, radius_bounds, upper_index
from pgray.core.certify import SIDES, certified_rows
from pgray.core.metrics import image_auroc
from pgray.core.smoothing import NoiseExpectation, SmoothedDetector
from pgray.detectors.known_answer import exact_worst_auroc, known_answer_cases
from pgray.errors import ConfigError

CPU = torch.device("cpu")
SIGMA, SAMPLES, RADII = 1.0, 300, [0.5, 1.0]
CASE = next(c for c in known_answer_cases(size=32, n_per_class=20)
            if c.threat == "l2" and c.name == "linear")
EVAL = from_dict(EvalConfig, {
    "suite": {"steps": 10, "restarts": 1, "square_queries": 50, "square_images": 8},
    "batch_size": 40, "certify": {"radii": RADII, "sigma": SIGMA, "samples": SAMPLES,
                                  "eot_samples": 2}}, "eval")


def _images():
    x = torch.stack([CASE.split[i]["image"] for i in range(len(CASE.split))])
    return x, np.array([s.label for s in CASE.split.samples])


@pytest.fixture(scope="module")
def bracket():
    """The certified rows of the linear detector, and its exact worst case at each radius."""
    rows = certified_rows(CASE.detector, CASE.split, EVAL, [], device=CPU, progress=False)
    exact = {r: exact_worst_auroc(CASE.detector, CASE.split, "l2", r)[1] for r in RADII}
    return rows, exact


def _slack_auroc(radius: float, delta: float = 1e-6) -> float:
    """The image AUROC with anomalous scores lowered and normal ones raised by as much as the
    row's order statistics can sit beyond the exact shift, unless an event of probability
    2 * delta happened: the (j+1)-th smallest of n uniforms is Beta(j + 1, n - j)."""
    bounds, = radius_bounds([radius], samples=SAMPLES, percentile=0.5, sigma=SIGMA,
                            confidence=EVAL.certify.confidence, n_images=40, n_pixels=32 * 32)
    lo, hi = bounds.image_lower, bounds.image_upper
    z_low = stats.norm.ppf(stats.beta.ppf(delta, lo + 1, SAMPLES - lo))
    z_high = stats.norm.ppf(stats.beta.ppf(1 - delta, hi + 1, SAMPLES - hi))
    unit = SIGMA * float(CASE.detector.weight.norm()) / 32 ** 2
    x, labels = _images()
    scores = CASE.detector.score(x)[0].numpy().astype(np.float64)
    return image_auroc(np.where(labels == 1, scores + unit * z_low, scores + unit * z_high),
                       labels)


def test_the_certified_auroc_is_at_most_the_exact_worst_case_and_within_the_sampling_slack(
        bracket):
    rows, exact = bracket
    for row in rows:
        r = row["radius"]
        clean = exact_worst_auroc(CASE.detector, CASE.split, "l2", r)[0]
        assert clean - exact[r] > 0.05  # not a vacuous check
        assert _slack_auroc(r) <= row["certified_image_auroc"] <= exact[r] + 1e-9, (r, row)


def test_the_attacked_auroc_of_the_smoothed_detector_reaches_the_exact_worst_case(bracket):
    rows, exact = bracket
    for row in rows:
        assert exact[row["radius"]] - 1e-9 <= row["attacked_image_auroc"] <= (
            exact[row["radius"]] + 0.01), row


def test_certified_numbers_never_rise_with_the_radius_and_stay_below_the_attacked_ones(
        bracket):
    rows, _ = bracket
    assert [r["radius"] for r in rows] == RADII
    for m in ("image_auroc", "pixel_auroc", "aupro"):
        certified = [r[f"certified_{m}"] for r in rows]
        assert certified == sorted(certified, reverse=True), m
        for r in rows:
            assert r[f"certified_{m}"] <= r[f"attacked_{m}"] <= r[f"smoothed_{m}"], (m, r)
    assert all(r["flags"] == [] for r in rows)
    # smoothing leaves the linear detector's ranking as it was (the base columns are absent
    # here: no base rows were given)
    x, labels = _images()
    base = image_auroc(CASE.detector.score(x)[0], labels)
    assert rows[0]["smoothed_image_auroc"] == pytest.approx(base, abs=1e-12)
    assert np.isnan(rows[0]["base_image_auroc"])


def test_a_row_whose_certified_number_is_above_the_attacked_one_is_flagged():
    row = {f"{side}_{m}": 0.7 for side in SIDES for m in ("image_auroc", "pixel_auroc",
                                                          "aupro")}
    assert bracket_flags(row)["flags"] == []  # equal: the bracket holds
    flagged = bracket_flags(row | {"certified_pixel_auroc": 0.71})
    assert flagged["flags"] == [CERTIFIED_ABOVE]
    assert flagged["flag_notes"] == [
        f"{CERTIFIED_ABOVE}: pixel_auroc certified 0.7100 > attacked 0.7000"]


def test_smoothing_shifts_a_linear_score_by_one_constant_whatever_the_batching():
    x, _ = _images()
    base = CASE.detector.score(x)[0].double()
    whole = SmoothedDetector(CASE.detector, sigma=SIGMA, samples=200, batch_size=1000)
    alone = SmoothedDetector(CASE.detector, sigma=SIGMA, samples=200, batch_size=7)
    smoothed = whole.score(x)[0].double()
    torch.testing.assert_close(alone.score(x[5:6])[0].double(), smoothed[5:6], rtol=0,
                               atol=0)
    shift = smoothed - base
    unit = SIGMA * float(CASE.detector.weight.norm()) / 32 ** 2
    assert float(shift.std()) < 1e-5 * unit  # one constant: the draws are shared
    assert abs(float(shift.mean())) < 4 * 1.2533 * unit / 200 ** 0.5  # median of N(0, unit)


def test_the_noise_expectation_of_a_linear_score_has_its_gradient():
    x, _ = _images()
    x = x[:4].clone().requires_grad_(True)
    torch.manual_seed(0)
    NoiseExpectation(CASE.detector, sigma=SIGMA, samples=3).score(x)[0].sum().backward()
    expected = (CASE.detector.weight / 32 ** 2).expand_as(x)
    torch.testing.assert_close(x.grad, expected, rtol=1e-4, atol=1e-9)


def test_order_statistic_bounds_hold_at_their_confidence():
    """Brute force: 20,000 sets of 100 normal samples; the chosen order statistics fall
    beyond the true percentile no more often than alpha (plus a binomial margin)."""
    n, level, alpha = 100, 0.3, 0.05
    low, high = lower_index(n, level, alpha), upper_index(n, level, alpha)
    assert low is not None and high is not None and low < 30 < high
    samples = np.sort(np.random.default_rng(0).standard_normal((20_000, n)), axis=1)
    q = stats.norm.ppf(level)
    margin = 3 * (alpha * (1 - alpha) / 20_000) ** 0.5
    assert (samples[:, low] > q).mean() <= alpha + margin
    assert (samples[:, high] < q).mean() <= alpha + margin
    # one step further in is no longer a bound at this alpha
    assert stats.binom.cdf(low + 1, n, level) > alpha
    assert stats.binom.sf(high - 1, n, level) > alpha
    assert lower_index(n, 0.001, alpha) is None and upper_index(n, 0.999, alpha) is None


def test_order_statistics_move_outwards_with_the_radius():
    bounds = radius_bounds([0.05, 0.1, 0.25, 1.0], samples=1000, percentile=0.5, sigma=0.25,
                           confidence=0.999, n_images=100, n_pixels=224 ** 2)
    for key in ("image_lower", "pixel_lower"):
        found = [getattr(b, key) for b in bounds]
        assert found[:3] == sorted(found[:3], reverse=True) and found[3] is None, key
    for key in ("image_upper", "pixel_upper"):
        found = [getattr(b, key) for b in bounds]
        assert found[:3] == sorted(found[:3]) and found[3] is None, key
    assert all(b.pixel_lower <= b.image_lower for b in bounds[:3])  # pixels: smaller alpha


@pytest.mark.parametrize("certify, message", [
    ({"radii": []}, r"eval\.certify\.radii: needs at least one radius"),
    ({"radii": [0.1, -0.5]}, r"eval\.certify\.radii\[1\]: must be > 0"),
    ({"radii": [0.1, 0.1]}, r"eval\.certify\.radii: lists a radius twice"),
    ({"radii": [0.1], "sigma": 0}, r"eval\.certify\.sigma: must be > 0"),
    ({"radii": [0.1], "samples": 5}, r"eval\.certify\.samples: must be >= 10"),
    ({"radii": [0.1], "confidence": 1.0}, r"eval\.certify\.confidence: must be in \(0, 1\)"),
    ({"radii": [0.1], "percentile": 0.0}, r"eval\.certify\.percentile: must be in \(0, 1\)"),
    ({"radii": [0.1], "eot_samples": 0}, r"eval\.certify\.eot_samples: must be >= 1"),
    ({"radii": [0.1], "batch_size": 0}, r"eval\.certify\.batch_size: must be >= 1"),
    ({"radius": [0.1]}, r"unknown key eval\.certify\.radius"),
])
def test_certify_config_errors_name_the_key(certify, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(EvalConfig, {"certify": certify}, "eval")


def test_certify_needs_the_adaptive_suite_and_the_command_line_reaches_the_config():
    from pgray.evaluate import main

    with pytest.raises(ConfigError, match=r"eval\.certify: needs suite adaptive"):
        from_dict(EvalConfig, {"suite": "protocol", "certify": {"radii": [0.1]}}, "eval")
    with pytest.raises(ConfigError, match=r"eval\.certify\.sigma: must be > 0"):
        main(["--checkpoint", "unused.pt", "--certify", "0.1", "--certify-sigma", "0"])


def test_the_base_detector_is_attacked_at_every_certified_radius():
    from pgray.core.robustness import budgets, check_threats

    cfg = dataclasses.replace(EVAL, threats=from_dict(
        EvalConfig, {"threats": [{"threat": "l2", "eps": [1.0, 2.0]}]}).threats)
    assert budgets(cfg) == [("linf", 8.0), ("l2", 0.5), ("l2", 1.0), ("l2", 2.0)]
    assert check_threats(cfg) == ["linf", "l2"]
    assert check_threats(EVAL) == ["linf", "l2"]  # certify alone brings the l2 check
    assert check_threats(dataclasses.replace(EVAL, certify=None)) == ["linf"]
