"""Logged and registered models on a real SQLite MLflow store: a logged model per checkpoint
with its numbers linked to it and to the test split, the champion alias moved only by a model
better like with like beyond both intervals, and a registered model fetched back by alias and by
version."""

from __future__ import annotations

import hashlib
import json

import pytest

from pgray.config.base import from_dict
from pgray.config.benchmark import BenchmarkConfig
from pgray.tracking.cards import build_cards
from pgray.tracking.models import fetch_model, finish_models, log_models, model_key
from pgray.tracking.registry import CHALLENGER, CHAMPION, Pick, benchmark_picks, register

SUITE = {"name": "adaptive", "steps": 2}


def _cfg(root) -> BenchmarkConfig:
    return from_dict(BenchmarkConfig, {
        "name": "reg", "eps": [8.0], "steps": [2], "suite": SUITE,
        "datasets": [{"dataset": "synthetic", "root": str(root), "categories": ["disc"],
                      "checkpoint": str(root / "x.pt")}]})


def _rows(tmp_path, tag: str, worst: float, half: float, fingerprint: str = "f00d"):
    """One model's rows: clean, the protocol and the worst case at linf eps 8 with an interval
    of half-width `half`; its checkpoint a file of its own."""
    ckpt = tmp_path / tag / "checkpoint.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(tag.encode() * 100)
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()[:16]  # as pgray.io.file_sha256
    base = {"dataset": "synthetic", "category": "disc", "detector": "patchguard",
            "checkpoint": str(ckpt), "checkpoint_sha256": sha, "checkpoint_file": ckpt.name,
            "data_fingerprint": fingerprint, "split": "official", "data_root": str(tmp_path),
            "eval_version": 7, "seed": None, "suite": "adaptive",
            "suite_members": json.dumps([{"name": "det_topk", "steps": 2}])}
    return [base | {"attack": "clean", "eps": 0.0, "image_auroc": 0.95, "pixel_auroc": 0.9,
                    "aupro": 0.8, "image_auroc_ci_low": 0.9, "image_auroc_ci_high": 0.99},
            base | {"attack": "protocol", "eps": 8.0, "threat": "linf", "steps": 2,
                    "restarts": 1, "image_auroc": worst + 0.1, "pixel_auroc": 0.7,
                    "aupro": 0.5},
            base | {"attack": "worst_case", "eps": 8.0, "threat": "linf", "image_auroc": worst,
                    "image_auroc_ci_low": worst - half, "image_auroc_ci_high": worst + half,
                    "pixel_auroc": 0.6, "aupro": 0.4}]


def _logged(uri, tmp_path, tag, worst, half, **kw) -> Pick:
    from pgray.tracking.mlflow_runs import open_run

    cfg = _cfg(tmp_path)
    run = open_run(uri, f"bench:{tag}")
    rows = _rows(tmp_path, tag, worst, half, **kw)
    ids = log_models(uri, run.experiment_id, run.run_id, cfg, rows)
    for r in rows:
        r["model_id"] = ids[model_key(r)]
    figures = finish_models(uri, ids, build_cards(rows))
    (pick,) = benchmark_picks(figures)
    return pick


def test_logged_model_links_numbers_to_model_and_split(mlflow_uri, tmp_path):
    from mlflow.entities import LoggedModelStatus
    from mlflow.tracking import MlflowClient

    pick = _logged(mlflow_uri, tmp_path, "a", 0.6, 0.05)
    client = MlflowClient(mlflow_uri)
    model = client.get_logged_model(pick.model_id)
    assert model.status == LoggedModelStatus.READY
    assert model.tags["pgray.worst_case_ad"] == "0.6" and model.tags["pgray.threat"] == "linf"
    assert model.tags["pgray.clean_ad"] == "0.95" and model.tags["pgray.eps"] == "8.0"
    linked = {m.key: m for m in model.metrics}
    worst = linked["linf_eps8/worst_case/image_auroc"]
    assert worst.value == 0.6 and linked["linf_eps8/worst_case/image_auroc_ci_low"].value == (
        pytest.approx(0.55))
    assert worst.dataset_digest == "f00d" and worst.dataset_name == "synthetic/disc/test"
    assert linked["clean/image_auroc"].value == 0.95
    # the evaluation run has the test split as its input, with the fingerprint as digest
    run = client.get_run(model.source_run_id)
    (used,) = run.inputs.dataset_inputs
    assert used.dataset.digest == "f00d" and used.tags[0].value == "test"
    # the model's artifacts: checkpoint, manifest (with the evaluation settings), its card
    files = {a.path for a in client.list_logged_model_artifacts(pick.model_id)}
    assert {"checkpoint.pt", "pgray_model.json", "cards"} <= files
    found = client.search_logged_models([run.info.experiment_id],
                                        filter_string="tags.`pgray.category` = 'disc'")
    assert [m.model_id for m in found] == [pick.model_id]


