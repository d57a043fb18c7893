"""In-process training and evaluation through the entry points (no Ray)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_experiment

from pgray.config import ExperimentConfig
from pgray.errors import CheckpointError
from pgray.pipelines.train import TrainRequest, train_category


def _metric_history(uri: str, run_id: str, key: str) -> list:
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri).get_metric_history(run_id, key)


def test_train_step_reports_four_terms_and_updates_weights(synthetic_root):
    from pgray.core.model import PatchGuard
    from pgray.core.step import build_optimizer, train_step
    from pgray.core.training_data import build_datasets

    cfg = tiny_experiment(synthetic_root)
    torch.manual_seed(0)
    model = PatchGuard(cfg.model)
    optimizer, _ = build_optimizer(model, cfg)
    train_ds, holdout = build_datasets(cfg, model.patch_size)
    assert holdout is not None and len(holdout) >= 2
    batch = torch.utils.data.default_collate([train_ds[i] for i in range(4)])
    before = [p.detach().clone() for p in model.parameters()]
    out = train_step(model, batch, cfg, optimizer, device=torch.device("cpu"))
    for term in ("clean_normal", "adv_normal", "clean_pseudo", "adv_pseudo"):
        assert torch.isfinite(out[f"bce_{term}"])
    # the PGD terms are attacked copies: their loss is at least the clean one on normals
    assert out["bce_adv_normal"] >= out["bce_clean_normal"] - 1e-4
    assert out["attn_reg"] > 0 and out["attn_kl_2"] > 0
    changed = sum(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert changed == len(before)
    assert all(p.requires_grad for p in model.parameters())


def test_train_in_process_writes_checkpoint_metrics_and_mlflow(synthetic_root, tmp_path,
                                                                 mlflow_uri):
    cfg = tiny_experiment(synthetic_root)
    result = train_category(TrainRequest(config=cfg, out=tmp_path / "run", name="t1",
                                         progress=False))
    rows = json.loads(result.metrics_file.read_text())["epochs"]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"bce_adv_pseudo", "proxy_clean_image_auroc", "proxy_robust_image_auroc"} <= set(
        rows[-1])
    from pgray.core.checkpoint import load_checkpoint

    model, loaded_cfg, extra = load_checkpoint(result.checkpoint)
    assert loaded_cfg == cfg and extra["epochs_done"] == 2
    from mlflow.tracking import MlflowClient

    run = MlflowClient(mlflow_uri).get_run(result.mlflow_run_id)
    assert run.data.params["train.epochs"] == "2"
    assert run.data.params["loss.attention_lambda"] == "1.0"
    assert [m.step for m in _metric_history(mlflow_uri, result.mlflow_run_id, "loss")] == [0, 1]
    names = {a.path for a in MlflowClient(mlflow_uri).list_artifacts(result.mlflow_run_id)}
    assert {"checkpoint.pt", "config.yaml", "metrics.json"} <= names


def test_resume_by_name_continues_from_checkpoint(synthetic_root, tmp_path, mlflow_uri):
    cfg = tiny_experiment(synthetic_root)
    first = train_category(TrainRequest(config=cfg, out=tmp_path / "run", name="r",
                                        progress=False))
    longer = ExperimentConfig.from_dict(cfg.to_dict() | {"train": cfg.to_dict()["train"]
                                                          | {"epochs": 3}})
    second = train_category(TrainRequest(config=longer, out=tmp_path / "run", name="r",
                                         progress=False))
    assert second.mlflow_run_id == first.mlflow_run_id
    assert [r["epoch"] for r in second.history] == [1, 2, 3]
    # epochs 1-2 kept their first values: the run continued, it did not start over
    assert second.history[0]["loss"] == pytest.approx(first.history[0]["loss"])
    steps = [m.step for m in _metric_history(mlflow_uri, first.mlflow_run_id, "loss")]
    assert steps == [0, 1, 2]
    with pytest.raises(CheckpointError, match="belongs to another run"):
        train_category(TrainRequest(config=cfg, out=tmp_path / "run", name="other",
                                    progress=False))


def test_train_and_evaluate_cli(synthetic_root, tmp_path, mlflow_uri, capsys):
    from pgray.evaluate import main as evaluate_main
    from pgray.train import main as train_main

    out = tmp_path / "cli"
    assert train_main(["--dataset", "synthetic", "--root", str(synthetic_root),
                       "--category", "weave", "--tiny", "--epochs", "1", "--batch-size", "4",
                       "--steps-train", "1", "--max-steps-per-epoch", "1", "--out", str(out),
                       "--quiet"]) == 0
    assert (out / "checkpoint.pt").is_file()
    eval_out = tmp_path / "eval"
    assert evaluate_main(["--checkpoint", str(out / "checkpoint.pt"), "--eps", "2", "8",
                          "--steps", "3", "--suite-steps", "2", "--suite-restarts", "1",
                          "--square-queries", "4", "--square-images", "4", "--out",
                          str(eval_out), "--n-panels", "1", "--quiet"]) == 0
    metrics = json.loads((eval_out / "metrics.json").read_text())
    members = ["protocol", "det_topk", "det_lse", "loc_mask", "apgd_det", "apgd_loc",
               "square_det", "worst_case"]
    assert [r["attack"] for r in metrics["results"]] == (
        ["clean"] + members + members + ["check_large_eps"])
    from pgray.core.eval_version import EVAL_VERSION, git_commit

    for row in metrics["results"]:
        assert 0.0 <= row["image_auroc"] <= 1.0 and 0.0 <= row["aupro"] <= 1.0
        # what made the row: the evaluation version and this checkout's commit
        assert row["eval_version"] == EVAL_VERSION and row["git_commit"] == git_commit()
        assert isinstance(row["flags"], list) and len(row["flag_notes"]) == len(row["flags"])
    protocol = next(r for r in metrics["results"] if r["attack"] == "protocol" and r["eps"] == 8)
    assert protocol["setting"] == "pgd_eps8_steps3"
    assert protocol["alpha"] == pytest.approx(2.5 * 8 / 3)
    assert protocol["restarts"] == 1 and protocol["precision"] == "fp32"
    assert not protocol["random_start"] and not protocol["keep_best"]
    square = next(r for r in metrics["results"] if r["attack"] == "square_det")
    assert square["n_images"] == 4 and square["method"] == "square" and square["steps"] == 4
    assert metrics["suite"]["name"] == "adaptive" and metrics["suite"]["steps"] == 2
    assert len(list(eval_out.glob("panel_*.png"))) == 1
    # its robustness card: one threat, both budgets, the model's training and flags
    card_path = eval_out / "cards" / "patchguard__synthetic__weave__linf.json"
    assert metrics["cards"] == [str(card_path)]
    card = json.loads(card_path.read_text())
    assert card["budgets"] == [2.0, 8.0] and card["training"]["method"] == "adversarial"
    assert card["clean"]["image_auroc"]["value"] == metrics["results"][0]["image_auroc"]
    assert card["unreliable"] == bool(card["flags"]) and len(card["data"]["fingerprint"]) == 16
