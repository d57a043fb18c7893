"""Ray Train: two CPU workers with DDP, fault tolerance and resume (real Ray, real MLflow)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import tiny_experiment

from pgray.config import ExperimentConfig
from pgray.pipelines.train import TrainRequest, train_category

pytestmark = pytest.mark.slow


def _checksum(model) -> float:
    return float(torch.stack([p.detach().double().sum() for p in model.parameters()]).abs().sum())


def _loss_steps(uri: str, run_id: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    return [m.step for m in MlflowClient(uri).get_metric_history(run_id, "loss")]


def _request(cfg, tmp_path, name, **kw) -> TrainRequest:
    return TrainRequest(config=cfg, out=tmp_path / name, name=name, workers=2, use_ray=True,
                        cpus_per_worker=0.5, progress=False, **kw)


def test_two_workers_stay_in_sync_and_learn(ray_session, synthetic_root, tmp_path, mlflow_uri):
    from pgray.core.model import PatchGuard

    cfg = tiny_experiment(synthetic_root)
    torch.manual_seed(cfg.train.seed)
    initial = _checksum(PatchGuard(cfg.model))
    result = train_category(_request(cfg, tmp_path, "ddp"))
    last = result.history[-1]
    assert last["param_spread"] == 0.0  # both ranks hold identical parameters
    assert abs(last["param_checksum"] - initial) > 1e-3  # and they moved
    from pgray.core.checkpoint import load_checkpoint

    model, _, extra = load_checkpoint(result.checkpoint)
    assert _checksum(model) == pytest.approx(last["param_checksum"], rel=1e-9)
    assert extra["epochs_done"] == 2
    assert _loss_steps(mlflow_uri, result.mlflow_run_id) == [0, 1]
    # each rank's own generators (seed + rank), gathered into rank 0's checkpoint
    assert len(extra["rank_rng"]) == 2
    assert not torch.equal(extra["rank_rng"][0]["torch"], extra["rank_rng"][1]["torch"])
    # the proxy, scored by both ranks on a share each, reaches the history from rank 0
    assert 0.0 <= last["proxy_score"] <= 1.0
    from mlflow.tracking import MlflowClient

    params = MlflowClient(mlflow_uri).get_run(result.mlflow_run_id).data.params
    assert (params["batch.global"], params["batch.per_worker"]) == ("4", "2")


@pytest.mark.parametrize("mode", ["exit"])  # a killed worker; "raise" takes the same path
def test_worker_failure_mid_epoch_resumes_from_checkpoint(ray_session, synthetic_root, tmp_path,
                                                          mlflow_uri, mode):
    cfg = tiny_experiment(synthetic_root, train={"epochs": 3, "select_metric": "proxy_score"})
    marker = tmp_path / "failed-once"

    def fail_once(rank: int, epoch: int, step: int) -> None:
        # Defined here, so Ray's cloudpickle ships it by value to the workers.
        if (rank, epoch, step) == (1, 1, 1) and not marker.exists():
            marker.write_text("failed once\n")
            if mode == "exit":
                os._exit(1)
            raise RuntimeError("injected failure at epoch 2 step 1")

    result = train_category(_request(cfg, tmp_path, f"fault-{mode}", max_failures=2,
                                     step_hook=fail_once))
    assert marker.exists()  # the failure did happen
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    # one metric series: epoch 2 was re-run after the failure but logged once
    assert _loss_steps(mlflow_uri, result.mlflow_run_id) == [0, 1, 2]
    # the proxy selection survived the restart: best.pt is the peak over all three epochs
    scores = [r["proxy_score"] for r in result.history]
    peak = max(range(3), key=lambda i: (scores[i], i)) + 1
    from pgray.core.checkpoint import load_checkpoint

    _, _, extra = load_checkpoint(result.selected_checkpoint)
    assert extra["selected"]["epoch"] == peak == result.history[-1]["selected_epoch"]


def test_a_worker_lost_while_the_controller_restarts_the_group_is_resumed(
        ray_session, synthetic_root, tmp_path):
    """A worker actor that dies while Train's controller handles the group reaches the caller
    as a ControllerError Train never retries (seen once on a loaded host, a killed worker's
    peer destroyed with its placement group): pgray resumes the run by name from its latest
    checkpoint. A controller callback raising the actor's death once stands in for it."""
    import ray.exceptions
    from ray.train import UserCallback

    from pgray.core.checkpoint import load_checkpoint
    from pgray.distributed.train import TrainLaunch

    marker = tmp_path / "lost-once"

    class LoseAWorkerOnce(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if checkpoint is not None and not marker.exists():
                marker.write_text("lost once\n")
                raise ray.exceptions.RayActorError()

    cfg = tiny_experiment(synthetic_root, train={"epochs": 2})
    launch = TrainLaunch(name="lost-worker", storage=str(tmp_path / "storage"), workers=1,
                         cpus_per_worker=0.5, max_failures=1, progress=False)
    from pgray.distributed import train as ray_train

    with pytest.warns(UserWarning, match="resuming lost-worker from its latest checkpoint"):
        result = ray_train.run_training(cfg.to_dict(), launch, [LoseAWorkerOnce()])
    assert marker.exists()
    dest = ray_train.copy_result_checkpoint(result, tmp_path / "final.pt")
    _, _, extra = load_checkpoint(dest)
    assert extra["epochs_done"] == 2
    assert [epoch for epoch, _ in extra["history"]] == [0, 1]  # each epoch once


def test_ray_run_resumed_by_name_continues(ray_session, synthetic_root, tmp_path, mlflow_uri,
                                          monkeypatch):
    """Resume by name on Ray Train, with two more things the workers must get right: a root
    given relative to the user's folder (workers start elsewhere, so the pipeline hands them
    absolute paths: the config they train with, not only the one it checked) and a fast
    training attack."""
    from pgray.core.checkpoint import read_checkpoint

    work = tmp_path / "work"
    work.mkdir()
    (work / "data").symlink_to(synthetic_root)
    monkeypatch.chdir(work)
    cfg = tiny_experiment(Path("data"), train={"epochs": 1, "attack_method": "nfgsm"})
    first = train_category(_request(cfg, tmp_path, "again"))
    state = read_checkpoint(tmp_path / "again" / "checkpoint.pt")
    assert Path(state["config"]["data"]["root"]) == (work / "data").resolve()
    assert state["config"]["train"]["attack_method"] == "nfgsm"
    assert first.history[-1]["passes_per_image"] == 6.0  # N-FGSM: 6 passes, PGD-10: 24
    longer = ExperimentConfig.from_dict(
        cfg.to_dict() | {"train": cfg.to_dict()["train"] | {"epochs": 2}})
    req = _request(longer, tmp_path, "again")
    second = train_category(req)
    assert second.mlflow_run_id == first.mlflow_run_id
    assert [r["epoch"] for r in second.history] == [1, 2]
    assert second.history[0]["loss"] == pytest.approx(first.history[0]["loss"])
