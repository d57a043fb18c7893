"""Train, then evaluate: the one way the benchmark and the sweep get from configs to robust
numbers on a cluster.

- Trainings run as one Tune experiment, every trial a Ray Train run with the CPUs and GPUs its
  resources ask for, as many at once as the cluster holds (Ray schedules them; the sweep's
  trials are searched, the benchmark's are one fixed trial per category).
- The moment a checkpoint exists (a benchmark category's training, or the last trial of a
  sweep target), its evaluation jobs enter the actor pool, while other trainings continue.
  Evaluation actors exist only while jobs wait, so GPUs pass between training and evaluation
  through Ray's resources, not a fixed split.
- What is evaluated is the selected checkpoint (`best.pt`) where train.select_metric chose
  one, else the last (`checkpoint.pt`); every row names the file and its epoch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgray.config.benchmark import ActorConfig
from pgray.config.search_sections import Target
from pgray.config.search_space import SearchSpace
from pgray.distributed.train import reported_checkpoint

CHECKPOINT_FILE = "checkpoint.pt"
SELECTED_FILE = "best.pt"
PROXY_FILE = "proxy.json"  # beside a fetched checkpoint: the proxy metrics of its epoch


@dataclass(frozen=True)
class Evaluated:
    """The checkpoint file a category's rows come from."""

    path: Path
    file: str  # best.pt (proxy-selected) or checkpoint.pt (last epoch)
    epoch: int | None


def evaluated_checkpoint(template: Path) -> Evaluated:
    """`best.pt` beside the checkpoint when it holds this checkpoint's selection, else the
    checkpoint itself. A best.pt is this run's only if the checkpoint records a selection
    and both name the same metric, value and epoch: one left by an earlier run in the same
    folder (a run that selected nothing writes none) is never evaluated for a newer one."""
    from pgray.core.checkpoint import read_checkpoint
    from pgray.errors import CheckpointError

    extra = read_checkpoint(template).get("extra") or {}
    best = template.with_name(SELECTED_FILE)
    selected = _selection(extra)
    if selected is None or not best.is_file():
        epoch = extra.get("epochs_done")
        return Evaluated(template, template.name, None if epoch is None else int(epoch))
    found = _selection(read_checkpoint(best).get("extra") or {})
    if found != selected:
        raise CheckpointError(
            f"{best} is not the selection of {template} (it holds {found}, the checkpoint"
            f" selected {selected}): it was left by another run; remove it, or write this"
            " run's again with pgray.core.checkpoint.write_selected")
    return Evaluated(best, best.name, int(selected[2]))


def _selection(extra: dict[str, Any]) -> tuple | None:
    """(metric, value, epoch) of the selection a checkpoint's `extra` records, or None."""
    selected = extra.get("selected")
    return None if not selected else tuple(selected.get(k) for k in ("metric", "value",
                                                                     "epoch"))


def fetch_trial_checkpoint(source: str, dest: Path) -> Path:
    """A trial's Train checkpoint (local, s3:// or gs://) as the plain file `dest`, with the
    proxy-selected weights beside it as best.pt when the trial selected, and the held-out
    proxy metrics of the evaluated epoch as proxy.json (for the proxy-to-test gap)."""
    from pgray.core.checkpoint import read_checkpoint, write_selected
    from pgray.distributed.train import fetch_train_checkpoint
    from pgray.io import write_json

    fetch_train_checkpoint(source, dest)
    selected = write_selected(dest, dest.with_name(SELECTED_FILE))
    if selected is None:  # an earlier run's best.pt in this folder is not this run's
        dest.with_name(SELECTED_FILE).unlink(missing_ok=True)
    extra = read_checkpoint(dest)["extra"]
    epoch = (extra.get("selected") or {}).get("epoch") if selected else extra.get("epochs_done")
    metrics = next((m for e, m in extra.get("history", []) if e + 1 == epoch), {})
    write_json(dest.with_name(PROXY_FILE), {"epoch": epoch} | {
        k: v for k, v in metrics.items() if k.startswith("proxy_")})
    return dest


def read_proxy(folder: Path) -> dict[str, Any]:
    path = folder / PROXY_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


WAIT_S = 0.5  # the driver's longest wait on any one thing before it looks at the rest


