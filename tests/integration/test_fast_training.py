"""Cheaper training attacks beside the reference PGD-10, and the catastrophic-overfitting
guard on a run built to collapse."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_experiment

from pgray.attacks.pgd import attack
from pgray.config.passes import passes_per_image
from pgray.core.step import training_attack


@pytest.mark.parametrize("method, steps, passes", [
    ("pgd", 2, 8.0), ("fgsm_rs", 1, 6.0), ("nfgsm", 1, 6.0), ("pgd2", 2, 8.0)])
def test_training_attack_presets(synthetic_root, method, steps, passes):
    cfg = tiny_experiment(synthetic_root, train={"attack_method": method})  # attack: PGD-2
    attack_cfg = training_attack(cfg, "fp32")
    assert attack_cfg.steps == steps and attack_cfg.eps == 8.0
    assert passes_per_image(cfg) == passes
    if method == "fgsm_rs":
        assert attack_cfg.random_start and attack_cfg.alpha == pytest.approx(10.0)  # 1.25 eps
    if method == "nfgsm":
        assert not attack_cfg.project and attack_cfg.start_scale == 2.0
    clean = tiny_experiment(synthetic_root, train={"adversarial": False})
    assert passes_per_image(clean) == 2.0


def test_nfgsm_leaves_the_eps_ball_but_not_three_eps(synthetic_root):
    from pgray.core.model import PatchGuard

    cfg = tiny_experiment(synthetic_root, train={"attack_method": "nfgsm"})
    torch.manual_seed(0)
    model = PatchGuard(cfg.model).eval()
    x = 0.25 + 0.5 * torch.rand(4, 3, 32, 32)
    adv = attack(model, x, torch.zeros(4, model.num_patches), training_attack(cfg, "fp32"))
    delta = (adv - x).abs().max().item() * 255
    assert 8.0 < delta <= 24.0 + 1e-3  # random start in +-16/255, one step of 8/255


def test_fast_methods_train_in_process(synthetic_root, tmp_path, mlflow_uri):
    from pgray.pipelines.train import TrainRequest, train_category

    for method in ("fgsm_rs", "nfgsm"):
        cfg = tiny_experiment(synthetic_root, train={"epochs": 1, "attack_method": method})
        result = train_category(TrainRequest(config=cfg, out=tmp_path / method, name=method,
                                             progress=False))
        assert result.history[-1]["passes_per_image"] == 6.0
        assert result.history[-1]["loss"] > 0


def test_a_collapsing_run_is_reported_and_never_selected(synthetic_root, tmp_path, mlflow_uri,
                                                         monkeypatch, capsys):
    """The run's held-out proxy follows a scripted catastrophic overfitting: worst-case image
    AUROC 0.6, 0.7, then 0.3 and 0.25 while clean keeps rising. Selection by clean AUROC
    would take epoch 4; the guard reports epochs 3 and 4 and selection keeps epoch 2."""
    from mlflow.tracking import MlflowClient

    import pgray.core.proxy as proxy
    from pgray.pipelines.train import TrainRequest, train_category

    script = iter([(0.7, 0.6), (0.8, 0.7), (0.85, 0.3), (0.9, 0.25)])

    def scripted(model, batches, cfg, **kw):
        clean, worst = next(script)
        return {"proxy_clean_image_auroc": clean, "proxy_worst_image_auroc": worst,
                "proxy_score": 0.5 * (clean + worst)}

    monkeypatch.setattr(proxy, "proxy_metrics", scripted)
    cfg = tiny_experiment(synthetic_root, train={
        "epochs": 4, "attack_method": "fgsm_rs", "select_metric": "proxy_clean_image_auroc"})
    result = train_category(TrainRequest(config=cfg, out=tmp_path / "co", name="co",
                                         progress=False))
    assert [r["robust_collapse"] for r in result.history] == [0.0, 0.0, 1.0, 1.0]
    assert result.history[-1]["selected_epoch"] == 2.0
    assert "robust collapse at epoch 3" in capsys.readouterr().err
    tags = MlflowClient(mlflow_uri).get_run(result.mlflow_run_id).data.tags
    assert tags["pgray.robust_collapse"].startswith("epoch 3: worst-case 0.300")
