"""The sweep: a Tune + Optuna search of one study per category, then a benchmark of the best
trial(s) of each. `python -m pgray.sweep` parses its flags and calls `run_sweep`."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgray.config.search_sections import Target
from pgray.config.search_space import SearchSpace
from pgray.errors import PgrayError
from pgray.io import write_text
from pgray.pipelines.train_eval import check_targets, resolve_targets
from pgray.pipelines.trials import TrialSummary, select_best, summarise
from pgray.tracking.sweep_report import (
    results_text,
    score_epoch_text,
    trials_table,
    write_best_configs,
    write_summary,
)


@dataclass
class SweepRequest:
    space: SearchSpace
    out: Path
    resume: bool = False
    storage: str | None = None
    address: str | None = None
    mlflow_uri: str | None = None
    final_eval: bool = True
    progress: bool = True
    verbose: bool = False  # Ray's full output: Tune's detailed tables, every worker's log


@dataclass
class SweepResult:
    out: Path
    parent_run_id: str
    experiment_path: str
    trials: list[TrialSummary]
    best: dict[str, list[TrialSummary]]
    best_configs: dict[str, list[Path]]
    benchmarks: list[Any] = field(default_factory=list)  # pgray.pipelines.benchmark.BenchmarkResult
    table_text: str = ""
    mlflow_hint: str = ""
    max_concurrent: int = 0
    resumed: bool = False
    wall_s: float = 0.0
    compare_links: dict[str, str] = field(default_factory=dict)  # target -> MLflow compare view
    # proxy vs test over the trials (pgray.pipelines.rank_agreement.rank_agreement); {}: off
    rank_agreement: dict[str, Any] = field(default_factory=dict)
    # per target, the test numbers of each evaluated trial and the recipe, and the pick
    # (pgray.pipelines.rank_eval.RankStage.front)
    front: dict[str, Any] = field(default_factory=dict)


def run_sweep(req: SweepRequest) -> SweepResult:
    from pgray.distributed.cluster import check_tracking_reachable, connect, resolve_storage
    from pgray.distributed.preflight import check_nodes
    from pgray.tracking.mlflow_links import runs_url
    from pgray.tracking.mlflow_store import (
        check_tracking_uri,
        ensure_experiment,
        resolve_tracking_uri,
    )
    from pgray.tracking.report import sweep_report_data, write_report

    started = time.perf_counter()
    space = req.space
    targets = resolve_targets(space)
    check_targets(space, targets)
    out = req.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    uri = resolve_tracking_uri(req.mlflow_uri)
    check_tracking_uri(uri)
    storage = resolve_storage(req.storage, out / "ray")
    joined = connect(req.address, worker_logs=req.verbose)
    check_tracking_reachable(uri)
    check_nodes(storage, [t.root for t in targets if t.root])  # before anything is submitted
    parent = _open_parent(space, uri, out)
    say_progress(req, f"sweep {space.name}: {len(targets)} target(s) x {space.budget.trials} trial(s)"
              f" of {space.epochs()} epoch(s); {joined}")
    from pgray.distributed.tune import SweepContext
    from pgray.distributed.tune_console import tune_verbosity
    from pgray.pipelines.final_eval import FinalStage, benchmark_config
    from pgray.pipelines.train_eval import Evaluations, run_trainings

    res = resolved_resources(space)
    ctx = SweepContext(space=space, targets={t.key: t for t in targets}, mlflow_uri=uri,
                       parent_run_id=parent.run_id,
                       train_storage=f"{storage.rstrip('/')}/{space.name}-train",
                       resources=res, progress=False)
    final = None
    evaluate = req.final_eval and space.final_eval.enabled
    if evaluate:
        actors = benchmark_config(space, targets, out, 1, res.gpus_per_worker or 0.0).actors
        final = FinalStage(req, space, ctx.targets, out, uri, parent.run_id,
                           Evaluations(actors, sequential=False, progress=req.progress))
    search = run_trainings(ctx, storage, resume=req.resume,
                           verbose=tune_verbosity(req.progress, req.verbose),
                           console=req.progress and not req.verbose,
                           on_trial=final.on_trial if final else (lambda t, ts: None),
                           evaluations=final.evaluations if final else None)
    trials = summarise(search.results, space)
    _require_some_success(trials, search.experiment_path)
    for trial in trials:
        trial.times = search.times.get(trial.trial_id)
    if search.resumed:
        _close_lost_trials(parent, space, trials)
    if search.times:
        from pgray.distributed.trial_times import time_shares_line

        say_progress(req, time_shares_line(search.times))
    best = select_best(trials, space)
    configs = write_best_configs(space, best, {t.key: t for t in targets}, out)
    _log_search(parent, space, trials, best, configs, out)
    result = SweepResult(out=out, parent_run_id=parent.run_id,
                         experiment_path=search.experiment_path, trials=trials, best=best,
                         best_configs=configs, max_concurrent=search.max_concurrent,
                         resumed=search.resumed)
    ranks = None
    if space.final_eval.rank_agreement.enabled:  # after the pick: nothing flows back
        from pgray.pipelines.rank_eval import RankStage

        pool = final.evaluations if final else Evaluations(
            benchmark_config(space, targets, out, 1, res.gpus_per_worker or 0.0).actors,
            sequential=False, progress=req.progress)
        ranks = RankStage(space, ctx.targets, out, pool, req.progress)
        ranks.add_trials(trials)
    if final is not None:
        for key, ranked in best.items():  # targets whose last trial ended before this driver
            final.target_done(key, ranked)
        if space.final_eval.clean_baseline:
            final.clean_twins(ctx, storage)
        if space.final_eval.recipe_baseline:
            final.recipe_baselines(ctx, storage, ranks.add_recipe if ranks else None)
        if space.extra_seeds():
            final.other_seeds(ctx, storage)
        result.benchmarks = final.finish()
    elif ranks is not None:
        ranks.evaluations.finish()
        ranks.evaluations.check_failures()
    if ranks is not None:
        result.rank_agreement, result.front = ranks.results(trials, best)
        _log_rank_agreement(parent, result, out)
    experiment = ensure_experiment(uri)
    result.compare_links = compare_links(uri, experiment, parent.run_id, space.name,
                                         targets)
    result.table_text = results_text(space, result)
    write_text(out / "results.md", result.table_text + "\n")
    parent.log_artifact(out / "results.md")
    # the run's description in the MLflow UI: the results table itself
    parent.set_tags({"mlflow.note.content": result.table_text[:60000]})
    result.mlflow_hint = runs_url(uri, experiment)
    result.wall_s = time.perf_counter() - started
    write_summary(result)
    parent.log_artifact(out / "sweep_summary.json")
    parent.log_artifact(write_report(sweep_report_data(space, result, out), out))
    parent.log_metrics({"wall_s": result.wall_s}, step=0)
    parent.set_tags({"pgray.state": "finished"})
    parent.finish()
    return result


def compare_links(uri: str, experiment: str, parent_id: str, sweep: str,
                  targets: list[Target]) -> dict[str, str]:
    """Per target, the MLflow compare view of this sweep's trials (not its clean twins, nor
    the trials of an earlier sweep of the same name)."""
    from pgray.tracking.mlflow_links import compare_url
    from pgray.tracking.mlflow_runs import find_runs

    links = {}
    for t in targets:
        ids = find_runs(uri, experiment, {"pgray.kind": "trial", "pgray.sweep": sweep,
                                          "mlflow.parentRunId": parent_id,
                                          "dataset": t.dataset, "category": t.category})
        if ids:
            links[t.key] = compare_url(uri, experiment, ids)
    return links


def resolved_resources(space: SearchSpace):
    """The space's trial resources with GPUs per worker decided on the connected cluster."""
    import dataclasses

    from pgray.distributed.cluster import resolve_worker_gpus

    res = space.resources
    return dataclasses.replace(res, gpus_per_worker=resolve_worker_gpus(
        res.gpus_per_worker, allow_cpu=res.allow_cpu, where="resources.gpus_per_worker"))


