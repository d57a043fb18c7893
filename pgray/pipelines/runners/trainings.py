"""Trainings on the driver's side: the one way the benchmark and the sweep get from configs to
checkpoints on a cluster.

- Trainings run as one Tune experiment, every trial a Ray Train run with the CPUs and GPUs its
  resources ask for, as many at once as the cluster holds (Ray schedules them; the sweep's
  trials are searched, the others are one fixed trial per target).
- The moment a checkpoint exists (a benchmark category's training, or the last trial of a
  sweep target), what follows is handed on (its evaluation jobs enter the actor pool), while
  other trainings continue, and the evaluations move on at every step of Tune's loop.
- Tune's trials reach this module as pgray's own records (`pgray.tracking.trials`), made in
  `pgray.distributed`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pgray.config.search_space import SearchSpace
from pgray.distributed.sweep_context import SweepContext
from pgray.pipelines.components.checkpoint_files import fetch_trial_checkpoint
from pgray.pipelines.components.targets import JobTarget, checkpoint_path, resolve_targets
from pgray.pipelines.runners.evaluations import Evaluations
from pgray.tracking.trials import TrialSummary

OnTrial = Callable[[TrialSummary, list[TrialSummary]], None]


class _Feed:
    """Hands each trial that ends (with its target's trials so far) to the run, and lets the
    evaluations move on at every step of Tune's loop."""

    def __init__(self, key: str, on_trial: OnTrial, evaluations: Evaluations | None) -> None:
        self.key = key
        self._on_trial = on_trial
        self._evaluations = evaluations

    def trial_done(self, trial: TrialSummary, target_trials: list[TrialSummary]) -> None:
        self._on_trial(trial, target_trials)
        self.poll()

    def poll(self) -> None:
        if self._evaluations is not None:
            self._evaluations.poll()


def run_trainings(ctx: SweepContext, storage: str, *, resume: bool, verbose: int,
                  on_trial: OnTrial, evaluations: Evaluations | None, console: bool = False):
    """The trainings of `ctx` as one Tune experiment; `on_trial(trial, target_trials)` hears
    of each that ends while the others go on. Returns the SearchRun."""
    from pgray.distributed.preflight import blame_storage
    from pgray.distributed.tune import run_search

    feed = _Feed(f"{ctx.space.name}@{storage}", on_trial, evaluations)
    try:
        return run_search(ctx, storage, resume=resume, verbose=verbose, feed=feed,
                          console=console)
    except Exception as err:  # noqa: BLE001 - whatever Tune raised, a dead storage explains it
        blame_storage(storage, err)
        raise


def train_each_target(ctx: SweepContext, storage: str, *, resume: bool, verbose: int,
                      dest: Callable[[str], Path], on_ready: Callable[[str], None],
                      evaluations: Evaluations | None, console: bool = False) -> int:
    """One fixed trial per target of `ctx` as one Tune experiment. The moment a target's
    training ends, its checkpoint is fetched to `dest(key)` and `on_ready(key)` queues what
    follows (its evaluations), while the other trainings go on. Returns how many were
    fetched; PgrayError naming every failed training."""
    from pgray.distributed.preflight import blame_storage
    from pgray.errors import PgrayError

    handled: set[str] = set()

    def handle(trial: TrialSummary) -> None:
        # a restored trial of a target fetched by an earlier driver is not this run's
        if (trial.state == "error" or trial.target not in ctx.targets
                or trial.target in handled or trial.checkpoint is None):
            return
        fetch_trial_checkpoint(trial.checkpoint, dest(trial.target))
        handled.add(trial.target)
        on_ready(trial.target)

    search = run_trainings(ctx, storage, resume=resume, verbose=verbose,
                           on_trial=lambda trial, _: handle(trial), evaluations=evaluations,
                           console=console)
    for trial in search.trials:  # trials that ended before a resumed driver started
        handle(trial)
    errors = [f"{t.target}: {t.error}"[:400] for t in search.trials if t.state == "error"]
    if errors:
        failed = PgrayError(f"{len(errors)} training(s) failed ({search.experiment_path}): "
                            + "; ".join(errors))
        blame_storage(storage, failed)
        raise failed
    return len(handled)


def train_missing(space: SearchSpace, missing: list[JobTarget], enqueue: Callable[[JobTarget],
                  object], evaluations: Evaluations, *, mlflow_uri: str, parent_run_id: str,
                  storage: str, resume: bool, verbose: int, console: bool) -> int:
    """A benchmark's missing PatchGuard checkpoints (`space`: `training_space` of them) as one
    Tune experiment; each target is enqueued the moment its training ends. Returns how many
    were trained."""
    from pgray.config.search_sections import target_key
    from pgray.distributed.cluster import resolve_resources
    from pgray.distributed.sweep_context import sweep_context

    where = {target_key(t.entry.dataset, t.category, t.entry.seed): t for t in missing}
    ctx = sweep_context(space, {t.key: t for t in resolve_targets(space)},
                        mlflow_uri=mlflow_uri, parent_run_id=parent_run_id, storage=storage,
                        resources=resolve_resources(space.resources,
                                                    "train_resources.gpus_per_worker"))
    return train_each_target(ctx, storage, resume=resume, verbose=verbose, console=console,
                             dest=lambda key: checkpoint_path(*where[key]),
                             on_ready=lambda key: enqueue(where[key]), evaluations=evaluations)