def test_champion_moves_only_for_a_better_model_like_with_like(mlflow_uri, tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    first = _logged(mlflow_uri, tmp_path, "a", 0.6, 0.05)
    (line,) = register(mlflow_uri, "team", [first])
    assert line.startswith("team-disc version 1 (worst-case AD 0.600 [0.550, 0.650]):"
                           " champion (the first)")

    def champion() -> int:
        return int(client.get_model_version_by_alias("team-disc", CHAMPION).version)

    # weaker: registered, challenger, the champion stays
    (line,) = register(mlflow_uri, "team", [_logged(mlflow_uri, tmp_path, "b", 0.5, 0.05)])
    assert champion() == 1 and "challenger; champion stays version 1" in line
    assert client.get_model_version_by_alias("team-disc", CHALLENGER).version == 2
    # better, but inside the champion's interval: stays
    (line,) = register(mlflow_uri, "team", [_logged(mlflow_uri, tmp_path, "c", 0.68, 0.05)])
    assert champion() == 1 and "not better beyond both intervals" in line
    # far better on another split: not compared
    (line,) = register(mlflow_uri, "team", [_logged(mlflow_uri, tmp_path, "d", 0.99, 0.001,
                                                    fingerprint="beef")])
    assert champion() == 1 and "differs in data_fingerprint" in line
    # better beyond both intervals, like with like: moved
    (line,) = register(mlflow_uri, "team", [_logged(mlflow_uri, tmp_path, "e", 0.8, 0.05)])
    assert champion() == 5 and "champion, beating version 1" in line
    # the same model again: no second version
    (line,) = register(mlflow_uri, "team", [first])
    assert "is version 1 already" in line
    assert len(client.search_model_versions("name = 'team-disc'")) == 5

    # fetched back by alias and by version: the champion's file and manifest
    got = fetch_model(mlflow_uri, "models:/team-disc@champion", tmp_path / "fetched")
    assert got.checkpoint.read_bytes() == b"e" * 100
    assert got.manifest["eval"]["suite"]["steps"] == 2 and got.manifest["eval"]["eps"] == [8.0]
    old = fetch_model(mlflow_uri, "models:/team-disc/1", tmp_path / "v1")
    assert old.checkpoint.read_bytes() == b"a" * 100
    from pgray.errors import CheckpointError

    with pytest.raises(CheckpointError, match="no such model"):
        fetch_model(mlflow_uri, "models:/team-nothing@champion", tmp_path / "none")


def test_a_store_other_than_the_environments_leaves_mlflows_globals_alone(
        mlflow_uri, tmp_path, monkeypatch):
    """Registering into and fetching from a store the environment does not name works, and
    changes neither MLFLOW_TRACKING_URI nor MLflow's own tracking URI: a later process
    setting (a test's, a second run's) is still the one read."""
    import os

    import mlflow

    other = f"sqlite:///{tmp_path / 'other.db'}"
    (line,) = register(other, "team", [_logged(other, tmp_path, "a", 0.6, 0.05)])
    assert "champion (the first)" in line
    got = fetch_model(other, "models:/team-disc@champion", tmp_path / "fetched")
    assert got.checkpoint.read_bytes() == b"a" * 100
    assert os.environ["MLFLOW_TRACKING_URI"] == mlflow_uri
    later = f"sqlite:///{tmp_path / 'later.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", later)
    assert mlflow.get_tracking_uri() == later
