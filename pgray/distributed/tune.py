"""Ray Tune + Optuna: the sweep's trials, search, early stopping and per-trial MLflow runs.

One Tune experiment covers every target (dataset, category) of a search space. Each target has
its own Optuna study and its own ASHA brackets (proxy AUROCs of different categories are not
comparable), multiplexed by `PerTargetSearch` and `PerTargetScheduler`, so trials of all
targets share the cluster. A trial is a Tune function trainable: one worker trains in the
trial's own process; several run a Ray Train launch inside it (Train V2: never a Trainer
inside a Tuner), whose rank 0 reports each epoch to Tune with the checkpoint's full URI.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from ray.tune import Callback

from pgray.config.search_sections import Resources
from pgray.config.search_space import OBJECTIVE_SCALAR, SearchSpace
from pgray.distributed.simulation import simulated_trial
from pgray.distributed.studies import optuna_storage, study_name
from pgray.distributed.sweep_context import SweepContext
from pgray.distributed.train import CHECKPOINT_URI
from pgray.distributed.trial_runs import open_trial_run, train_run_name, trial_run
from pgray.distributed.trial_summaries import summarise, summary_of_trial
from pgray.distributed.tune_targets import (
    TARGET_KEY,
    TIME_ATTR,
    NoSearch,
    PerTargetScheduler,
    PerTargetSearch,
    remember_results,
)
from pgray.errors import ClusterError, PgrayError
from pgray.tracking.trials import TrialSummary

# A trial reusing the process of a trial ASHA stopped (reuse_actors) first waits for the stopped
# trial's thread to reach its next report; Tune gives it TUNE_FUNCTION_THREAD_TIMEOUT_S (2 s by
# default), then fails the new trial for good ("Trainable runner reuse requires reset_config()
# ..."), though nothing is wrong with it: an epoch, or a loaded node, takes longer. Tune reads
# it in the trial's process, which imports this module to unpickle the trainable.
os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "300")

# Keys Tune adds to every result: not training metrics, never logged to MLflow as such.
TUNE_KEYS = frozenset({
    "timestamp", "checkpoint_dir_name", "done", "training_iteration", "trial_id", "date",
    "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip", "config",
    "time_since_restore", "iterations_since_restore", "experiment_tag", "checkpoint_path",
    "should_checkpoint", CHECKPOINT_URI,
})


# --- the trainable ---------------------------------------------------------------------------
def run_trial(config: dict[str, Any], ctx: SweepContext) -> None:
    """One trial: fixed settings + sampled params -> a training whose reports reach Tune."""
    import time

    from ray import tune

    from pgray.core.training_data import batch_params
    from pgray.distributed.train import (
        TrainLaunch,
        fit_in_trial,
        loop_config,
        report_to_tune,
        run_training,
    )

    began, trial_id = time.time(), tune.get_context().get_trial_id()
    if config[TARGET_KEY] not in ctx.targets:
        # a restored trial whose target needs no training any more (its checkpoint was
        # fetched before the last driver stopped): nothing to do
        return
    target = ctx.targets[config[TARGET_KEY]]
    params = ctx.target_params.get(config[TARGET_KEY], {}) | ctx.space.decode(config)
    experiment = ctx.space.trial_config(target, params)
    run = open_trial_run(ctx, trial_id, target)
    run.log_params(experiment.to_dict() | {"batch": batch_params(
        experiment.train.batch_size, ctx.resources.workers_per_trial)})
    run.set_tags({"pgray.searched": ", ".join(f"{k}={v}" for k, v in params.items())})
    res = ctx.resources
    launch = TrainLaunch(
        name=train_run_name(ctx.space.name, trial_id), storage=ctx.train_storage,
        workers=res.workers_per_trial, cpus_per_worker=res.cpus_per_worker,
        # Tune owns the retries (FailureConfig below): a failed Train run ends the trial,
        # and Tune starts it again, resuming from its checkpoint. Retries at both layers
        # would multiply.
        gpus_per_worker=res.gpus_per_worker, max_failures=0,
        mlflow_uri=ctx.mlflow_uri, mlflow_run=trial_run(ctx, trial_id, target),
        progress=ctx.progress,
        lead_metrics=table_metrics(ctx.space), objective_terms=ctx.space.scalar_terms(),
        trial_began_at=began,
    )
    try:
        if res.trains_in_trial:
            fit_in_trial(loop_config(experiment.to_dict(), launch))
            return
        result = run_training(experiment.to_dict(), launch, [report_to_tune()])
        if result.error is not None:
            raise result.error
    finally:
        run.flush(wait=True)  # the trial's params and tags, if the store was away


def table_metrics(space: SearchSpace) -> tuple[str, ...]:
    """What a person watching the trial table needs: the objectives (and the weighted sum ASHA
    stops several of them on), then the held-out proxy's clean and worst-case AUROC and the
    loss (Tune shows the first four)."""
    objectives = list(dict.fromkeys(o.metric for o in space.objectives))
    if space.scalar_terms() is not None:
        objectives.insert(0, OBJECTIVE_SCALAR)
    extra = [m for m in ("proxy_clean_image_auroc", "proxy_worst_image_auroc", "loss")
             if m not in objectives]
    # every objective, even past four: each result must carry them all (NaN where unmeasured)
    return tuple(objectives + extra[:max(0, 4 - len(objectives))])


def param_space(space: SearchSpace) -> dict[str, Any]:
    """Tune domains of the searched keys (categorical non-scalars go by label)."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, spec in space.search.items():
        if spec.type == "uniform":
            out[key] = tune.uniform(spec.low, spec.high)
        elif spec.type == "loguniform":
            out[key] = tune.loguniform(spec.low, spec.high)
        elif spec.type == "int":
            make = tune.lograndint if spec.log else tune.randint
            out[key] = make(int(spec.low), int(spec.high) + 1)  # upper bound exclusive
        else:
            out[key] = tune.choice(spec.choices())
    return out


