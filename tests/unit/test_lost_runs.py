"""A resumed sweep's trial runs that its restored Tune experiment never knew (started, or even
finished, by the killed driver after Tune last saved the experiment) are tagged lost and never
left RUNNING; the runs of known trials are not touched (real MLflow on SQLite)."""

from __future__ import annotations


def test_unknown_trial_runs_are_tagged_lost_and_ended(tmp_path):
    from mlflow.tracking import MlflowClient

    from pgray.tracking.mlflow_runs import close_lost_runs, open_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = open_run(uri, "sweep:tiny", tags={"pgray.kind": "sweep"})
    runs = {}
    for trial_id in ("known", "orphan", "ended"):
        runs[trial_id] = open_run(uri, f"sweep:tiny:trial:{trial_id}", parent_run_id=parent.run_id,
                                  tags={"pgray.kind": "trial", "pgray.sweep": "tiny",
                                        "pgray.trial_id": trial_id})
    client = MlflowClient(uri)
    client.set_terminated(runs["ended"].run_id, "FINISHED")
    other = open_run(uri, "sweep:other:trial:x", parent_run_id=parent.run_id,
                     tags={"pgray.kind": "trial", "pgray.sweep": "other",
                           "pgray.trial_id": "x"})  # another experiment's: not ours to touch

    lost = close_lost_runs(uri, parent.experiment_id,
                           {"mlflow.parentRunId": parent.run_id, "pgray.kind": "trial",
                            "pgray.sweep": "tiny"}, {"known"}, "pgray.trial_id")

    assert sorted(lost) == sorted([runs["orphan"].run_id, runs["ended"].run_id])
    status = {k: client.get_run(r.run_id) for k, r in runs.items()}
    assert status["orphan"].info.status == "KILLED"
    assert status["ended"].info.status == "FINISHED"
    assert {status[k].data.tags.get("pgray.trial_state") for k in ("orphan", "ended")} == {"lost"}
    assert status["known"].info.status == "RUNNING"
    assert "pgray.trial_state" not in status["known"].data.tags
    assert client.get_run(other.run_id).info.status == "RUNNING"