class Evaluations:
    """Evaluation jobs from anywhere in the pipeline, each with the callback its result goes
    to; on Ray actors (the pool grows and shrinks with the queue) or, with `sequential`, in
    this process at `finish()`.

    A job names its checkpoint by a path on the driver's disk; on Ray the file's bytes travel
    to the actor through the object store (once per checkpoint), since an actor on another
    node sees none of the driver's files."""

    def __init__(self, actors: ActorConfig, *, sequential: bool, progress: bool) -> None:
        self._sinks: dict[str, Callable[[Any, Any], None]] = {}
        self._pending: list[Any] = []
        self._pollers: list[Callable[[], bool]] = []
        self._actors = actors
        self._progress = progress
        self._blobs: dict[str, Any] = {}  # checkpoint sha256 -> object ref of its bytes
        self._waiting_on: dict[str, int] = {}  # checkpoint sha256 -> jobs not yet delivered
        self._pool = None if sequential else self._make_pool()
        self._failed: list[tuple[Any, str]] = []  # jobs that failed in this process

    def _make_pool(self):
        import functools

        from pgray.distributed.actors import EvalPool
        from pgray.pipelines.benchmark_jobs import JobEvaluator

        return EvalPool(functools.partial(JobEvaluator, threads=self._actors.threads),
                        cpus=self._actors.cpus, gpus=self._actors.gpus,
                        max_actors=self._actors.count, max_retries=self._actors.max_retries,
                        on_result=self._deliver, progress=self._progress,
                        inputs=self._checkpoint_bytes)

    def _checkpoint_bytes(self, job) -> list:
        """The job's checkpoint as an object reference (put once, shared by its jobs)."""
        sha = job.checkpoint_sha256
        if sha not in self._blobs:
            import ray

            self._blobs[sha] = ray.put(Path(job.checkpoint).read_bytes())
        return [self._blobs[sha]]

    def _deliver(self, job, result) -> None:
        self._sinks.pop(job.key)(job, result)
        sha = job.checkpoint_sha256
        self._waiting_on[sha] -= 1
        if self._waiting_on[sha] == 0:  # its last job is done: free the object store
            self._blobs.pop(sha, None)

    def add(self, jobs: list, on_result: Callable[[Any, Any], None]) -> None:
        jobs = [j for j in jobs if j.key not in self._sinks]
        for job in jobs:
            self._sinks[job.key] = on_result
            self._waiting_on[job.checkpoint_sha256] = (
                self._waiting_on.get(job.checkpoint_sha256, 0) + 1)
        if self._pool is None:
            self._pending += jobs
        else:
            self._pool.add(jobs)

    def also_poll(self, poller: Callable[[], bool]) -> None:
        """Other work that lands while trainings run (baseline fits): `poller()` lands what
        has finished, without waiting, and says whether more is to come."""
        self._pollers.append(poller)

    def poll(self, timeout: float = 0.0) -> bool:
        """Land whatever has finished (waiting up to `timeout` for an evaluation); whether
        anything is still to come."""
        more = [poller() for poller in self._pollers]  # every poller, every time
        if self._pool is not None:
            self._pool.poll(timeout=timeout if self._pool.busy else 0.0)
            more.append(self._pool.busy)
        return any(more)

    def finish(self) -> None:
        if self._pool is not None:
            # One loop waits on everything: a fit that lands adds jobs, a result that lands
            # frees its actor (released at once when nothing waits, so a fit waiting for
            # that CPU starts), and every result reaches OUT the moment it lands.
            while self.poll(timeout=WAIT_S):
                if not self._pool.busy:
                    time.sleep(WAIT_S)
            return
        import warnings

        from pgray.errors import first_line
        from pgray.pipelines.benchmark_jobs import JobEvaluator
        from pgray.tracking.progress import JobProgress

        evaluator = JobEvaluator(threads=self._actors.threads)
        tracker = JobProgress(self._pending, self._progress)
        for job in sorted(self._pending, key=lambda j: -j.cost):
            try:
                result = evaluator.run(job)
            except Exception as err:  # noqa: BLE001 - as on actors: reported, the rest go on
                self._failed.append((job, first_line(err)))
                warnings.warn(f"evaluation {job.label()} failed: {first_line(err)}",
                              stacklevel=2)
            else:
                self._deliver(job, result)
            tracker.update(job, {})
        self._pending = []

    @property
    def peak_actors(self) -> int:
        return 0 if self._pool is None else self._pool.peak_actors

    @property
    def failures(self) -> list[tuple[Any, str]]:
        """(job, why) of every job that failed in its own code so far."""
        return self._failed + ([] if self._pool is None else list(self._pool.failures))

    def check_failures(self) -> None:
        """After the results that did land are written: one error naming every job that
        failed in its own code (a re-run skips the finished jobs and tries these again)."""
        from pgray.errors import PgrayError

        failed = self.failures
        if failed:
            raise PgrayError(f"{len(failed)} evaluation job(s) failed: " + "; ".join(
                f"{job.label()}: {why}" for job, why in failed)[:2000]
                + " (every other result is written; run again to retry these)")


class _Feed:
    """Hands each finished trial to the pipeline, and lets the evaluations move on at every
    step of Tune's loop."""

    def __init__(self, key: str, on_trial: Callable[[Any, list], None],
                 evaluations: Evaluations) -> None:
        self.key = key
        self._on_trial = on_trial
        self._evaluations = evaluations

    def trial_done(self, trial, trials) -> None:
        self._on_trial(trial, trials)
        self.poll()

    def poll(self) -> None:
        if self._evaluations is not None:
            self._evaluations.poll()