def objective_args(space: SearchSpace) -> tuple[Any, Any]:
    metrics = [o.metric for o in space.objectives]
    modes = [o.mode for o in space.objectives]
    return (metrics, modes) if space.multi_objective else (metrics[0], modes[0])


def build_searcher(space: SearchSpace, targets: list[str]) -> PerTargetSearch:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    metric, mode = objective_args(space)
    storage = optuna_storage(space, targets)
    inner: dict[str, Any] = {}
    for i, target in enumerate(targets):
        if not space.search:
            inner[target] = NoSearch(metric=metric, mode=mode)
            continue
        seed = space.seed + i  # one seeded study per target
        sampler = (optuna.samplers.RandomSampler(seed=seed) if space.sampler == "random"
                   else optuna.samplers.TPESampler(seed=seed))
        inner[target] = OptunaSearch(metric=metric, mode=mode, sampler=sampler,
                                     points_to_evaluate=space.start_point_choices() or None,
                                     storage=storage, study_name=study_name(space, target))
    return PerTargetSearch(inner, space.budget.trials, metric, mode)


def build_scheduler(space: SearchSpace, targets: list[str], experiment: str = ""):
    if space.scheduler.type == "none":
        return None
    metric, mode = space.asha_objective()
    return PerTargetScheduler(targets, metric, mode, max_t=space.epochs(),
                              grace_period=space.scheduler.grace_period,
                              reduction_factor=space.scheduler.reduction_factor,
                              experiment=experiment)


def derive_max_concurrent(res: Resources, cluster: dict[str, float], n_trials: int) -> int:
    """How many trials fit at once: a trial holds its own CPU share plus its workers', and a
    trial started without room for its workers would wait for them forever."""
    if res.max_concurrent is not None:
        return min(res.max_concurrent, n_trials)
    need = res.per_trial()
    slots = n_trials
    for kind in ("CPU", "GPU"):
        if need[kind] > 0:
            slots = min(slots, math.floor(cluster.get(kind, 0.0) / need[kind] + 1e-9))
    if slots < 1:
        have = {k: cluster.get(k, 0.0) for k in ("CPU", "GPU")}
        raise ClusterError(
            f"one trial needs {need} (trial_cpus + workers_per_trial x cpus/gpus_per_worker)"
            f" but the cluster has {have}; lower resources.* or, on an autoscaling cluster,"
            " set resources.max_concurrent"
        )
    return slots


