"""The sweep: Optuna per target, best-trial selection, and a real sweep killed and resumed.

The end-to-end test runs `python -m pgray.sweep` as a subprocess (its own local Ray with the
dashboard, real Optuna, real MLflow SQLite), SIGKILLs it after the first trial finished,
resumes it with --resume, and checks what Tune, MLflow and the output folder hold.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from helpers import kill_processes_mentioning

from pgray.config import ExperimentConfig, tiny_model_config
from pgray.config.base import to_dict
from pgray.config.search_sections import Target
from pgray.config.search_space import space_from_dict
from pgray.errors import ClusterError
from pgray.pipelines.components.selection import select_best
from pgray.tracking.trials import TrialSummary, pareto_front

REPO = Path(__file__).resolve().parents[2]
LAMBDA_HUGE = 30000.0  # makes the attention term dominate the loss: ASHA must stop it
MARGIN_AND_LOSS = [{"metric": "loss", "mode": "min"},
                   {"metric": "proxy_clean_image_margin", "mode": "max"}]
STATED = ("ASHA stopped trials on -1 x loss + 0.001 x proxy_clean_image_margin"
          " (objective_scalar, max)")


def _scalar(metrics: dict) -> float:
    return -metrics["loss"] + 0.001 * metrics["proxy_clean_image_margin"]


def tiny_space(root: Path, **over) -> dict:
    """One target (disc), 3 trials of 2 epochs, ASHA on the training loss, one at a time.

    The two start points go first (lambda 0, then a huge lambda), so ASHA's decision is
    certain: the second trial's epoch-1 loss is far above the first's. The third trial is
    Optuna's own pick.
    """
    space = {
        "name": "tiny",
        "fixed": {
            "data": {"dataset": "synthetic", "root": str(root), "category": "disc"},
            "model": to_dict(tiny_model_config(img_size=32)),
            "loss": {"attention_layers": [1, 2], "attention_weights": [0.01, 0.05],
                     "reduction": "row"},
            "train": {"batch_size": 4, "holdout_fraction": 0.25, "proxy_steps": 2,
                      "max_steps_per_epoch": 2, "attack": {"eps": 8.0, "steps": 2}},
            "eval": {"batch_size": 8},
        },
        "search": {
            "loss.attention_lambda": {"type": "categorical", "values": [0.0, LAMBDA_HUGE]},
            "pseudo.min_size": {"type": "int", "low": 6, "high": 14},
        },
        "start_points": [{"loss.attention_lambda": 0.0, "pseudo.min_size": 10},
                         {"loss.attention_lambda": LAMBDA_HUGE, "pseudo.min_size": 10}],
        "objectives": [{"metric": "loss", "mode": "min"}],
        "budget": {"trials": 3, "epochs": 2},
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "resources": {"workers_per_trial": 1, "cpus_per_worker": 0.5, "trial_cpus": 0.25,
                      "max_concurrent": 1},
        "final_eval": {"eps": [8.0], "steps": 2, "batch_size": 8, "n_panels": 0, "actors": 1,
                       "suite": {"steps": 2, "restarts": 1, "square_queries": 4,
                                 "square_images": 4, "check_steps": 2},
                       "rank_agreement": {"steps": 2, "bootstrap": 200}},
        "seed": 0,
    }
    return space | over


# --- pure parts -------------------------------------------------------------------------------
def _trial(tid: str, target: str, **metrics) -> TrialSummary:
    return TrialSummary(trial_id=tid, target=target, params={}, metrics=metrics, epochs=2,
                        state="completed", checkpoint=f"/ckpt/{tid}", scores=metrics,
                        score_epoch=2)


def test_pareto_front_keeps_the_non_dominated_points():
    points = [[0.9, 0.1], [0.5, 0.5], [0.4, 0.4], [0.1, 0.9], [0.9, 0.1]]
    assert pareto_front(points) == [0, 1, 3, 4]


def test_select_best_per_target_single_and_multi_objective(synthetic_root):
    trials = [_trial("a", "s/disc", loss=3.0), _trial("b", "s/disc", loss=1.0),
              _trial("c", "s/weave", loss=2.0), _trial("d", "s/weave", loss=float("nan"))]
    trials.append(TrialSummary("e", "s/disc", {}, {"loss": 0.1}, 1, "error",
                               scores={"loss": 0.1}))
    trials.append(TrialSummary("f", "s/disc", {}, {"loss": 0.5}, 1, "stopped_early", "/c/f",
                               scores={"loss": 0.5}))
    space = space_from_dict(tiny_space(synthetic_root))
    best = select_best(trials, space)
    assert {k: [t.trial_id for t in v] for k, v in best.items()} == {"s/disc": ["b"],
                                                                     "s/weave": ["c"]}
    multi = space_from_dict(tiny_space(
        synthetic_root, scheduler={"type": "none"}, final_eval={"top_n": 3},
        objectives=[{"metric": "proxy_clean_image_auroc"},
                    {"metric": "proxy_robust_image_auroc"}]))
    front = [_trial("p", "s/disc", proxy_clean_image_auroc=0.9, proxy_robust_image_auroc=0.2),
             _trial("q", "s/disc", proxy_clean_image_auroc=0.6, proxy_robust_image_auroc=0.6),
             _trial("r", "s/disc", proxy_clean_image_auroc=0.5, proxy_robust_image_auroc=0.5),
             _trial("s", "s/disc", proxy_clean_image_auroc=0.3, proxy_robust_image_auroc=0.7)]
    assert [t.trial_id for t in select_best(front, multi)["s/disc"]] == ["p", "q", "s"]
    # with a stated scalarisation the front is ordered by it: 0.2 x 0.9 + 0.2 < 0.2 x 0.6
    # + 0.6 < 0.2 x 0.3 + 0.7 (weights 0.2 and 1: robustness counts five times as much)
    weighted = space_from_dict(tiny_space(
        synthetic_root, final_eval={"top_n": 3},
        scheduler={"type": "asha", "grace_period": 1, "weights": [0.2, 1.0]},
        objectives=[{"metric": "proxy_clean_image_auroc"},
                    {"metric": "proxy_robust_image_auroc"}]))
    assert [t.trial_id for t in select_best(front, weighted)["s/disc"]] == ["s", "q", "p"]


def test_max_concurrent_fits_trials_and_their_workers(synthetic_root):
    from pgray.distributed.tune import derive_max_concurrent

    def space(**res):
        return space_from_dict(tiny_space(synthetic_root, resources=res)).resources

    demo = space(cpus_per_worker=0.75, trial_cpus=0.25)
    assert derive_max_concurrent(demo, {"CPU": 2.0}, 6) == 2
    assert derive_max_concurrent(demo, {"CPU": 16.0}, 6) == 6  # never more than the trials
    gpu = space(workers_per_trial=2, cpus_per_worker=4, gpus_per_worker=1)
    assert derive_max_concurrent(gpu, {"CPU": 64.0, "GPU": 8.0}, 24) == 4
    assert derive_max_concurrent(space(max_concurrent=3), {"CPU": 1.0}, 24) == 3
    with pytest.raises(ClusterError, match="one trial needs .* but the cluster has"):
        derive_max_concurrent(gpu, {"CPU": 64.0}, 24)


def test_per_target_search_runs_one_seeded_optuna_study_per_target(synthetic_root):
    from pgray.distributed.tune import build_searcher, param_space
    from pgray.distributed.tune_targets import TARGET_KEY

    def suggestions() -> list[dict]:
        space = space_from_dict(tiny_space(synthetic_root, budget={"trials": 3, "epochs": 2}))
        searcher = build_searcher(space, ["s/disc", "s/weave"])
        assert searcher.set_search_properties(None, None, param_space(space))
        out = [searcher.suggest(f"t{i}") for i in range(7)]
        searcher.on_trial_complete("t0", {"loss": 1.0, "epoch": 2.0})
        study = searcher._inner["s/disc"]._ot_study  # t0 was told to its own study only
        assert [t.state.name for t in study.trials].count("COMPLETE") == 1
        assert searcher._inner["s/weave"]._ot_study.trials[0].state.name == "RUNNING"
        return out

    first = suggestions()
    assert [s[TARGET_KEY] for s in first[:6]] == ["s/disc", "s/weave"] * 3  # round robin
    assert first[6] == "FINISHED"  # 3 trials per target handed out
    # each study starts with the start points, in order, then samples on its own
    assert [s["loss.attention_lambda"] for s in first[:4]] == [0.0, 0.0, LAMBDA_HUGE,
                                                               LAMBDA_HUGE]
    assert all(6 <= s["pseudo.min_size"] <= 14 for s in first[:6])
    assert suggestions() == first  # seeded: the same proposals again


def test_studies_in_an_optuna_storage_are_read_by_optuna_and_resumed(synthetic_root,
                                                                      tmp_path):
    """resources.optuna_storage: each target's study is `<sweep>:<target>` in that database,
    where Optuna's own API reads it; Tune's saved searcher restored goes on in the same
    study; a new sweep of the same name there is refused, naming the studies."""
    import optuna

    from pgray.distributed.tune import build_searcher, param_space
    from pgray.distributed.tune_targets import PerTargetSearch
    from pgray.errors import PgrayError

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    space = space_from_dict(tiny_space(synthetic_root, resources={"optuna_storage": url}))
    searcher = build_searcher(space, ["s/disc"])
    assert searcher.set_search_properties(None, None, param_space(space))
    searcher.suggest("t0")
    searcher.on_trial_complete("t0", {"loss": 1.5, "epoch": 2.0})
    searcher.save(str(tmp_path / "searcher.pkl"))
    study = optuna.load_study(study_name="tiny:s/disc", storage=url)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert [t.value for t in done] == [1.5]
    assert done[0].params["loss.attention_lambda"] == 0.0  # the first start point

    # Tune's restore: searchers built afresh (another name: nothing there yet), then the
    # saved state read back into them
    other = space_from_dict(tiny_space(synthetic_root, name="other",
                                       resources={"optuna_storage": url}))
    restored = PerTargetSearch(build_searcher(other, ["s/disc"])._inner, 3, "loss", "min")
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.suggest("t1")
    restored.on_trial_complete("t1", {"loss": 0.5, "epoch": 2.0})
    study = optuna.load_study(study_name="tiny:s/disc", storage=url)
    assert [t.value for t in study.trials if t.state.name == "COMPLETE"] == [1.5, 0.5]
    with pytest.raises(PgrayError, match=r"already holds the studies \['tiny:s/disc'\]"):
        build_searcher(space, ["s/disc"])
    with pytest.raises(Exception, match="optuna_storage"):
        space_from_dict(tiny_space(synthetic_root, resources={"optuna_storage": "x.db"}))


def test_asha_judges_a_trial_at_its_rung_on_its_first_measured_result():
    """A result without the compared metric (NaN between proxy epochs, or a proxy that
    measured nothing) never reaches ASHA: recorded at a rung as NaN it would let the trial
    pass that rung unjudged."""
    from ray.tune.experiment import Trial

    from pgray.distributed.tune_targets import TARGET_KEY, PerTargetScheduler

    scheduler = PerTargetScheduler(["s/disc"], "objective_scalar", "max", max_t=8,
                                   grace_period=2, reduction_factor=2)  # rungs at 2 and 4
    leader, late = (Trial("pgray_trial", config={TARGET_KEY: "s/disc"}, trial_id=t, stub=True)
                    for t in ("leader", "late"))
    for trial in (leader, late):
        scheduler.on_trial_add(None, trial)
    assert scheduler.on_trial_result(None, leader, {"epoch": 2, "objective_scalar": 1.0}) == (
        "CONTINUE")
    assert scheduler.on_trial_result(None, late, {"epoch": 2, "objective_scalar": math.nan}) == (
        "CONTINUE")
    assert scheduler.on_trial_result(None, late, {"epoch": 3, "objective_scalar": 0.5}) == "STOP"
    assert scheduler.stopped() == 1


# --- end to end: kill and resume ---------------------------------------------------------------
def _experiment_states(exp_dir: Path) -> dict[str, str]:
    files = sorted(exp_dir.glob("experiment_state-*.json"))
    if not files:
        return {}
    try:
        data = json.loads(files[-1].read_text())
    except json.JSONDecodeError:  # being rewritten
        return {}
    return {json.loads(a)["trial_id"]: json.loads(a)["status"] for a, _ in data["trial_data"]}


def _sweep_cmd(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pgray.sweep", "--config", str(config), "--out", str(out),
            *extra]


def _runs(uri: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("pgray")
    return client.search_runs([exp.experiment_id], max_results=200)


# The second trial's training attack: its first epoch (2 steps x 2 batches x 20 PGD steps,
# several times the other trials' epochs: seconds on a 2-core host) lasts dozens of polls, so
# the first run is killed while that trial trains, after the first one ended.
SLOW_STEPS = 20
POLL_S = 0.1


def _kill_when_first_trial_ended(proc: subprocess.Popen, exp_dir: Path, log: Path) -> dict:
    """The trial states Tune had saved when the first trial ended: the moment the first run
    is SIGKILLed (Tune saves its state at every step of its loop in that run)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        states = _experiment_states(exp_dir)
        if "TERMINATED" in states.values():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            return states
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(POLL_S)
    pytest.fail("no trial finished within 240 s")


