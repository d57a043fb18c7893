"""Selecting the weights of the best held-out proxy epoch (train.select_metric -> best.pt)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_experiment

from pgray.config.experiment import PROXY_INTERVALS, PROXY_METRICS
from pgray.errors import ConfigError


def test_selected_weights_follow_the_metric_peak_and_ignore_nan():
    from pgray.core.fit import SelectedWeights

    model = torch.nn.Linear(2, 1)
    best = SelectedWeights("proxy_score")
    snapshots = {}
    for epoch, value in enumerate([0.5, 0.9, float("nan"), 0.7, 0.9, 0.6]):
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        snapshots[epoch + 1] = model.weight.detach().clone()
        metrics = {"proxy_score": value}
        best.offer(epoch, metrics, model)
        assert metrics["selected_epoch"] == {1: 1, 2: 2, 3: 2, 4: 2, 5: 5, 6: 5}[epoch + 1]
        # every result carries what the selected weights scored, for the sweep's ranking
        assert metrics["selected_proxy_score"] == {1: 0.5, 2: 0.9, 5: 0.9}.get(
            int(metrics["selected_epoch"]))
    kept = best.extra()["selected"]
    # the tie at 0.9 goes to the later epoch; the stored copy is not the live tensor
    assert kept["epoch"] == 5 and kept["value"] == 0.9
    assert torch.equal(kept["state_dict"]["weight"], snapshots[5])
    assert SelectedWeights(None).extra() == {}
    between = {"loss": 1.0}  # an epoch without a proxy still says what best.pt scored
    best.annotate(between)
    assert between == {"loss": 1.0, "selected_epoch": 5.0, "selected_proxy_score": 0.9}


def test_resume_keeps_the_selection_only_for_the_same_metric():
    from pgray.core.fit import SelectedWeights

    state = {"extra": {"selected": {"metric": "proxy_score", "value": 0.8, "epoch": 3,
                                    "state_dict": {}}}}
    assert SelectedWeights.resume("proxy_score", state).kept["epoch"] == 3
    metrics = {}  # a selection saved before scores were kept: its own metric's value
    SelectedWeights.resume("proxy_score", state).annotate(metrics)
    assert metrics == {"selected_epoch": 3.0, "selected_proxy_score": 0.8}
    assert SelectedWeights.resume("proxy_robust_image_auroc", state).kept is None
    assert SelectedWeights.resume("proxy_score", None).kept is None


def test_fit_writes_the_peak_epoch_weights_as_best_pt(synthetic_root, tmp_path):
    from pgray.core.checkpoint import load_checkpoint, write_selected
    from pgray.core.fit import FitContext, fit

    cfg = tiny_experiment(synthetic_root, train={"epochs": 4, "lr": 5e-3,
                                                 "select_metric": "proxy_clean_pixel_auroc"})
    history, weights = [], {}

    def report(epoch, metrics, save):
        history.append(dict(metrics))
        save(tmp_path / "checkpoint.pt")
        model, _, _ = load_checkpoint(tmp_path / "checkpoint.pt")
        weights[epoch + 1] = {k: v.clone() for k, v in model.state_dict().items()}

    fit(cfg, FitContext(report=report, progress=False))
    values = [h["proxy_clean_pixel_auroc"] for h in history]
    peak = max(range(len(values)), key=lambda i: (values[i], i)) + 1
    assert history[-1]["selected_epoch"] == peak
    assert history[-1]["selected_proxy_clean_pixel_auroc"] == values[peak - 1]
    assert history[-1]["selected_proxy_score"] == history[peak - 1]["proxy_score"]
    # every proxy number of the selected epoch (margins and AUROC intervals too): what the
    # sweep's rank agreement pairs with the test split
    for key in PROXY_METRICS + PROXY_INTERVALS:
        chosen, there = history[-1]["selected_" + key], history[peak - 1][key]
        assert chosen == there or (chosen != chosen and there != there), key

    best = write_selected(tmp_path / "checkpoint.pt", tmp_path / "best.pt")
    model, loaded_cfg, extra = load_checkpoint(best)
    assert loaded_cfg == cfg
    assert extra["selected"] == {"metric": "proxy_clean_pixel_auroc", "value": values[peak - 1],
                                 "epoch": peak}
    state = model.state_dict()
    assert all(torch.equal(state[k], weights[peak][k]) for k in state)
    if peak != len(values):  # then the selected weights are not the last ones
        assert any(not torch.equal(state[k], weights[len(values)][k]) for k in state)


def test_train_without_selection_writes_no_best_pt(synthetic_root, tmp_path):
    from pgray.core.checkpoint import write_selected
    from pgray.core.fit import FitContext, fit

    cfg = tiny_experiment(synthetic_root, train={"epochs": 1})
    fit(cfg, FitContext(report=lambda e, m, save: save(tmp_path / "c.pt"), progress=False))
    assert write_selected(tmp_path / "c.pt", tmp_path / "best.pt") is None
    assert not (tmp_path / "best.pt").exists()


@pytest.mark.parametrize("train, needle", [
    ({"select_metric": "test_image_auroc"}, "train.select_metric"),
    ({"select_metric": "proxy_score", "holdout_fraction": 0.0}, "holdout_fraction > 0"),
])
def test_bad_select_metric_names_the_key(synthetic_root, train, needle):
    with pytest.raises(ConfigError, match=needle):
        tiny_experiment(synthetic_root, train=train)


def test_train_category_writes_and_logs_best_pt(synthetic_root, tmp_path, mlflow_uri):
    from mlflow.tracking import MlflowClient

    from pgray.core.checkpoint import load_checkpoint
    from pgray.pipelines.train import TrainRequest, train_category

    cfg = tiny_experiment(synthetic_root, train={"select_metric": "proxy_score"})
    result = train_category(TrainRequest(config=cfg, out=tmp_path / "run", name="sel",
                                         progress=False))
    assert result.selected_checkpoint == tmp_path / "run" / "best.pt"
    _, _, extra = load_checkpoint(result.selected_checkpoint)
    assert extra["selected"]["epoch"] == result.history[-1]["selected_epoch"]
    logged = {a.path for a in MlflowClient(mlflow_uri).list_artifacts(result.mlflow_run_id)}
    assert {"best.pt", "checkpoint.pt"} <= logged


@pytest.mark.parametrize("select", [None, "proxy_score"])
def test_sweep_fetches_the_selected_weights_of_a_trial(synthetic_root, tmp_path, select):
    from pgray.core.checkpoint import CHECKPOINT_FILE, load_checkpoint, read_checkpoint
    from pgray.core.fit import FitContext, fit
    from pgray.pipelines.components.checkpoint_files import (
        evaluated_checkpoint,
        fetch_trial_checkpoint,
    )

    cfg = tiny_experiment(synthetic_root, train={"epochs": 2, "select_metric": select})
    trial_dir = tmp_path / "trial_checkpoint"
    history = []

    def report(epoch, metrics, save):  # as the Ray Train loop does: the history rides along
        history.append((epoch, metrics))
        save(trial_dir / CHECKPOINT_FILE, {"history": history})

    fit(cfg, FitContext(report=report, progress=False))
    dest = fetch_trial_checkpoint(str(trial_dir), tmp_path / "best" / "checkpoint.pt")
    evaluated = evaluated_checkpoint(dest)
    model, _, extra = load_checkpoint(evaluated.path)
    stored = read_checkpoint(trial_dir / CHECKPOINT_FILE)
    want = stored["extra"]["selected"]["state_dict"] if select else stored["state_dict"]
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
    # the selected file is a model checkpoint (no optimiser state), the plain copy is not
    assert ("optimizer" in extra) == (select is None)
    assert evaluated.file == ("best.pt" if select else "checkpoint.pt")
    epoch = stored["extra"]["selected"]["epoch"] if select else 2
    assert evaluated.epoch == epoch
    proxy = json.loads((dest.parent / "proxy.json").read_text())
    assert proxy["epoch"] == epoch and "proxy_clean_image_auroc" in proxy
    if select:
        assert set(extra["selected"]) == {"metric", "value", "epoch"}
    assert not list(dest.parent.glob("*.tmp"))


def _tune_result(trial_id: str, rows: list[dict]):
    """What a Tune ResultGrid entry holds for a finished trial: its last result, config,
    per-epoch dataframe and folder."""
    from types import SimpleNamespace

    import pandas as pd

    from pgray.distributed.train import CHECKPOINT_URI

    rows = [r | {"trial_id": trial_id, CHECKPOINT_URI: f"/ckpt/{trial_id}/{r['epoch']}"}
            for r in rows]
    return SimpleNamespace(metrics=rows[-1], config={"target": "synthetic/disc"},
                           path=f"/trials/{trial_id}", error=None, checkpoint=None,
                           metrics_dataframe=pd.DataFrame(rows))


def test_sweep_ranks_trials_by_the_epoch_it_evaluates(synthetic_root):
    """Trial a has the better last epoch, trial b the better selected epoch (best.pt, the
    weights that are evaluated): b wins, and the tables say which epoch each score is of."""
    from pgray.config.search_space import space_from_dict
    from pgray.distributed.trial_summaries import summarise
    from pgray.pipelines.components.selection import select_best
    from pgray.tracking.sweep_report import trials_table

    data = {"name": "rank", "fixed": {"data": {"dataset": "synthetic",
                                               "root": str(synthetic_root)},
                                      "train": {"select_metric": "proxy_score"}},
            "search": {"loss.attention_lambda": {"type": "loguniform", "low": 0.1,
                                                 "high": 10.0}},
            "objectives": [{"metric": "proxy_score"}], "budget": {"trials": 2, "epochs": 3},
            "scheduler": {"type": "none"}}
    space = space_from_dict(data)

    def epochs(scores, selected):
        return [{"epoch": e + 1, "proxy_score": v, "selected_epoch": selected[e],
                 "selected_proxy_score": scores[selected[e] - 1]}
                for e, v in enumerate(scores)]

    # a's last epoch is its best but the collapse guard kept selection off it
    a = _tune_result("a", epochs([0.5, 0.7, 0.9], selected=[1, 2, 2]))
    b = _tune_result("b", epochs([0.6, 0.8, 0.4], selected=[1, 2, 2]))
    trials = summarise([a, b], space)
    assert [t.trial_id for t in select_best(trials, space)["synthetic/disc"]] == ["b"]
    by_id = {t.trial_id: t for t in trials}
    assert by_id["b"].scores == {"proxy_score": 0.8} and by_id["b"].score_epoch == 2
    assert by_id["b"].score_source == "selected"
    table = trials_table(space, trials)
    assert "| b | completed | 3 | epoch 2 (selected, best.pt) | 0.8000 |" in table
    # without selection the last epoch is both the evaluated and the scored one
    plain = space_from_dict(data | {"fixed": data["fixed"] | {"train": {}}})
    last = [_tune_result(t, [{"epoch": e + 1, "proxy_score": v} for e, v in enumerate(s)])
            for t, s in (("a", [0.5, 0.9]), ("b", [0.8, 0.6]))]
    trials = summarise(last, plain)
    assert [t.trial_id for t in select_best(trials, plain)["synthetic/disc"]] == ["a"]
    assert "| a | stopped_early | 2 | epoch 2 (last) | 0.9000 |" in trials_table(plain, trials)