# --- MLflow state of each trial, written from the driver ---------------------------------------
class TrialRunsCallback(Callback):
    """Closes each trial's MLflow child run with its state (completed / stopped_early / error).

    Rank 0 logs the per-epoch metrics into the child run; an epoch reported to Tune right
    before the trial is stopped may not have reached MLflow yet, so it is backfilled here.

    Tune pickles its callbacks with the experiment and a restored experiment brings back the
    first driver's: the callback holds a key and asks for this driver's context (a restored
    trial of a target this run no longer trains must not be closed again with stale results).
    """

    def __init__(self, key: str):
        self._key = key
        self._history: dict[str, list[tuple[int, dict[str, float]]]] = {}

    @property
    def _ctx(self) -> SweepContext | None:
        return _CONTEXTS.get(self._key)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        # NaN marks a metric this epoch did not measure (the proxy between proxy epochs)
        metrics = {k: float(v) for k, v in result.items() if k not in TUNE_KEYS
                   and isinstance(v, int | float) and not isinstance(v, bool)
                   and math.isfinite(v)}
        if TIME_ATTR in metrics:
            self._history.setdefault(trial.trial_id, []).append(
                (int(metrics[TIME_ATTR]) - 1, metrics))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if self._ctx is None:
            return
        epochs = self._epochs(trial)
        state = "completed" if epochs >= self._ctx.space.epochs() else "stopped_early"
        self._close(trial, state, "FINISHED", epochs)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._close(trial, "error", "FAILED", self._epochs(trial))

    @staticmethod
    def _epochs(trial) -> int:
        return int((trial.last_result or {}).get(TIME_ATTR, 0))

    def _close(self, trial, state: str, status: str, epochs: int) -> None:
        ctx = self._ctx
        target = None if ctx is None else ctx.targets.get(trial.config.get(TARGET_KEY, ""))
        if target is None:
            return
        run = open_trial_run(ctx, trial.trial_id, target)
        run.log_history(self._history.get(trial.trial_id, []))
        run.set_tags({"pgray.trial_state": state, "pgray.epochs_done": epochs})
        run.finish(status, wait=False)  # an outage is waited out once the search ends


# --- feeding finished trials to the rest of the pipeline --------------------------------------
# A feed is what the pipeline hands run_search: an object with `key`, `trial_done(trial,
# target_trials)` (called for each trial that ends: completed, stopped early or errored, with
# every trial of its target so far; pgray's own TrialSummary records, never Tune's) and
# `poll()` (called at every step of Tune's loop). Live feeds by key, each with the space its
# trials are read with: Tune pickles its callbacks with the experiment, so the callback holds
# a key, never the feed (its actors and open files) itself; a restored experiment finds the
# feed its new driver registered under the same key.
_FEEDS: dict[str, tuple[Any, SearchSpace]] = {}
_CONTEXTS: dict[str, SweepContext] = {}  # live contexts by experiment path (TrialRunsCallback)


class FeedCallback(Callback):
    def __init__(self, key: str) -> None:
        self._key = key

    def _trial_done(self, trial, trials) -> None:
        if (found := _FEEDS.get(self._key)) is None:
            return
        feed, space = found
        target = trial.config.get(TARGET_KEY)
        feed.trial_done(summary_of_trial(trial, space), [
            summary_of_trial(t, space) for t in trials if t.config.get(TARGET_KEY) == target])

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._trial_done(trial, trials)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._trial_done(trial, trials)

    def on_step_end(self, iteration, trials, **info) -> None:
        if (found := _FEEDS.get(self._key)) is not None:
            found[0].poll()


# --- running and restoring the experiment -----------------------------------------------------
@dataclass
class SearchRun:
    trials: list[TrialSummary]  # every trial of the experiment, by target and id
    experiment_path: str
    max_concurrent: int
    resumed: bool
    times: dict[str, dict[str, float]] = field(default_factory=dict)  # trial_times.breakdown