def run_trainings(ctx, storage: str, *, resume: bool, verbose: int,
                  on_trial: Callable[[Any, list], None], evaluations: Evaluations | None,
                  console: bool = False):
    """The trainings of `ctx` (a SweepContext) as one Tune experiment; `on_trial(trial,
    trials)` hears of each that ends while the others go on. Returns the SearchRun."""
    from pgray.distributed.preflight import blame_storage
    from pgray.distributed.tune import run_search

    feed = _Feed(f"{ctx.space.name}@{storage}", on_trial, evaluations)
    try:
        return run_search(ctx, storage, resume=resume, verbose=verbose, feed=feed,
                          console=console)
    except Exception as err:  # noqa: BLE001 - whatever Tune raised, a dead storage explains it
        blame_storage(storage, err)
        raise


def train_each_target(ctx, storage: str, *, resume: bool, verbose: int,
                      dest: Callable[[str], Path], on_ready: Callable[[str], None],
                      evaluations: Evaluations | None, console: bool = False) -> int:
    """One fixed trial per target of `ctx` (a SweepContext) as one Tune experiment. The moment
    a target's training ends, its checkpoint is fetched to `dest(key)` and `on_ready(key)`
    queues what follows (its evaluations), while the other trainings go on. Returns how many
    were fetched; PgrayError naming every failed training."""
    from pgray.distributed.preflight import blame_storage
    from pgray.distributed.tune_targets import TARGET_KEY
    from pgray.errors import PgrayError

    handled: set[str] = set()

    def handle(key: str | None, source: str | None) -> None:
        # a restored trial of a target fetched by an earlier driver is not this run's
        if key not in ctx.targets or key in handled or source is None:
            return
        fetch_trial_checkpoint(source, dest(key))
        handled.add(key)
        on_ready(key)

    def on_trial(trial, trials) -> None:
        if trial.status != "ERROR":
            handle(trial.config.get(TARGET_KEY), trial_checkpoint(trial))

    search = run_trainings(ctx, storage, resume=resume, verbose=verbose, on_trial=on_trial,
                           evaluations=evaluations, console=console)
    errors = []
    for result in search.results:  # trials that ended before a resumed driver started
        key = (result.config or {}).get(TARGET_KEY)
        if result.error is not None:
            errors.append(f"{key}: {type(result.error).__name__}: {result.error}"[:400])
        else:
            handle(key, reported_checkpoint(result.metrics, result.checkpoint))
    if errors:
        failed = PgrayError(f"{len(errors)} training(s) failed ({search.experiment_path}): "
                            + "; ".join(errors))
        blame_storage(storage, failed)
        raise failed
    return len(handled)


def trial_checkpoint(trial) -> str | None:
    """The URI of the newest checkpoint a finished Tune trial reported."""
    return reported_checkpoint(trial.last_result, trial.checkpoint)


def resolve_targets(space: SearchSpace) -> list[Target]:
    """Every (dataset, category) of the space, its root as every node can use it (absolute
    path, object-storage URI, or "" for the generated dataset, which each machine generates
    in its cache on first use)."""
    from pgray.config import DataConfig
    from pgray.config.search_sections import GENERATED_ROOT
    from pgray.data.dataset import portable_root, resolve_root
    from pgray.data.registry import get_layout

    targets = []
    for entry in space.target_entries():
        root_value = "" if entry.root == GENERATED_ROOT else entry.root
        data = DataConfig(dataset=entry.dataset, root=root_value, options=dict(entry.options))
        root, here = portable_root(data), str(resolve_root(data))
        for category in get_layout(entry.dataset).select_categories(here, entry.categories):
            targets.append(Target(entry.dataset, root, category,
                                  tuple(sorted(dict(entry.options).items())), entry.seed))
    return targets


def check_targets(space: SearchSpace, targets: list[Target]) -> None:
    """Fail on a missing dataset or category, or a config the model cannot be built from,
    before Ray or MLflow start anything: each target's fixed config and each searched key at
    the values that stand for its range (a bad value found in a worker costs minutes of
    retries). Each distinct dataset and architecture is checked once."""
    from pgray.errors import ConfigError
    from pgray.pipelines.train import validate_inputs

    variants = [{}] + [{key: value} for key, spec in space.search.items()
                       for value in spec.representatives()]
    seen: set[str] = set()
    for target in targets:
        for params in variants:
            try:
                validate_inputs(space.trial_config(target, params), seen)
            except ConfigError as err:
                where = ", ".join(f"search.{k} = {v!r}" for k, v in params.items())
                raise ConfigError(f"{where}: {err}" if where else str(err)) from None
