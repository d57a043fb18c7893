"""The held-out proxy is one fixed test per study: trials that differ only in their own
pseudo-anomaly parameters are scored on identical held-out images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_experiment

from pgray.config.experiment import PROXY_INTERVALS, PROXY_METRICS
from pgray.core.intervals import resample_counts
from pgray.core.metrics import image_auroc
from pgray.core.proxy import PROXY_PARTS, image_auroc_interval, proxy_metrics_of
from pgray.core.scoring import EvalOutputs
from pgray.core.training_data import build_datasets, proxy_batches


def _proxy_and_train(cfg):
    train, holdout = build_datasets(cfg, patch_size=8)
    return proxy_batches(holdout, batch_size=8), train[0]


def test_trials_differing_in_pseudo_params_share_the_held_out_images(synthetic_root):
    a = tiny_experiment(synthetic_root, pseudo={"min_size": 6, "severity_probs": [1, 0, 0]})
    b = tiny_experiment(synthetic_root, pseudo={"min_size": 14, "severity_probs": [0, 0, 1]},
                        train={"seed": 5})
    proxy_a, train_a = _proxy_and_train(a)
    proxy_b, train_b = _proxy_and_train(b)
    assert len(proxy_a) == len(proxy_b) > 0
    for x, y in zip(proxy_a, proxy_b):
        for key in ("image", "mask", "label"):
            assert torch.equal(x[key], y[key]), key
    assert proxy_a[0]["label"].sum() > 0 and proxy_a[0]["mask"].sum() > 0
    # ... while what they train on does differ
    assert not torch.equal(train_a["pseudo_mask"], train_b["pseudo_mask"])


def test_another_proxy_generator_gives_another_test(synthetic_root):
    base = tiny_experiment(synthetic_root)
    other = tiny_experiment(synthetic_root, train={"proxy_pseudo": {"min_size": 40}})
    first, _ = _proxy_and_train(base)
    second, _ = _proxy_and_train(other)
    assert torch.equal(first[0]["image"][:4], second[0]["image"][:4])  # the same normals
    assert not all(torch.equal(x["mask"], y["mask"]) for x, y in zip(first, second))


def _outputs(scores, labels) -> EvalOutputs:
    n = len(scores)
    masks = np.zeros((n, 4, 4), np.uint8)
    masks[np.asarray(labels) == 1, 1:3, 1:3] = 1
    maps = np.asarray(scores, np.float32)[:, None, None] * (0.5 + masks)
    return EvalOutputs(scores=np.asarray(scores, np.float64), labels=np.asarray(labels),
                       maps=maps, masks=masks)


def test_proxy_margins_are_measured_in_the_clean_spread_with_the_auroc_intervals():
    labels = [0, 1, 0, 1]
    clean = [0.0, 2.0, 1.0, 3.0]  # gap 2, spread sqrt(1.25)
    worst = [1.0, 0.5, 2.0, 0.5]  # the attack wins: anomalies below every normal
    robust = [0.0, 1.5, 1.0, 1.5]
    parts = {"clean": clean, "robust": robust, "detect": robust, "worst": worst}
    # two ranks' shares, listed out of batch order: joined by index
    joined = {name: [(1, _outputs(s[2:], labels[2:])), (0, _outputs(s[:2], labels[:2]))]
              for name, s in parts.items()}
    out = proxy_metrics_of(joined)
    assert set(PROXY_METRICS) | set(PROXY_INTERVALS) <= set(out)
    spread = np.sqrt(1.25)
    assert out["proxy_clean_image_margin"] == pytest.approx(2 / spread, abs=1e-12)
    assert out["proxy_robust_image_margin"] == pytest.approx(1 / spread, abs=1e-12)
    assert out["proxy_worst_image_margin"] == pytest.approx(-1 / spread, abs=1e-12)
    assert out["proxy_worst_image_auroc"] == 0.0
    # the clean AUROC is 1 in every resample; the worst-case one 0
    assert (out["proxy_clean_image_auroc_lo"], out["proxy_clean_image_auroc_hi"]) == (1.0, 1.0)
    assert (out["proxy_worst_image_auroc_lo"], out["proxy_worst_image_auroc_hi"]) == (0.0, 0.0)
    assert proxy_metrics_of(joined) == out  # seeded: the same outputs, the same interval


def test_proxy_margin_is_nan_where_the_clean_scores_do_not_spread():
    labels = [0, 1, 0, 1]
    parts = {name: [(0, _outputs([0.5] * 4 if name == "clean" else [0.1, 0.9, 0.2, 0.8],
                                 labels))] for name in PROXY_PARTS}
    out = proxy_metrics_of(parts)
    assert all(out[f"proxy_{name}_image_margin"] != out[f"proxy_{name}_image_margin"]
               for name in PROXY_PARTS)
    assert out["proxy_worst_image_auroc"] == 1.0


def test_image_auroc_interval_is_the_naive_bootstrap_and_is_seeded():
    rng = np.random.default_rng(2)
    labels = (np.arange(60) % 5 != 0).astype(np.int64)  # 12 normals, 48 anomalies: a proxy set
    scores = rng.normal(size=60) + 0.8 * labels
    low, high = image_auroc_interval(scores, labels)
    # the percentiles of the exact AUROC recomputed on every resample, one at a time
    counts = resample_counts(labels)
    naive = []
    for row in counts:
        take = np.repeat(np.arange(60), row)
        naive.append(image_auroc(scores[take], labels[take]))
    assert (low, high) == pytest.approx(tuple(np.percentile(naive, [2.5, 97.5])), abs=1e-12)
    assert low < image_auroc(scores, labels) < high and high - low > 0.1
    assert image_auroc_interval(scores, labels) == (low, high)  # the same outputs, again
    other = image_auroc_interval(scores, labels, resample_counts(labels, seed=1))
    assert other != (low, high)
    # a perfect ranking stays perfect in every resample; one class has no interval
    assert image_auroc_interval(labels + 0.1 * scores, labels) == (1.0, 1.0)
    assert all(v != v for v in image_auroc_interval(scores[:10], np.zeros(10)))


def test_the_proxy_attacks_at_the_studys_budget_with_the_protocols_objective(synthetic_root):
    """A search may move the training attack's eps and objective; the proxy's attacks stay
    the study's: train.proxy_eps (else the training eps) and eval.attack's objective."""
    from pgray.core.proxy import proxy_members

    trial = tiny_experiment(synthetic_root, train={
        "attack": {"eps": 2.0, "objective": "image_score", "random_start": True},
        "proxy_eps": 4.0, "proxy_steps": 3})
    robust, detect = proxy_members(trial, "fp32")
    assert (robust.cfg.eps, detect.cfg.eps) == (4.0, 4.0)
    assert robust.cfg.objective == trial.eval.attack.objective == "mask"
    assert not robust.cfg.random_start and robust.cfg.steps == detect.cfg.steps == 3
    unset = tiny_experiment(synthetic_root, train={"attack": {"eps": 2.0}})
    assert [m.cfg.eps for m in proxy_members(unset, "fp32")] == [2.0, 2.0]
