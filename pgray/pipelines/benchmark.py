"""Run a benchmark: train missing checkpoints, evaluate the job grid on Ray actors, and write
Parquet, Markdown, plots and MLflow runs. Finished jobs are skipped on re-runs."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgray.config.benchmark import BenchmarkConfig
from pgray.pipelines.benchmark_jobs import BenchJob, checkpoint_path, expand_jobs


@dataclass
class BenchmarkResult:
    rows: list[dict[str, Any]]
    parquet: Path
    markdown: Path
    table_text: str
    skipped: int
    ran: int
    mlflow_run_id: str | None = None
    # target key -> the held-out proxy metrics of the evaluated epoch (the sweep's final
    # evaluation fills it in, for the proxy-to-test gap)
    proxies: dict[str, dict[str, Any]] = field(default_factory=dict)


def train_missing(cfg: BenchmarkConfig, out: Path, mlflow_uri: str | None,
                  parent_run_id: str | None, progress: bool) -> None:
    """Train a checkpoint (through Ray Train) for every category that has none."""
    from pgray.config import ExperimentConfig, merge
    from pgray.pipelines.benchmark_jobs import categories_of, entry_root
    from pgray.pipelines.train import TrainRequest, train_category

    for entry in cfg.datasets:
        for category in categories_of(entry):
            ckpt = checkpoint_path(entry, category)
            if ckpt.is_file():
                continue
            exp = ExperimentConfig.from_dict(merge(cfg.train, {"data": {
                "dataset": entry.dataset, "root": entry_root(entry), "category": category,
                "options": entry.options}}))
            train_category(TrainRequest(
                config=exp, out=ckpt.parent, name=f"{cfg.name}-{entry.dataset}-{category}",
                workers=cfg.train_workers, use_ray=True, mlflow_uri=mlflow_uri,
                parent_run_id=parent_run_id, progress=progress,
                cpus_per_worker=min(1.0, cfg.actors.cpus),
            ))


def run_benchmark(
    cfg: BenchmarkConfig,
    out: Path,
    *,
    mlflow_uri: str | None = None,
    parent_run_id: str | None = None,
    force: bool = False,
    progress: bool = True,
    sequential: bool = False,
    address: str | None = None,
) -> BenchmarkResult:
    from pgray.attacks.checks import reliability_flags
    from pgray.io import ensure_dir, write_text
    from pgray.tracking import tables as results
    from pgray.tracking.mlflow_runs import check_tracking_uri, open_run, resolve_tracking_uri

    out = ensure_dir(out)
    uri = resolve_tracking_uri(mlflow_uri)
    check_tracking_uri(uri)
    parent = open_run(uri, f"benchmark:{cfg.name}", run_name=f"benchmark {cfg.name}",
                      parent_run_id=parent_run_id, tags={"pgray.kind": "benchmark"})
    if not sequential:
        from pgray.distributed.cluster import connect

        connect(address)
    if cfg.train_missing:
        train_missing(cfg, out, uri, parent.run_id, progress)
    jobs = expand_jobs(cfg)
    done = {r["job_key"] for r in results.read_rows(out)} if not force else set()
    todo = [j for j in jobs if j.key not in done]
    if progress:
        print(f"benchmark {cfg.name}: {len(jobs)} jobs, {len(jobs) - len(todo)} already done,"
              f" {len(todo)} to run", flush=True)

    def on_result(job: BenchJob, result: dict[str, Any]) -> None:
        # Each finished job is in the table before the next one is awaited: an interrupted
        # benchmark loses nothing it finished.
        results.append_rows(out, result["rows"])
        _log_job(uri, parent.run_id, job, result)

    if todo:
        _run(todo, cfg, on_result, progress, sequential)
    rows = [r for r in results.read_rows(out) if r["job_key"] in {j.key for j in jobs}]
    rows = reliability_flags(rows)
    results.append_rows(out, rows)
    _tag_flags(uri, parent, rows)
    table = results.markdown_table(rows)
    md = write_text(out / "results.md", f"# Benchmark {cfg.name}\n\n{table}\n")
    plots = _plots(rows, out)
    for path in [out / results.RESULTS_FILE, md, *plots]:
        parent.log_artifact(path)
    parent.finish()
    return BenchmarkResult(rows, out / results.RESULTS_FILE, md, table,
                           skipped=len(jobs) - len(todo), ran=len(todo),
                           mlflow_run_id=parent.run_id)


def _run(todo, cfg: BenchmarkConfig, on_result, progress: bool, sequential: bool) -> None:
    import functools

    from pgray.pipelines.benchmark_jobs import JobEvaluator

    if sequential:
        run_sequential(todo, JobEvaluator(threads=cfg.actors.threads), on_result, progress)
        return
    from pgray.distributed.actors import run_on_actors

    run_on_actors(todo, functools.partial(JobEvaluator, threads=cfg.actors.threads),
                  count=cfg.actors.count, cpus=cfg.actors.cpus, gpus=cfg.actors.gpus,
                  max_retries=cfg.actors.max_retries, on_result=on_result, progress=progress)


def run_sequential(jobs: list[BenchJob], evaluator, on_result, progress: bool = True) -> int:
    """The same jobs in this process, one after another (the reference for speed-ups)."""
    from pgray.tracking.progress import JobProgress

    tracker = JobProgress(jobs, progress)
    for job in sorted(jobs, key=lambda j: -j.cost):
        on_result(job, evaluator.run(job))
        tracker.update(job, {})
    return len(jobs)


METRIC_KEYS = ("image_auroc", "pixel_auroc", "aupro")


def _log_job(uri: str, parent_id: str, job: BenchJob, result: dict[str, Any]) -> None:
    """One MLflow child run per job: its parameters, and each row's metrics under its attack
    name (`worst_case/image_auroc`, `protocol/pixel_auroc`, ...)."""
    import tempfile

    from pgray.tracking.mlflow_runs import open_run_or_warn

    rows = result["rows"]
    child = open_run_or_warn(uri, f"bench-job:{job.key}", run_name=job.label(),
                             parent_run_id=parent_id,
                             tags={"pgray.kind": "benchmark-job", "dataset": job.dataset,
                                   "category": job.category, "setting": job.setting,
                                   "eps": job.eps})
    child.log_params({f"{r['attack']}.{k}": v for r in rows for k, v in r.items()
                      if k not in (*METRIC_KEYS, "wall_s", "time_s", "flags", "flag_notes")})
    metrics = {f"{r['attack']}/{k}": r[k] for r in rows for k in METRIC_KEYS}
    child.log_metrics(metrics | {"wall_s": rows[0]["wall_s"]}, step=0)
    if result["panels"]:
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in result["panels"].items():
                path = Path(tmp) / name
                path.write_bytes(data)
                child.log_artifact(path, "panels")
    child.finish()


def _tag_flags(uri: str, parent, rows: list[dict[str, Any]]) -> None:
    """Reliability flags as MLflow tags: on each job's run and, per category and eps, on the
    benchmark's run (`pgray.flags.<dataset>.<category>.eps<e>`), with their numbers."""
    from pgray.tracking.mlflow_runs import open_run_or_warn

    by_job: dict[str, list[str]] = defaultdict(list)
    summary: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        notes = [f"{r['attack']} {note}" for note in r.get("flag_notes") or []]
        by_job[r["job_key"]] += notes
        if notes:
            summary[f"pgray.flags.{r['dataset']}.{r['category']}.eps{r['eps']:g}"] += notes
    for job_key, notes in by_job.items():
        if notes:
            open_run_or_warn(uri, f"bench-job:{job_key}").set_tags(
                {"pgray.flags": "; ".join(sorted(set(notes)))[:5000]})
    parent.set_tags({k: "; ".join(sorted(set(v)))[:5000] for k, v in summary.items()})


def _plots(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """Image AUROC against eps per category: the suite's worst case (the robust number) and
    the strongest protocol run (dashed)."""
    from pgray.tracking.plots import robustness_curve

    points: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        if r.get("attack") not in ("worst_case", "protocol"):
            continue
        key = (f"{r['dataset']}/{r['category']} {r['attack']}", r["eps"])
        if key not in points or (r.get("steps") or 0) > (points[key].get("steps") or 0):
            points[key] = r
    series: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    for (name, eps), r in sorted(points.items()):
        series[name][0].append(eps)
        series[name][1].append(r["image_auroc"])
    if not series:
        return []
    return [robustness_curve(out / "auroc_vs_eps.png", dict(series), "eps (1/255)",
                             "image AUROC under attack", "worst case of the suite vs protocol")]
