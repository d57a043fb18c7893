"""The sweep: a Tune + Optuna search of one study per category, then a benchmark of the best
trial(s) of each. `python -m pgray.sweep` parses its flags and calls `run_sweep`.

The flow, top to bottom: the targets and their checks (`components.targets`), the cluster and
the sweep's MLflow run (`tracking.sweep_run`), the search (`runners.trainings`), the pick
(`components.selection`), the rank stage (`rank_eval`), the final stage (`final_eval`), and the
results written at the end."""

from __future__ import annotations

import time

from pgray.errors import PgrayError
from pgray.pipelines.components.selection import select_best
from pgray.pipelines.components.specs import benchmark_config
from pgray.pipelines.components.sweep_request import SweepRequest, say_progress
from pgray.pipelines.components.targets import check_targets, resolve_targets
from pgray.pipelines.final_eval import FinalStage
from pgray.pipelines.rank_eval import RankStage
from pgray.pipelines.runners.evaluations import Evaluations
from pgray.pipelines.runners.trainings import run_trainings
from pgray.tracking.records import SweepResult
from pgray.tracking.registry import register, sweep_picks
from pgray.tracking.trials import TrialSummary


def run_sweep(req: SweepRequest) -> SweepResult:
    from pgray.distributed.cluster import resolve_resources, resolve_storage
    from pgray.distributed.preflight import join_checked
    from pgray.distributed.sweep_context import sweep_context
    from pgray.distributed.trial_times import time_shares_line
    from pgray.distributed.tune_console import tune_verbosity
    from pgray.tracking.mlflow_store import check_tracking_uri, resolve_tracking_uri
    from pgray.tracking.sweep_report import write_best_configs
    from pgray.tracking.sweep_run import (
        close_lost_trials,
        finish_sweep_run,
        log_rank_agreement,
        log_search,
        open_sweep_run,
    )

    started = time.perf_counter()
    space = req.space
    targets = resolve_targets(space)
    check_targets(space, targets)
    out = req.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    uri = resolve_tracking_uri(req.mlflow_uri)
    check_tracking_uri(uri)
    storage = resolve_storage(req.storage, out / "ray")
    # before anything is submitted
    joined = join_checked(req.address, uri, storage, [t.root for t in targets],
                          worker_logs=req.verbose)
    parent = open_sweep_run(space, uri, out)
    say_progress(req, f"sweep {space.name}: {len(targets)} target(s) x {space.budget.trials}"
                 f" trial(s) of {space.epochs()} epoch(s); {joined}")
    res = resolve_resources(space.resources, "resources.gpus_per_worker")
    ctx = sweep_context(space, {t.key: t for t in targets}, mlflow_uri=uri,
                        parent_run_id=parent.run_id, storage=storage, resources=res,
                        search=True)
    actors = benchmark_config(space, targets, out, 1, res.gpus_per_worker or 0.0).actors
    final = None
    if req.final_eval and space.final_eval.enabled:
        final = FinalStage(req, space, ctx.targets, out, uri, parent.run_id,
                           Evaluations(actors, sequential=False, progress=req.progress))
    search = run_trainings(ctx, storage, resume=req.resume,
                           verbose=tune_verbosity(req.progress, req.verbose),
                           console=req.progress and not req.verbose,
                           on_trial=final.on_trial if final else (lambda t, ts: None),
                           evaluations=final.evaluations if final else None)
    trials = search.trials
    _require_some_success(trials, search.experiment_path)
    for trial in trials:
        trial.times = search.times.get(trial.trial_id)
    if search.resumed:
        close_lost_trials(parent, space, trials)
    if search.times:
        say_progress(req, time_shares_line(search.times))
    best = select_best(trials, space)
    configs = write_best_configs(space, best, {t.key: t for t in targets}, out)
    log_search(parent, space, trials, best, configs, out)
    result = SweepResult(out=out, parent_run_id=parent.run_id,
                         experiment_path=search.experiment_path, trials=trials, best=best,
                         best_configs=configs, max_concurrent=search.max_concurrent,
                         resumed=search.resumed)
    ranks = None
    if space.final_eval.rank_agreement.enabled:  # after the pick: nothing flows back
        pool = final.evaluations if final else Evaluations(actors, sequential=False,
                                                           progress=req.progress)
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
        if req.register and result.benchmarks:
            result.registered = register(uri, req.register, sweep_picks(
                result.benchmarks[0].models, final.trial_seed))
    elif ranks is not None:
        ranks.evaluations.finish()
        ranks.evaluations.check_failures()
    if ranks is not None:
        result.rank_agreement, result.front = ranks.results(trials, best)
        log_rank_agreement(parent, result, out)
    finish_sweep_run(parent, space, result, targets, out, started)
    return result


def _require_some_success(trials: list[TrialSummary], path: str) -> None:
    failed = [t for t in trials if t.state == "error"]
    if trials and len(failed) == len(trials):
        raise PgrayError(f"every trial failed; first error ({failed[0].trial_id}):"
                         f" {failed[0].error} (trial logs under {path})")