def say_progress(req: SweepRequest, text: str) -> None:
    if req.progress:
        print(text, flush=True)


def _open_parent(space: SearchSpace, uri: str, out: Path):
    """The sweep's MLflow run, found again by its key on resume (never a second one)."""
    import yaml

    from pgray.config.base import to_dict
    from pgray.tracking.mlflow_runs import open_run

    parent = open_run(uri, f"sweep:{space.name}", run_name=f"sweep {space.name}",
                      tags={"pgray.kind": "sweep", "pgray.sweep": space.name,
                            "pgray.state": "running"})
    spec = to_dict(space)
    parent.log_params({"search": spec["search"], "objectives": spec["objectives"],
                       "budget": spec["budget"], "scheduler": spec["scheduler"],
                       "resources": spec["resources"], "seed": space.seed,
                       "sampler": space.sampler})
    copy = out / "search_space.yaml"
    write_text(copy, yaml.safe_dump(spec, sort_keys=False))
    parent.log_artifact(copy)
    return parent


def _close_lost_trials(parent, space: SearchSpace, trials: list[TrialSummary]) -> None:
    from pgray.tracking.mlflow_runs import close_lost_runs

    lost = close_lost_runs(parent.uri, parent.experiment_id,
                           {"mlflow.parentRunId": parent.run_id, "pgray.kind": "trial",
                            "pgray.sweep": space.name},
                           {t.trial_id for t in trials}, "pgray.trial_id")
    if lost:
        print(f"note: {len(lost)} trial run(s) in MLflow were started by the interrupted"
              " driver after Tune last saved the experiment: tagged lost (ended as KILLED"
              " where still running)", file=sys.stderr, flush=True)


