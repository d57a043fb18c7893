"""Benchmark on Ray actors: grid, Parquet/Markdown/plots, MLflow, skip-on-rerun, multi-node."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from helpers import tiny_experiment

from pgray.config.base import from_dict
from pgray.config.benchmark import BenchmarkConfig, DetectorEntry
from pgray.core.eval_version import EVAL_VERSION, git_commit
from pgray.pipelines.benchmark import run_benchmark
from pgray.tracking.tables import read_rows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoints(synthetic_root, tmp_path_factory) -> Path:
    from pgray.pipelines.train import TrainRequest, train_category

    base = tmp_path_factory.mktemp("ckpts")
    for category in ("disc", "weave"):
        cfg = tiny_experiment(synthetic_root, category, train={"epochs": 1})
        train_category(TrainRequest(config=cfg, out=base / category, name=f"b-{category}",
                                    progress=False))
    return base


def _config(root, checkpoints, **kw) -> BenchmarkConfig:
    data = {
        "name": "tiny",
        "datasets": [{"dataset": "synthetic", "root": str(root), "categories": ["disc", "weave"],
                      "checkpoint": str(checkpoints / "{category}" / "checkpoint.pt")}],
        "eps": [2.0, 8.0], "steps": [2], "batch_size": 8, "n_panels": 1,
        "actors": {"count": 2, "cpus": 0.5}, "suite": "protocol",
    } | kw
    return from_dict(BenchmarkConfig, data)


TINY_SUITE = {"steps": 2, "restarts": 1, "square_queries": 4, "square_images": 4,
              "check_steps": 2}
MEMBERS = ["protocol", "det_topk", "det_lse", "loc_mask", "apgd_det", "apgd_loc", "square_det",
           "worst_case"]
L2_MEMBERS = ["pgd_det", "pgd_loc", "apgd_det", "apgd_loc", "square_det", "worst_case"]


def test_benchmark_grid_tables_mlflow_and_skip(ray_session, synthetic_root, checkpoints,
                                               tmp_path, mlflow_uri):
    cfg = _config(synthetic_root, checkpoints, suite=TINY_SUITE,
                  threats=[{"threat": "l2", "eps": [1.0]}])
    out = tmp_path / "bench"
    result = run_benchmark(cfg, out, progress=False, register="tiny")
    # per category: clean, the adaptive suite at linf eps 2 and 8 and at L2 eps 1, the
    # large-budget check of linf and of L2
    assert result.ran == 12 and result.skipped == 0
    rows = read_rows(out)
    assert len({r["job_key"] for r in rows}) == 12 and len({r["row_key"] for r in rows}) == 50
    for category in ("disc", "weave"):
        mine = [r for r in rows if r["category"] == category]
        assert sorted(r["attack"] for r in mine) == sorted(
            ["clean", "check_large_eps", "check_large_eps", *MEMBERS, *MEMBERS, *L2_MEMBERS])
        l2 = [r for r in mine if r["threat"] == "l2" and r["attack"] != "check_large_eps"]
        assert sorted(r["attack"] for r in l2) == sorted(L2_MEMBERS)
        assert {r["eps"] for r in l2} == {1.0}
    assert {r["threat"] for r in rows} == {"none", "linf", "l2"}
    for r in rows:
        assert {"threat", "eps", "steps", "alpha", "restarts", "objective", "library", "precision",
                "mask_resize", "split", "checkpoint_sha256", "pgray_version", "attack",
                "flags", "flag_notes", "eval_version", "git_commit", "data_root"} <= set(r)
        assert r["eval_version"] == EVAL_VERSION and r["git_commit"] == git_commit()
        assert isinstance(r["flags"], list) and 0 <= r["image_auroc"] <= 1
        # the bootstrap intervals survive Parquet
        assert r["image_auroc_ci_low"] <= r["image_auroc"] <= r["image_auroc_ci_high"]
    protocol = [r for r in rows if r["attack"] == "protocol"]
    assert {r["eps"] for r in protocol} == {2.0, 8.0}
    assert all(r["alpha"] == pytest.approx(2.5 * r["eps"] / 2) for r in protocol)
    for r in rows:
        if r["attack"] == "worst_case":
            same = [o for o in rows if o["job_key"] == r["job_key"] and o["attack"] not in
                    ("worst_case", "square_det")]
            assert all(r["image_auroc"] <= o["image_auroc"] + 1e-12 for o in same)
    text = (out / "results.md").read_text()
    assert "| disc |" in text and "| **mean** |" in text
    assert "eps 8/255, protocol PGD-2; worst case = the robust number" in text
    assert "AD worst" in text and "| flags |" in text and "Brackets: bootstrap 95 %" in text
    # rows say what the L2 budget was per pixel at the model's 32 px (pgray.core.row_columns)
    assert ("### synthetic (L2 eps 1; 4.6/255 RMS per pixel value at 32 px; worst case = the"
            " robust number)") in text
    assert (out / "auroc_vs_eps.png").stat().st_size > 0
    assert (out / "auroc_vs_eps_l2.png").stat().st_size > 0  # each threat in its own unit

    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("pgray")
    children = client.search_runs([exp.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{result.mlflow_run_id}'")
    kinds = [c.data.tags["pgray.kind"] for c in children]  # a job's run, a model's evaluation
    assert kinds.count("benchmark-job") == 12 and kinds.count("model-eval") == 2
    children = [c for c in children if c.data.tags["pgray.kind"] == "benchmark-job"]
    assert {c.data.tags["category"] for c in children} == {"disc", "weave"}
    suite_run = next(c for c in children if c.data.tags["setting"] == "adaptive_suite_eps8")
    assert {"worst_case/image_auroc", "protocol/image_auroc", "worst_case/image_auroc_ci_low",
            "worst_case/aupro_ci_high"} <= set(suite_run.data.metrics)
    assert not any("_ci_" in k for k in suite_run.data.params)
    assert suite_run.data.tags["threat"] == "linf"
    l2_run = next(c for c in children if c.data.tags["setting"] == "adaptive_suite_l2_eps1")
    assert l2_run.data.tags["threat"] == "l2" and l2_run.data.params["worst_case.threat"] == "l2"
    assert {"worst_case/image_auroc", "pgd_det/image_auroc"} <= set(l2_run.data.metrics)
    parent_files = {a.path for a in client.list_artifacts(result.mlflow_run_id)}
    assert {"results.parquet", "results.md", "auroc_vs_eps.png", "cards",
            "report.html"} <= parent_files

    # the report: every section, the curves (linf, L2) and one panel per category
    # (n_panels 1, the strongest linf suite job's panels and the L2 one's), each image
    # decoded by Chromium
    from browser import Dom, render_dom

    panels = sorted((out / "panels").glob("*/*.png"))
    assert len(panels) == 2 * 3 and all(p.stat().st_size > 0 for p in panels)
    dom = Dom(render_dom(out / "report.html"))
    assert dom.sections == ["results", "flags", "panels", "run"]
    assert len(dom.images) == 2 + len(panels)
    assert all(img["src"].startswith("data:image/png;base64,") and img.get(
        "data-natural-size", "0x0") != "0x0" for img in dom.images)
    text = " ".join(dom.text)
    weave_clean = next(r for r in rows if r["category"] == "weave" and r["attack"] == "clean")
    assert f"{100 * weave_clean['image_auroc']:.1f} [" in text  # a cell with its interval
    assert "synthetic, patchguard (L2 eps 1)" in text

    # one robustness card per category and threat (one detector), in OUT and in MLflow
    names = [f"patchguard__synthetic__{c}__{t}.json" for c in ("disc", "weave")
             for t in ("l2", "linf")]
    assert sorted(p.name for p in (out / "cards").iterdir()) == names
    assert sorted(p.name for p in result.cards) == names
    logged = {a.path for a in client.list_artifacts(result.mlflow_run_id, "cards")}
    assert logged == {f"cards/{n}" for n in names}
    card = json.loads((out / "cards" / names[3]).read_text())
    weave = [r for r in rows if r["category"] == "weave" and r["threat"] in ("linf", "none")]
    worst8 = next(r for r in weave if r["attack"] == "worst_case" and r["eps"] == 8.0)
    assert card["budgets"] == [2.0, 8.0] and card["threat"] == "linf"
    assert card["robust"][1]["worst_case"]["image_auroc"]["value"] == worst8["image_auroc"]
    assert card["robust"][1]["forward_passes"] == worst8["image_steps"] + worst8["queries"] > 0
    assert card["training"] == {"method": "adversarial", "attack": "pgd", "eps": 8.0,
                                "steps": 2}
    assert card["data"]["fingerprint"] == worst8["data_fingerprint"] and len(
        card["data"]["fingerprint"]) == 16
    assert card["model"]["backbone_weights"] == "random init"
    assert card["unreliable"] == bool(card["flags"]) and card["flags"] == sorted(
        {f for r in weave for f in r["flags"]})

    l2 = json.loads((out / "cards" / names[2]).read_text())
    assert l2["threat"] == "l2" and l2["budgets"] == [1.0]

    again = run_benchmark(cfg, out, progress=False, register="tiny")
    assert again.ran == 0 and again.skipped == 12
    assert len(read_rows(out)) == 50
    _check_models(mlflow_uri, result, again, rows, card, tmp_path)


def _check_models(uri: str, result, again, rows, card, tmp_path) -> None:
    """A logged model per checkpoint named by its rows and cards, registered per category
    (the same model again: no second version), and fetched back by pgray.evaluate through
    its alias with no other flag, reproducing the registered worst case within its
    interval."""
    import os
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    ids = {r["category"]: r["model_id"] for r in rows}
    assert len(set(ids.values())) == 2 and all(ids.values())
    assert card["model"]["model_id"] == ids["weave"]
    assert set(result.models) == set(again.models) == set(ids.values())  # found again
    assert [line.split(" version 1 ")[0] for line in result.registered] == ["tiny-disc",
                                                                             "tiny-weave"]
    assert all(line.endswith("champion (the first)") for line in result.registered)
    assert all("already; nothing changed" in line for line in again.registered)
    champion = client.get_model_version_by_alias("tiny-weave", "champion")
    assert int(champion.version) == 1 and champion.tags["pgray.model_id"] == ids["weave"]
    worst = next(r for r in rows if r["category"] == "weave" and r["attack"] == "worst_case"
                 and r["threat"] == "linf" and r["eps"] == 8.0)
    assert float(champion.tags["pgray.worst_case_ad"]) == worst["image_auroc"]
    model = client.get_logged_model(ids["weave"])
    linked = {m.key: m.value for m in model.metrics}
    assert linked["linf_eps8/worst_case/image_auroc"] == worst["image_auroc"]
    assert "l2_eps1/worst_case/image_auroc" in linked and "clean/aupro" in linked

    out = tmp_path / "again"
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[2]),
                        "MLFLOW_TRACKING_URI": uri}
    done = subprocess.run([sys.executable, "-m", "pgray.evaluate", "--checkpoint",
                           "models:/tiny-weave@champion", "--out", str(out), "--quiet"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "inside the recorded interval" in done.stdout, done.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model_id"] == ids["weave"]
    again8 = next(r for r in metrics["results"] if r["attack"] == "worst_case"
                  and r["threat"] == "linf" and r["eps"] == 8.0)
    assert worst["image_auroc_ci_low"] <= again8["image_auroc"] <= worst["image_auroc_ci_high"]
    assert again8["model_id"] == ids["weave"]


def test_actors_match_sequential_numbers(ray_session, synthetic_root, checkpoints, tmp_path,
                                         mlflow_uri):
    cfg = _config(synthetic_root, checkpoints, eps=[8.0])
    a = {r["row_key"]: r for r in run_benchmark(cfg, tmp_path / "a", progress=False).rows}
    s = {r["row_key"]: r for r in run_benchmark(cfg, tmp_path / "s", progress=False,
                                                sequential=True).rows}
    assert a.keys() == s.keys() and len(a) == 6
    for key in a:
        assert a[key]["image_auroc"] == pytest.approx(s[key]["image_auroc"], abs=1e-6)
        assert a[key]["pixel_auroc"] == pytest.approx(s[key]["pixel_auroc"], abs=1e-6)


def test_node_lost_mid_benchmark_every_job_once(synthetic_root, checkpoints, tmp_path,
                                                mlflow_uri, monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    from pgray.distributed.cluster import SHARED_TRACKING_ENV

    monkeypatch.setenv(SHARED_TRACKING_ENV, "1")  # three nodes on one machine share the file
    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        # When each node has finished a job, six remain, three per actor, each a PGD-50 over
        # its category's test split: hundreds of passes, many polls long, so the node is
        # removed with work left whatever the host's speed.
        cfg = _config(synthetic_root, checkpoints, eps=[2.0, 4.0, 8.0], steps=[50],
                      actors={"count": 2, "cpus": 0.5, "max_retries": 4})
        out = tmp_path / "bench"
        box: dict = {}
        worker = threading.Thread(
            target=lambda: box.setdefault("result", run_benchmark(cfg, out, progress=False)))
        worker.start()
        deadline = time.time() + 240
        while time.time() < deadline:  # until both nodes have finished a job
            done = read_rows(out) if (out / "results.parquet").exists() else []
            if len({r["node"] for r in done}) == 2:
                break
            time.sleep(0.05)
        cluster.remove_node(nodes[1])
        worker.join(timeout=300)
        assert not worker.is_alive() and "result" in box
        rows = read_rows(out)
        keys = [r["row_key"] for r in rows]
        assert len({r["job_key"] for r in done}) < 8  # the node was lost with jobs to run
        # 2 categories x (clean + the protocol suite at 3 eps: protocol, worst case), once
        assert len({r["job_key"] for r in rows}) == 8
        assert len(rows) == 14 and len(set(keys)) == 14
        assert len({r["node"] for r in rows}) == 2  # jobs ran on both worker nodes
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_an_actor_keeps_only_its_last_models(synthetic_root, checkpoints, monkeypatch):
    """An evaluation actor serves many checkpoints in turn; it kept every model it ever loaded
    on its device. Now the least recently used goes once MODELS_KEPT are loaded."""
    from pgray.pipelines.components import job_worker
    from pgray.pipelines.components.job_worker import JobEvaluator
    from pgray.pipelines.components.jobs import CLEAN, jobs_for

    monkeypatch.setattr(job_worker, "MODELS_KEPT", 1)
    cfg = _config(synthetic_root, checkpoints)
    entry = cfg.datasets[0]
    clean = {c: next(j for j in jobs_for(cfg, entry, c) if j.kind == CLEAN)
             for c in ("disc", "weave")}
    evaluator = JobEvaluator()
    first = evaluator.run(clean["disc"])["rows"][0]["image_auroc"]
    assert list(evaluator._models) == [clean["disc"].checkpoint_sha256]
    evaluator.run(clean["weave"])
    assert list(evaluator._models) == [clean["weave"].checkpoint_sha256]  # disc unloaded
    assert evaluator.run(clean["disc"])["rows"][0]["image_auroc"] == first  # reloaded, same
    assert list(evaluator._models) == [clean["disc"].checkpoint_sha256]


def test_a_fit_waiting_for_a_cpu_gets_it_from_idle_evaluation_actors(
        ray_session, synthetic_root, checkpoints, tmp_path, mlflow_uri):
    """PatchGuard files exist, a PaDiM baseline is still to fit, and two one-CPU evaluation
    actors fill this 2-CPU Ray: the fit waits for a CPU. Once the PatchGuard jobs are done the
    driver must release the idle actors (it once waited on the fit alone, forever, with both
    cores idle), and every result reaches OUT as it lands."""

    cfg = _config(synthetic_root, checkpoints, eps=[8.0], n_panels=0,
                  actors={"count": 2, "cpus": 1.0}, train_missing=True)
    cfg.datasets[0].categories = ["disc"]
    cfg.datasets[0].detectors = [from_dict(DetectorEntry, {
        "name": "padim", "fit": {"img_size": 32},
        "checkpoint": str(tmp_path / "fits" / "{category}" / "padim.pt")})]
    finished: list = []
    worker = threading.Thread(target=lambda: finished.append(
        run_benchmark(cfg, tmp_path / "out", progress=False)), daemon=True)
    worker.start()
    worker.join(timeout=300)
    assert finished, "the benchmark still waits on a fit whose CPU idle actors hold"
    rows = read_rows(tmp_path / "out")
    assert {r["detector"] for r in rows} == {"patchguard", "padim"}
    assert finished[0].trained == 1 and finished[0].ran == 4