def _trainable(ctx: SweepContext):
    """A one-worker trial trains in its own process, so it holds that worker's CPUs and
    GPUs; a trial of several workers holds only its share and waits on its Train run."""
    from ray import tune

    res = ctx.resources
    if res.trains_in_trial or ctx.simulate is not None:  # a simulated trial holds its GPU
        need = {"cpu": res.cpus_per_worker, "gpu": res.gpus_per_worker or 0.0}
    else:
        need = {"cpu": res.trial_cpus}
    trial = run_trial if ctx.simulate is None else simulated_trial
    return tune.with_resources(tune.with_parameters(trial, ctx=ctx), need)


def run_search(ctx: SweepContext, storage: str, *, resume: bool, verbose: int = 1,
               feed: Any = None, console: bool = False) -> SearchRun:
    """Run (or, with resume, continue) the Tune experiment `storage/<sweep name>`. `feed`
    hears of every finished trial and is polled at every step of Tune's loop: how the
    pipeline evaluates checkpoints while other trials still train. `console`: pgray's lines
    per trial (tune_console), for a silent Tune."""
    import ray
    from ray import tune

    from pgray.distributed.preflight import check_state_api
    from pgray.distributed.trial_times import TrialTimes, collected
    from pgray.distributed.tune_console import ConsoleRelay, listen
    from pgray.tracking.mlflow_runs import flush_all

    name = ctx.space.name
    path = f"{storage.rstrip('/')}/{name}"
    exists = tune.Tuner.can_restore(path)
    if exists and not resume:
        raise PgrayError(
            f"a sweep named {name!r} already exists at {path}; pass --resume to continue it,"
            " or choose another --out / --storage / name"
        )
    check_state_api(ctx.space.scheduler.type, ctx.resources.trains_in_trial)
    targets = list(ctx.targets)
    total = ctx.space.budget.trials * len(targets)
    concurrent = derive_max_concurrent(ctx.resources, ray.cluster_resources(), total)
    callbacks = [TrialRunsCallback(path), FeedCallback(feed.key if feed else ""),
                 ConsoleRelay(path), TrialTimes(path)]  # pickled with the experiment
    listen(path, ctx.space, total, console)
    _CONTEXTS[path] = ctx
    if feed is not None:
        _FEEDS[feed.key] = (feed, ctx.space)
    if exists:
        tuner = tune.Tuner.restore(path, trainable=_trainable(ctx), resume_unfinished=True,
                                   resume_errored=True)
        remember_results(path, tuner.get_results())  # what its ASHA hears again
    else:
        scheduler = build_scheduler(ctx.space, targets, path)
        tuner = tune.Tuner(
            _trainable(ctx),
            param_space=param_space(ctx.space),
            tune_config=tune.TuneConfig(
                search_alg=build_searcher(ctx.space, targets),
                scheduler=scheduler, num_samples=total, max_concurrent_trials=concurrent,
                time_budget_s=ctx.space.budget.time_budget_s,
                # A trial after the first on a worker skips the process start and imports.
                # Only where the trial trains itself: one that waits on a Train run cannot
                # be reset in Tune's 2 s, and Ray 2.60 then leaves the trial hanging.
                reuse_actors=ctx.resources.trains_in_trial,
            ),
            run_config=tune.RunConfig(name=name, storage_path=storage, callbacks=callbacks,
                                      # a one-worker trial's checkpoints: the newest two
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                                      # a trial whose process dies with its node starts
                                      # again; its Train run resumes from its checkpoint
                                      failure_config=tune.FailureConfig(
                                          max_failures=ctx.resources.max_failures),
                                      verbose=verbose),
        )
    try:
        results = tuner.fit()
    finally:
        _FEEDS.pop(feed.key if feed else "", None)
        _CONTEXTS.pop(path, None)
        listen(path, ctx.space, total, False)
    flush_all()  # the trials' runs, closed while the tracking store did not answer
    return SearchRun(summarise(results, ctx.space), path, concurrent, resumed=exists,
                     times=collected(path))
