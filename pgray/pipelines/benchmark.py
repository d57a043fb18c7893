"""Run a benchmark: train missing checkpoints, evaluate the job grid on Ray actors, and write
Parquet, Markdown, plots and MLflow runs. Finished jobs are skipped on re-runs."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
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
        results.append_rows(out, [result["row"]])
        _log_job(uri, parent.run_id, job, result, out)

    if todo:
        _run(todo, cfg, on_result, progress, sequential)
    rows = [r for r in results.read_rows(out) if r["job_key"] in {j.key for j in jobs}]
    rows = _with_flags(rows)
    results.append_rows(out, rows)
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


def _with_flags(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from pgray.tracking.tables import sanity_flags

    flags = sanity_flags(rows)
    return [r | {"flags": ",".join(flags.get(r["job_key"], []))} for r in rows]


def _log_job(uri: str, parent_id: str, job: BenchJob, result: dict[str, Any], out: Path) -> None:
    import tempfile

    from pgray.tracking.mlflow_runs import open_run_or_warn

    row = result["row"]
    child = open_run_or_warn(uri, f"bench-job:{job.key}", run_name=job.label(), parent_run_id=parent_id,
                     tags={"pgray.kind": "benchmark-job", "dataset": job.dataset,
                           "category": job.category, "setting": job.setting,
                           "eps": row.get("eps"), "steps": row.get("steps")})
    child.log_params({k: v for k, v in row.items()
                      if k not in ("image_auroc", "pixel_auroc", "aupro", "wall_s", "time_s")})
    child.log_metrics({k: row[k] for k in ("image_auroc", "pixel_auroc", "aupro", "wall_s")},
                      step=0)
    if result["panels"]:
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in result["panels"].items():
                path = Path(tmp) / name
                path.write_bytes(data)
                child.log_artifact(path, "panels")
    child.finish()


def _plots(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    from pgray.tracking.plots import robustness_curve
    from pgray.tracking.tables import is_protocol

    attacked = [r for r in rows if r["setting"] != "clean" and is_protocol(r)]
    if not attacked:
        return []
    max_steps = max(r["steps"] for r in attacked)
    max_eps = max(r["eps"] for r in attacked)
    by_eps: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    by_steps: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    for r in attacked:
        name = f"{r['dataset']}/{r['category']}"
        if r["steps"] == max_steps:
            by_eps[name][0].append(r["eps"])
            by_eps[name][1].append(r["image_auroc"])
        if r["eps"] == max_eps:
            by_steps[name][0].append(r["steps"])
            by_steps[name][1].append(r["image_auroc"])
    return [
        robustness_curve(out / "auroc_vs_eps.png", dict(by_eps), "eps (1/255)",
                         "robust image AUROC", f"PGD-{max_steps}"),
        robustness_curve(out / "auroc_vs_steps.png", dict(by_steps), "PGD steps",
                         "robust image AUROC", f"eps {max_eps:g}/255"),
    ]