def _require_some_success(trials: list[TrialSummary], path: str) -> None:
    failed = [t for t in trials if t.state == "error"]
    if trials and len(failed) == len(trials):
        raise PgrayError(f"every trial failed; first error ({failed[0].trial_id}):"
                         f" {failed[0].error} (trial logs under {path})")


def _log_search(parent, space: SearchSpace, trials: list[TrialSummary],
                best: dict[str, list[TrialSummary]], configs: dict[str, list[Path]],
                out: Path) -> None:
    trials_md = out / "trials.md"
    write_text(trials_md, trials_table(space, trials) + "\n")
    parent.log_artifact(trials_md)
    for paths in configs.values():
        for path in paths:
            parent.log_artifact(path, "best")
    metrics, tags = {}, {}
    for key, ranked in best.items():
        if ranked:
            # the best trial's score is that of the epoch evaluated, as it was ranked by
            for o in space.objectives:
                value = ranked[0].scores.get(o.metric)
                if value is not None:
                    metrics[f"best/{key}/{o.metric}"] = value
            if ranked[0].score_epoch is not None:
                metrics[f"best/{key}/score_epoch"] = float(ranked[0].score_epoch)
            tags[f"pgray.best_score_epoch.{key}"] = score_epoch_text(ranked[0])
    parent.log_metrics(metrics, step=0)
    counts = {s: sum(t.state == s for t in trials) for s in ("completed", "stopped_early",
                                                              "error")}
    parent.set_tags({f"pgray.trials_{k}": v for k, v in counts.items()}
                    | {"pgray.best_trials": ", ".join(t.trial_id for r in best.values()
                                                      for t in r)} | tags)


def _log_rank_agreement(parent, result: SweepResult, out: Path) -> None:
    """The coefficients on the sweep's run (rank/<metric>/<method>, and per target), and the
    front's figure."""
    from pgray.pipelines.rank_agreement import METHODS, RANK_METRICS
    from pgray.tracking.plots import front_plots, rank_scatters

    metrics = {}
    for metric in RANK_METRICS:
        entry = result.rank_agreement.get(metric) or {}
        for method in METHODS:
            for end in ("value", "lo", "hi"):
                value = (entry.get(method) or {}).get(end)
                suffix = "" if end == "value" else f"_{end}"
                if value is not None and value == value:
                    metrics[f"rank/{metric}/{method}{suffix}"] = value
            for target, per in (entry.get("targets") or {}).items():
                value = per[method]["value"]
                if value == value:  # MLflow keys take no "@" (a target's own seed)
                    metrics[f"rank/{target.replace('@', '_')}/{metric}/{method}"] = value
    parent.log_metrics(metrics, step=0)
    for image in [*rank_scatters(result, out), *front_plots(result, out)]:
        parent.log_artifact(image)