@pytest.mark.slow
def test_sweep_killed_after_first_trial_resumes_without_rerunning_it(synthetic_root, tmp_path):
    config = tmp_path / "tiny.yaml"
    # two objectives, so ASHA stops on their stated weighted sum; the margin's weight is
    # small enough that the huge-lambda trial's loss still decides (the proxy runs every
    # epoch here anyway: no extra cost)
    space = tiny_space(synthetic_root, objectives=MARGIN_AND_LOSS,
                       scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2,
                                  "weights": [1.0, 0.001]})
    # the huge-lambda trial, second, trains with SLOW_STEPS: the window the kill falls in;
    # Optuna's third trial draws its steps on a log scale (mostly few)
    space["search"]["train.attack.steps"] = {"type": "int", "low": 2, "high": SLOW_STEPS,
                                             "log": True}
    space["start_points"] = [point | {"train.attack.steps": steps} for point, steps in
                             zip(space["start_points"], (2, SLOW_STEPS))]
    space["final_eval"]["clean_baseline"] = True  # the best config retrained without attacks
    space["final_eval"]["recipe_baseline"] = True  # the fixed config, nothing searched
    space["seeds"] = [0, 1]  # and again with seed 1 (the trials ran seed 0)
    config.write_text(yaml.safe_dump(space))
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}"
    # A short private Ray temp dir (socket paths are length-limited) that names our processes.
    ray_tmp = tempfile.mkdtemp(prefix="pgsw", dir="/tmp")
    env = os.environ | {"MLFLOW_TRACKING_URI": uri, "RAY_TMPDIR": ray_tmp,
                        "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    log = (tmp_path / "first.log").open("w")
    exp_dir = out / "ray" / "tiny"
    # Tune saves the trial states at every step of its loop (by default at most every 10 s,
    # which could let the slow trial end before the first one was seen ended)
    proc = subprocess.Popen(_sweep_cmd(config, out, "--quiet"), cwd=tmp_path,
                            env=env | {"TUNE_GLOBAL_CHECKPOINT_S": "0"}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        states = _kill_when_first_trial_ended(proc, exp_dir, tmp_path / "first.log")
        kill_processes_mentioning(ray_tmp)  # the killed driver's Ray dies with it
        finished_before = sorted(t for t, s in states.items() if s == "TERMINATED")
        assert len(finished_before) == 1, states
        first_id = finished_before[0]
        first_result = (next(exp_dir.glob(f"*{first_id}*")) / "result.json").read_text()
        assert not (out / "sweep_summary.json").exists()  # it really was interrupted

        resumed = subprocess.run(_sweep_cmd(config, out, "--resume", "--register", "tiny"),
                                 cwd=tmp_path, env=env, capture_output=True, text=True,
                                 timeout=300)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        # the default console: pgray's line per trial that ends, none of Tune's tables
        console = resumed.stdout + resumed.stderr
        assert "Trial status:" not in console and "╭" not in console, console[-3000:]
        # the two trials the first run left, then the clean twin, the recipe and the other
        # seed
        ended = [line for line in console.splitlines() if line.startswith("trial ")]
        searched = [line for line in ended if "(loss.attention_lambda=" in line]
        assert [line.split()[1] for line in searched] == ["2/3", "3/3"], console
        assert all(" synthetic/disc: " in line for line in searched), console
        assert any("stopped early (ASHA) after 1 epoch(s)" in line for line in searched)
        assert len(ended) == 5 and "synthetic/disc@seed1: completed" in console
        # the rank agreement: after the final results, its table in the console
        assert "rank agreement: 3 trial(s) on the test split" in console
        assert console.index("## Rank agreement: proxy vs test") > console.index(
            "## Final evaluation")
        assert "report: " in console and "report.html" in console
        assert "registered: tiny-disc version 1 (worst-case AD" in console
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        kill_processes_mentioning(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    summary = json.loads((out / "sweep_summary.json").read_text())
    trials = {t["trial_id"]: t for t in summary["trials"]}
    assert summary["resumed"] is True and len(trials) == 3

    # the finished trial was not rerun: Tune holds exactly its two first-run results
    assert (next(exp_dir.glob(f"*{first_id}*")) / "result.json").read_text() == first_result
    first = trials[first_id]
    assert first["state"] == "completed" and first["epochs"] == 2
    assert first["params"] == {"loss.attention_lambda": 0.0, "pseudo.min_size": 10,
                               "train.attack.steps": 2}

    # ASHA (its rungs replayed from the first run) stopped the huge-lambda trial after epoch 1
    huge = [t for t in trials.values() if t["params"]["loss.attention_lambda"] == LAMBDA_HUGE
            and t["params"]["pseudo.min_size"] == 10]
    assert len(huge) == 1 and huge[0]["state"] == "stopped_early" and huge[0]["epochs"] == 1
    assert huge[0]["metrics"]["loss"] > 2 * first["metrics"]["loss"]
    # ... on the stated sum, reported by every epoch: below the first trial's at that rung
    first_epochs = [json.loads(line) for line in first_result.splitlines() if line.strip()]
    assert [r["epoch"] for r in first_epochs] == [1, 2]
    for result in (first_epochs[0], first_epochs[1], huge[0]["metrics"]):
        assert result["objective_scalar"] == pytest.approx(_scalar(result), rel=1e-9)
    assert huge[0]["metrics"]["objective_scalar"] < first_epochs[0]["objective_scalar"]
    # the proxy's logged interval and margins reach the trial's results
    assert first["metrics"]["proxy_clean_image_auroc_lo"] <= first["metrics"][
        "proxy_clean_image_auroc"] <= first["metrics"]["proxy_clean_image_auroc_hi"]
    assert math.isfinite(first["metrics"]["proxy_worst_image_margin"])
    # the third trial is Optuna's own proposal, inside the space
    third = [t for t in trials.values() if t["trial_id"] not in (first_id, huge[0]["trial_id"])]
    assert 6 <= third[0]["params"]["pseudo.min_size"] <= 14

    _check_mlflow(uri, summary, trials, first_id, huge[0]["trial_id"])
    _check_best_and_final(out, summary, trials)
    _check_rank_agreement(uri, out, summary)
    _check_registered(uri, out, summary, tmp_path, env)


def _check_registered(uri: str, out: Path, summary: dict, tmp_path: Path, env: dict) -> None:
    """--register: the sweep's pick (the best trial's model, seed 0, not its twin, recipe or
    other seed) is version 1 of tiny-disc and champion; its rows and card name it; another
    model of the sweep registered after it (the clean twin: same split, suite and budget)
    moves the alias only if better beyond both intervals; and pgray.evaluate on
    models:/tiny-disc/1, with no other flag, reproduces the registered worst case within its
    interval."""
    import pyarrow.parquet as pq
    from mlflow.tracking import MlflowClient

    from pgray.tracking.registry import Pick, beats, register

    client = MlflowClient(uri)
    (line,) = summary["registered"]
    assert line.startswith("tiny-disc version 1 (") and line.endswith("champion (the first)")
    champion = client.get_model_version_by_alias("tiny-disc", "champion")
    model_id = champion.tags["pgray.model_id"]
    rows = pq.read_table(summary["benchmarks"][0]["parquet"]).to_pylist()
    mine = [r for r in rows if r["model_id"] == model_id]
    assert {(r["detector"], r["seed"]) for r in mine} == {("patchguard", 0)}
    worst = next(r for r in mine if r["attack"] == "worst_case")
    assert float(champion.tags["pgray.worst_case_ad"]) == worst["image_auroc"]
    cards = [json.loads(Path(p).read_text()) for p in summary["benchmarks"][0]["cards"]]
    assert {c["detector"]: c["model"]["model_id"] for c in cards if c["model"]["seed"] == 0
            } == {"patchguard": model_id}
    models = summary["benchmarks"][0]["models"]
    assert len(models) == 4  # the two seeds' models, the twin and the recipe
    note = next(r for r in _runs(uri) if r.data.tags.get("pgray.kind") == "sweep").data.tags[
        "mlflow.note.content"]
    assert model_id in note and "registered: tiny-disc version 1" in note

    twin = next(Pick(m, f) for m, f in models.items() if f["detector"] == "patchguard_clean")
    (second,) = register(uri, "tiny", [twin])
    moved = beats(twin.figures, champion.tags)
    now = client.get_model_version_by_alias("tiny-disc", "champion").version
    assert int(now) == (2 if moved else 1), second
    assert ("beating version 1" in second) == moved

    again = tmp_path / "again"
    done = subprocess.run([sys.executable, "-m", "pgray.evaluate", "--checkpoint",
                           "models:/tiny-disc/1", "--out", str(again), "--quiet"],
                          cwd=tmp_path, env=env | {"PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "inside the recorded interval" in done.stdout, done.stdout
    metrics = json.loads((again / "metrics.json").read_text())
    repeat = next(r for r in metrics["results"] if r["attack"] == "worst_case")
    assert worst["image_auroc_ci_low"] <= repeat["image_auroc"] <= worst["image_auroc_ci_high"]


def _check_mlflow(uri: str, summary: dict, trials: dict, first_id: str, huge_id: str) -> None:
    from mlflow.tracking import MlflowClient

    runs = _runs(uri)
    parents = [r for r in runs if r.data.tags.get("pgray.kind") == "sweep"]
    assert len(parents) == 1  # reopened on resume, not duplicated
    parent = parents[0]
    assert parent.info.run_id == summary["parent_run_id"] and parent.info.status == "FINISHED"
    children = {r.data.tags["pgray.trial_id"]: r for r in runs
                if r.data.tags.get("pgray.kind") == "trial"
                and r.data.tags["pgray.sweep"] == "tiny"}
    # a trial the killed driver started (or ended) after Tune last saved the experiment is
    # not in the resumed one: its run is tagged lost, never left RUNNING
    lost = {tid: r for tid, r in children.items() if tid not in trials}
    assert all(r.info.status in ("KILLED", "FINISHED")
               and r.data.tags["pgray.trial_state"] == "lost" for r in lost.values()), {
        tid: (r.info.status, r.data.tags.get("pgray.trial_state")) for tid, r in lost.items()}
    children = {tid: r for tid, r in children.items() if tid in trials}
    assert set(children) == set(trials)
    client = MlflowClient(uri)
    for tid, run in children.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED"
        assert run.data.tags["pgray.trial_state"] == trials[tid]["state"]
        assert "epoch_began_at" not in run.data.metrics  # a timing stamp, not a metric
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
        # each epoch once; a stopped trial's worker may finish the epoch it was in when
        # Tune stopped it, so MLflow can hold one epoch more than Tune saw
        assert steps == list(range(len(steps))), (tid, steps)
        extra = 1 if trials[tid]["state"] == "stopped_early" else 0
        assert trials[tid]["epochs"] <= len(steps) <= trials[tid]["epochs"] + extra, (tid, steps)
        assert float(run.data.params["loss.attention_lambda"]) == trials[tid]["params"][
            "loss.attention_lambda"]
    assert children[huge_id].data.tags["pgray.epochs_done"] == "1"
    # lineage: each trial's training split as its input (digest: the split's fingerprint);
    # system metrics of the node it trained on, and of the final evaluation's
    import socket

    node = socket.gethostname()
    for run in children.values():
        (split,) = run.inputs.dataset_inputs
        assert split.dataset.name == "synthetic/disc/train" and len(split.dataset.digest) == 16
        assert split.tags[0].value == "training"
    cpu = f"system/{node}/cpu_utilization_percentage"
    assert all(cpu in r.data.metrics for r in children.values())
    assert f"system/{node}/system_memory_usage_megabytes" in children[first_id].data.metrics
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best", "results.md", "trials.md", "search_space.yaml", "report.html"} <= artifacts
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "best")] == [
        "best/synthetic-disc.yaml"]
    bench = [r for r in runs if r.data.tags.get("pgray.kind") == "benchmark"]
    assert len(bench) == 1 and bench[0].data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert cpu in bench[0].data.metrics
    assert parent.data.tags["pgray.best_trials"] == summary["best"]["synthetic/disc"][0]
    # the run's description in the UI: a summary that fits (MLflow's 8,000 characters),
    # linking the full tables, with a compare link of the trials
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith("## Sweep tiny: 3 trials") and len(note) <= 8000
    assert "**results.md**" in note and "**report.html**" in note
    link = next(line for line in note.splitlines() if "compare-runs" in line)
    assert all(r.info.run_id in link for r in children.values())
    # the clean twin: a trial of its own experiment, the best trial's parameters, no attacks
    twins = [r for r in runs if r.data.tags.get("pgray.sweep") == "tiny-clean"]
    assert len(twins) == 1 and twins[0].data.tags["mlflow.parentRunId"] == parent.info.run_id
    best = trials[summary["best"]["synthetic/disc"][0]]
    assert twins[0].data.params["train.adversarial"] == "False"
    assert float(twins[0].data.params["loss.attention_lambda"]) == best["params"][
        "loss.attention_lambda"]
    # the recipe: the fixed config, nothing searched applied, the trials' epochs, attacks on
    recipe = [r for r in runs if r.data.tags.get("pgray.sweep") == "tiny-recipe"]
    assert len(recipe) == 1 and recipe[0].data.params["train.adversarial"] == "True"
    assert float(recipe[0].data.params["loss.attention_lambda"]) == (
        ExperimentConfig().loss.attention_lambda)
    assert recipe[0].data.params["train.epochs"] == "2"
    # the other seed: the best trial's parameters, trained with seed 1, attacks on
    again = [r for r in runs if r.data.tags.get("pgray.sweep") == "tiny-seeds"]
    assert len(again) == 1 and again[0].data.params["train.seed"] == "1"
    assert again[0].data.params["train.adversarial"] == "True"
    assert float(again[0].data.params["loss.attention_lambda"]) == best["params"][
        "loss.attention_lambda"]


def _check_best_and_final(out: Path, summary: dict, trials: dict) -> None:
    best_id = summary["best"]["synthetic/disc"][0]
    best_loss = trials[best_id]["metrics"]["loss"]
    # no select_metric: the last epoch is evaluated, and it is what the trial was ranked by
    last = trials[best_id]["metrics"]
    assert trials[best_id]["scores"] == {"loss": best_loss,
                                         "proxy_clean_image_margin": last[
                                             "proxy_clean_image_margin"]}
    assert trials[best_id]["score_source"] == "last" and trials[best_id]["score_epoch"] == 2
    assert "| scored at |" in (out / "trials.md").read_text()
    assert (out / "trials.md").read_text().startswith(STATED + "\n")
    assert STATED in (out / "results.md").read_text()
    assert best_loss == min(t["metrics"]["loss"] for t in trials.values()
                            if t["state"] != "error")
    path = Path(summary["best_configs"]["synthetic/disc"][0])
    cfg = ExperimentConfig.from_yaml(path)
    assert cfg.data.category == "disc" and cfg.train.epochs == 2
    assert cfg.loss.attention_lambda == trials[best_id]["params"]["loss.attention_lambda"]
    assert cfg.pseudo.min_size == trials[best_id]["params"]["pseudo.min_size"]
    for seed in (0, 1):  # the best trial (seed 0) and its config trained with seed 1
        assert (out / "best" / "top1" / "synthetic" / "disc" / f"seed{seed}"
                / "checkpoint.pt").is_file()
    text = (out / "results.md").read_text()
    assert "Mean over training seeds 0, 1" in text
    assert ("Final evaluation: the adaptive suite (members at 2 steps x 1 restarts) beside the"
            " protocol PGD-2, eps 8/255 (short attacks") in text
    assert "Proxy vs test" in text and "| synthetic/disc |" in text
    import pyarrow.parquet as pq

    rows = pq.read_table(summary["benchmarks"][0]["parquet"]).to_pylist()
    attacks = sorted(["clean", "protocol", "det_topk", "det_lse", "loc_mask", "apgd_det",
                      "apgd_loc", "square_det", "worst_case", "check_large_eps"])
    # each seed's model, and the clean-trained twin and the recipe beside them
    for detector, seed in (("patchguard", 0), ("patchguard", 1), ("patchguard_clean", None),
                           ("patchguard_recipe", None)):
        assert sorted(r["attack"] for r in rows if r["detector"] == detector
                      and r["seed"] == seed) == attacks
    assert (out / "best" / "clean" / "synthetic" / "disc" / "checkpoint.pt").is_file()
    assert "patchguard_clean" in text
    assert all(0.0 <= r["image_auroc"] <= 1.0 for r in rows)
    # a robustness card per model (the two seeds' and the twin's), listed in the summary
    cards = [json.loads(Path(p).read_text()) for p in summary["benchmarks"][0]["cards"]]
    assert sorted(c["detector"] for c in cards) == ["patchguard", "patchguard",
                                                    "patchguard_clean", "patchguard_recipe"]
    assert {c["threat"] for c in cards} == {"linf"}
    # the report: every section, the trials' parallel coordinates and the curve as images
    from browser import Dom

    dom = Dom((out / "report.html").read_text())
    assert dom.sections == ["results", "trials", "proxy-gap", "rank-agreement", "front",
                            "flags", "panels", "run"]
    assert len(dom.images) >= 2 and (out / "trials_parallel.png").stat().st_size > 0
    assert "patchguard_clean" in " ".join(dom.text)


def _check_rank_agreement(uri: str, out: Path, summary: dict) -> None:
    """Every trial with a checkpoint on the test split after the pick, proxy against test:
    coefficients with intervals in sweep_summary.json, results.md, MLflow and the report's
    scatter and front (the recipe's point beside the trials)."""
    import math

    from mlflow.tracking import MlflowClient

    ranks = summary["rank_agreement"]
    assert set(ranks) == {"clean_image_auroc", "worst_image_auroc", "clean_pixel_auroc",
                          "worst_pixel_auroc", "proxy_source"}
    assert sum(ranks["proxy_source"].values()) == 3  # every trial had a checkpoint
    for metric, entry in ranks.items():
        if metric == "proxy_source":
            continue
        assert entry["n"] == 3 and set(entry["targets"]) == {"synthetic/disc"}
        assert len(entry["pairs"]["synthetic/disc"]) == 3
        for method in ("spearman", "kendall"):
            value = entry[method]["value"]
            # defined, or undefined with its reason (a constant side on 3 trials)
            assert (value is not None and -1 <= entry[method]["lo"] <= value
                    <= entry[method]["hi"] <= 1) or "reason" in entry, (metric, entry)
    clean = ranks["clean_image_auroc"]
    assert math.isfinite(clean["spearman"]["value"]) and math.isfinite(
        clean["kendall"]["value"]), clean
    rows = summary["front"]["synthetic/disc"]
    assert len(rows["trials"]) == 3 and rows["picked"] == summary["best"]["synthetic/disc"][0]
    assert set(rows["recipe"]) == {"clean_image_auroc", "worst_image_auroc",
                                   "worst_pixel_auroc"}
    text = (out / "results.md").read_text()
    assert "## Rank agreement: proxy vs test" in text
    assert "| clean_image_auroc | all | 3 |" in text
    parent = next(r for r in _runs(uri) if r.data.tags.get("pgray.kind") == "sweep")
    assert parent.data.metrics["rank/clean_image_auroc/spearman"] == clean["spearman"]["value"]
    assert "rank/synthetic/disc/clean_image_auroc/kendall" in parent.data.metrics
    artifacts = {a.path for a in MlflowClient(uri).list_artifacts(parent.info.run_id)}
    assert {"rank_synthetic-disc.png", "front_synthetic-disc.png"} <= artifacts
    from browser import Dom

    dom = Dom((out / "report.html").read_text())
    captions = " ".join(dom.text)
    assert "rank_synthetic-disc" in captions and "front_synthetic-disc" in captions


def test_fixed_configuration_without_search_gives_one_trial_per_target(synthetic_root):
    from pgray.distributed.tune import build_scheduler, build_searcher, param_space
    from pgray.distributed.tune_targets import TARGET_KEY

    space = space_from_dict(tiny_space(synthetic_root, search={}, start_points=[],
                                       budget={"trials": 1, "epochs": 2},
                                       scheduler={"type": "none"}))
    assert param_space(space) == {} and build_scheduler(space, ["a/x"]) is None
    searcher = build_searcher(space, ["a/x", "b/y"])
    assert [searcher.suggest(f"t{i}") for i in range(3)] == [
        {TARGET_KEY: "a/x"}, {TARGET_KEY: "b/y"}, "FINISHED"]
    cfg = space.trial_config(Target("synthetic", str(synthetic_root), "weave"), {})
    assert cfg.data.category == "weave" and cfg.loss.attention_lambda == 1.0
