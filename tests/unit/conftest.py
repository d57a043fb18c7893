"""Fixtures of the suite's tests (test_suite, test_masking_checks, test_precision_probe,
test_operating_points): one tiny generated split and one tiny PatchGuard trained on it, made
once per session."""

from __future__ import annotations

import pytest
from helpers import tiny_experiment


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    from pgray.data.synthetic import generate

    root = tmp_path_factory.mktemp("suite-data")
    return generate(root, seed=3, size=32, n_train=16, n_test=24, categories=("disc",))


@pytest.fixture(scope="session")
def test_split(data_root):
    from pgray.data.dataset import load_split

    return load_split(tiny_experiment(data_root).data, "test", 32)


@pytest.fixture(scope="session")
def trained(data_root, tmp_path_factory):
    """A tiny PatchGuard trained (clean) for a few seconds: it detects the defects somewhat."""
    from pgray.core.checkpoint import load_checkpoint
    from pgray.core.fit import FitContext, fit

    cfg = tiny_experiment(data_root, train={"epochs": 12, "adversarial": False,
                                            "holdout_fraction": 0.0, "max_steps_per_epoch": 4})
    path = tmp_path_factory.mktemp("trained") / "model.pt"

    def report(epoch, metrics, save):
        if save is not None:
            save(path)

    fit(cfg, FitContext(report=report, progress=False))
    model, _, _ = load_checkpoint(path)
    return model.eval()
