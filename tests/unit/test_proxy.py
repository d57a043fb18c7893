"""The held-out proxy is one fixed test per study: trials that differ only in their own
pseudo-anomaly parameters are scored on identical held-out images."""

from __future__ import annotations

import torch
from helpers import tiny_experiment

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
