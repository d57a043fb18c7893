"""Run a benchmark: evaluate every category's checkpoint with the job grid on Ray actors,
training the missing checkpoints first, all at once as far as the cluster allows, and each
category's evaluation starting as soon as its checkpoint exists. Writes Parquet, Markdown,
plots and MLflow runs (`pgray.tracking.benchmark_run`, `benchmark_finish`). Finished jobs are
skipped on re-runs; a benchmark killed while training continues with `resume`.

The flow, top to bottom: the targets and what is missing (`components.targets`, `.fits`), the
checks, the run's results side opened, then three producers (existing files, baseline fits,
trainings) handing targets to one `JobQueue.enqueue`, one wait for everything, the tables."""

from __future__ import annotations

from pathlib import Path

from pgray.config.benchmark import BenchmarkConfig
from pgray.pipelines.components.fits import check_missing, fit_request
from pgray.pipelines.components.specs import training_space
from pgray.pipelines.components.targets import (
    benchmark_targets,
    check_targets,
    checkpoint_path,
    entry_root,
    resolve_targets,
)
from pgray.pipelines.runners.evaluations import Evaluations
from pgray.pipelines.runners.fits import BaselineFits
from pgray.pipelines.runners.queue import JobQueue
from pgray.pipelines.runners.trainings import train_missing
from pgray.tracking.records import BenchmarkResult
from pgray.tracking.registry import benchmark_picks
from pgray.tracking.registry import register as register_models


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
    resume: bool = False,
    storage: str | None = None,
    verbose: bool = False,
    register: str | None = None,
) -> BenchmarkResult:
    from pgray.distributed.cluster import resolve_storage
    from pgray.distributed.preflight import join_checked
    from pgray.distributed.tune_console import tune_verbosity
    from pgray.tracking.benchmark_finish import finish_benchmark
    from pgray.tracking.benchmark_run import BenchmarkRun
    from pgray.tracking.mlflow_store import check_tracking_uri, resolve_tracking_uri

    entries = cfg.entries()  # seeds applied
    targets = benchmark_targets(entries)
    missing = [t for t in targets if not checkpoint_path(*t).is_file()]
    check_missing(missing, cfg.train_missing)
    to_train = [t for t in missing if t.detector is None]
    to_fit = [t for t in missing if t.detector is not None]
    space = training_space(cfg, [(t.entry, t.category) for t in to_train]) if to_train else None
    if space is not None:  # on the driver, before anything is submitted
        check_targets(space, resolve_targets(space))
    store = resolve_storage(storage, out.resolve() / "ray") if to_train else None
    uri = resolve_tracking_uri(mlflow_uri)
    check_tracking_uri(uri)
    if to_train or not sequential:  # every check passes before the benchmark's run opens
        join_checked(address, uri, store, [entry_root(e) for e in entries], worker_logs=verbose)
    run = BenchmarkRun(cfg.name, out, mlflow_uri=uri, parent_run_id=parent_run_id, force=force)
    evaluations = Evaluations(cfg.actors, sequential=sequential, progress=progress)
    queue = JobQueue(cfg, run, evaluations, progress=progress, verbose=verbose)
    for target in targets:
        if target not in missing:
            queue.enqueue(target)
    fits = BaselineFits([(t, fit_request(cfg.name, *t, uri, run.run_id)) for t in to_fit],
                        queue.enqueue, sequential=sequential, cpus=cfg.actors.cpus,
                        gpus=cfg.actors.gpus)
    evaluations.also_poll(fits.poll)
    trained = 0
    if space is not None:
        trained = train_missing(space, to_train, queue.enqueue, evaluations, mlflow_uri=uri,
                                parent_run_id=run.run_id, storage=store, resume=resume,
                                verbose=tune_verbosity(progress, verbose),
                                console=progress and not verbose)
    evaluations.finish()  # and the fits: one wait for everything still to come
    # marked incomplete where jobs failed; raised below
    result = finish_benchmark(run, cfg, queue.keys, evaluations.failures)
    result.trained, result.peak_actors = trained + fits.done, evaluations.peak_actors
    evaluations.check_failures()
    if register:  # the best model of each category (pgray.tracking.registry)
        result.registered = register_models(uri, register, benchmark_picks(result.models))
    return result
