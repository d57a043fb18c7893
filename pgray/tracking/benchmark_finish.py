"""A benchmark's end: the reliability flags of its rows (certified rows: their base sides
joined), its tables, figures, robustness cards
and report, written and logged to its MLflow run, which is then closed."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from pgray.config.benchmark import BenchmarkConfig
from pgray.tracking.benchmark_run import BenchmarkRun
from pgray.tracking.records import BenchmarkResult


def finish_benchmark(run: BenchmarkRun, cfg: BenchmarkConfig, keys: set[str],
                     failed: list[tuple[Any, str]] = ()) -> BenchmarkResult:
    """The tables, figures, cards and report of the jobs `keys` (those the benchmark asked
    for). Where some of its jobs `failed`, results.md and report.html say first that they are
    incomplete and no card is written (the leaderboard ranks cards; those of an earlier run
    are removed, since they no longer match the tables); the finished rows stay in
    results.parquet for the re-run. The caller raises on the failures after this."""
    from pgray.core.eval_version import git_commit
    from pgray.io import write_text
    from pgray.tracking import cards as robustness
    from pgray.tracking import tables
    from pgray.tracking.certified import flag_rows
    from pgray.tracking.mlflow_runs import flush_all, retry
    from pgray.tracking.models import finish_models, log_models, model_key
    from pgray.tracking.plots import certified_curves, robustness_curves
    from pgray.tracking.report import benchmark_report_data, write_report

    flush_all()  # what the jobs' runs still hold
    out, parent = run.out, run.parent
    # certified rows: flagged apart, their base sides joined from the other jobs' rows
    rows = flag_rows([r for r in tables.read_rows(out) if r["job_key"] in keys])
    incomplete = tables.incomplete_note(
        [f"{job.label()}: {why}" for job, why in failed if job.key in keys], len(keys))
    # a logged model per checkpoint, its id on its rows and cards (none where incomplete)
    model_ids = {} if incomplete else retry(lambda: log_models(
        run.uri, parent.experiment_id, parent.run_id, cfg, rows), "logged models") or {}
    for r in rows:
        r["model_id"] = model_ids.get(model_key(r), r.get("model_id"))
    tables.append_rows(out, rows)
    _tag_flags(run.uri, parent, rows)
    table = tables.markdown_table(rows)
    md = write_text(out / "results.md", f"# Benchmark {cfg.name}\n\n"
                    + (f"**{incomplete}**\n\n" if incomplete else "") + f"{table}\n")
    for path in [out / tables.RESULTS_FILE, md, *robustness_curves(rows, out),
                 *certified_curves(rows, out)]:
        parent.log_artifact(path)
    cards = [] if incomplete else robustness.write_cards(robustness.build_cards(
        rows, git_commit=git_commit(), reported=robustness.paper_numbers(cfg.datasets)), out)
    if incomplete:
        for stale in sorted((out / robustness.CARDS_DIR).glob("*.json")):
            stale.unlink()
        parent.set_tags({"pgray.state": "incomplete"})
    for path in cards:
        parent.log_artifact(path, robustness.CARDS_DIR)
    built = [json.loads(p.read_text()) for p in cards]
    figures = retry(lambda: finish_models(run.uri, model_ids, built), "logged models' cards")
    report = benchmark_report_data(cfg, out, rows)
    report.incomplete = incomplete
    parent.log_artifact(write_report(report, out))
    run.stop_watching()
    parent.finish()
    return BenchmarkResult(rows, out / tables.RESULTS_FILE, md, table,
                           skipped=len(keys) - run.ran, ran=run.ran,
                           mlflow_run_id=parent.run_id, cards=cards, incomplete=incomplete,
                           models=figures or {})


def _tag_flags(uri: str, parent, rows: list[dict[str, Any]]) -> None:
    """Reliability flags as MLflow tags: on each job's run and, per category and eps, on the
    benchmark's run (`pgray.flags.<dataset>.<category>.eps<e>`), with their numbers."""
    from pgray.tracking.mlflow_runs import open_run_later

    by_job: dict[str, list[str]] = defaultdict(list)
    summary: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        notes = [f"{r['attack']} {note}" for note in r.get("flag_notes") or []]
        by_job[r["job_key"]] += notes
        if notes:
            summary[f"pgray.flags.{r['dataset']}.{r['category']}.{_budget(r)}"] += notes
    for job_key, notes in by_job.items():
        if notes:
            open_run_later(uri, f"bench-job:{job_key}").set_tags(
                {"pgray.flags": "; ".join(sorted(set(notes)))[:5000]})
    parent.set_tags({k: "; ".join(sorted(set(v)))[:5000] for k, v in summary.items()})


def _budget(row: dict[str, Any]) -> str:
    """`eps8` for linf (and clean) rows, `<threat>_eps<e>` for the others."""
    threat = row.get("threat") or "linf"
    return (f"eps{row['eps']:g}" if threat in ("linf", "none")
            else f"{threat}_eps{row['eps']:g}")
