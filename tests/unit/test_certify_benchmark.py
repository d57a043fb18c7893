"""A benchmark with `certify:` on a tiny PatchGuard (32 px), in this process (no Ray): its
certify job's rows land in results.parquet with every side of the bracket, the base
detector's joined from the other jobs' rows; results.md, the cards, the leaderboard and
report.html show them."""

from __future__ import annotations

import json

from pgray.config.base import from_dict
from pgray.config.benchmark import BenchmarkConfig
from pgray.core.certify import METRICS, SIDES

RADII = [0.1, 0.25]


def test_a_certifying_benchmark_writes_certified_rows_tables_cards_and_plots(
        tmp_path, mlflow_uri):
    import torch

    from pgray.config import ExperimentConfig, tiny_model_config
    from pgray.config.benchmark import ActorConfig
    from pgray.core.checkpoint import save_checkpoint
    from pgray.core.model import PatchGuard
    from pgray.data.synthetic import generate
    from pgray.pipelines.components.targets import JobTarget
    from pgray.pipelines.runners.evaluations import Evaluations
    from pgray.pipelines.runners.queue import JobQueue
    from pgray.tracking.benchmark_finish import finish_benchmark
    from pgray.tracking.benchmark_run import BenchmarkRun
    from pgray.tracking.leaderboard import COLUMNS, ranked
    from pgray.tracking.tables import read_rows

    config = ExperimentConfig(model=tiny_model_config(depth=2))
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "checkpoint.pt", PatchGuard(config.model), config)
    root = generate(tmp_path / "data", seed=0, size=32, n_train=2, n_test=2,
                    categories=("disc",))
    cfg = from_dict(BenchmarkConfig, {
        "name": "c", "eps": [8.0], "steps": [1], "batch_size": 8, "n_panels": 0,
        "suite": {"steps": 2, "restarts": 1, "square_queries": 4, "square_images": 2,
                  "check_steps": 1},
        "certify": {"radii": RADII, "samples": 20, "eot_samples": 2},
        "datasets": [{"dataset": "synthetic", "root": str(root), "categories": ["disc"],
                      "checkpoint": str(ckpt)}]})
    out = tmp_path / "out"
    run = BenchmarkRun(cfg.name, out, mlflow_uri=mlflow_uri, parent_run_id=None, force=False)
    evaluations = Evaluations(ActorConfig(), sequential=True, progress=False)
    queue = JobQueue(cfg, run, evaluations, progress=False)
    queue.enqueue(JobTarget(cfg.entries()[0], "disc"))
    evaluations.finish()
    finish_benchmark(run, cfg, queue.keys, evaluations.failures)
    evaluations.check_failures()

    rows = read_rows(out)
    certified = sorted((r for r in rows if r["attack"] == "certified"),
                       key=lambda r: r["radius"])
    clean = next(r for r in rows if r["attack"] == "clean")
    base_l2 = {r["eps"]: r for r in rows
               if r["attack"] == "worst_case" and r["threat"] == "l2"}
    assert [r["radius"] for r in certified] == RADII and sorted(base_l2) == RADII
    assert {r["job"] for r in certified} == {"certified_l2_r0.1_0.25"}
    for row in certified:
        assert (row["sigma"], row["samples"], row["eot_samples"]) == (0.25, 20, 2)
        assert row["threat"] == "l2" and row["eps"] == row["radius"]
        for side in SIDES:
            assert all(row[f"{side}_{m}"] == row[f"{side}_{m}"] for m in METRICS), side
        for m in METRICS:  # joined from the other jobs' rows when the benchmark finished
            assert row[f"base_{m}"] == clean[m]
            assert row[f"base_attacked_{m}"] == base_l2[row["radius"]][m]
        assert row["flags"] == [] or row["flags"] == ["certified_above_attacked"]
    assert certified[1]["certified_image_auroc"] <= certified[0]["certified_image_auroc"]

    text = (out / "results.md").read_text()
    assert "### synthetic: certified AD by randomized smoothing, bracketed" in text
    table = text.split("certified AD by randomized smoothing, bracketed")[1].split("###")[0]
    assert table.count("| patchguard | disc |") == 2

    cards = [json.loads(p.read_text()) for p in sorted((out / "cards").glob("*.json"))]
    assert sorted(c["threat"] for c in cards) == ["l2", "linf"]
    for card in cards:
        assert [e["radius"] for e in card["certified"]] == RADII
        assert card["certified"][0]["certified"]["image_auroc"]["value"] == (
            certified[0]["certified_image_auroc"])
    l2_card = next(c for c in cards if c["threat"] == "l2")
    assert l2_card["budgets"] == RADII  # the base detector's suite, no certified row
    lines = [dict(zip(COLUMNS, r)) for r in ranked(cards)[0]]
    l2_line = next(ln for ln in lines if ln["threat"] == "l2" and ln["budget"] == "0.1")
    assert l2_line["certified AD"].startswith(
        f"{100 * certified[0]['certified_image_auroc']:.1f}")

    assert (out / "certified_vs_radius_synthetic.png").is_file()
    report = (out / "report.html").read_text()
    assert "certified_vs_radius_synthetic" in report
    assert "synthetic: certified AD by randomized smoothing, bracketed" in report
    assert "certified l2 (radii 0.1, 0.25; sigma 0.25, 20 samples, confidence 0.999)" in report
