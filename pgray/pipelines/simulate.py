"""A run on a simulated cluster: the plan's pieces (`pgray.pipelines.plan`) as sleeping work
(`pgray.distributed.simulation`) under the real scheduler: the trainings as one Tune
experiment (Optuna and ASHA for a search), evaluation jobs on the evaluation pool as each
target's checkpoint lands, MLflow runs, checkpoint files and retries.

Two workloads: `paper` (a benchmark: one training per target, then its evaluation jobs, as
`pipelines.benchmark` with `train_missing`) and `search` (a sweep's search: its trials; as
each target's last trial ends, its rank-agreement jobs, one per trial, and its final
evaluation's `top_n` ranks). A sweep's clean twins, recipe and seed trainings are left out.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgray.distributed.simulation import SimulatedJob, SimulatedJobs, Simulation
from pgray.pipelines.plan.cluster import Cluster
from pgray.pipelines.plan.estimate import FIXED_COSTS, Piece, device_seconds, estimate
from pgray.pipelines.runners.evaluations import Evaluations


@dataclass
class Workload:
    """What a simulated run does, in simulated seconds, and what the plan says of it."""

    name: str
    space: Any  # the SearchSpace of the Tune experiment
    trials_per_target: int
    epochs: dict[str, int]  # per target: its trainings' epochs
    epoch_s: dict[str, float]  # per target: one epoch
    report_every: dict[str, int]
    jobs: dict[str, list[SimulatedJob]]  # per target: its jobs (search: per final rank)
    rank_job_s: dict[str, float]  # search: one rank-agreement job of the target
    actors: Any  # ActorConfig
    gpus_per_training: float
    plan_wall_s: float
    pieces: list[Piece] = field(default_factory=list)


def _target_of(piece: Piece) -> str:
    """The target key a plan piece belongs to (the plan names pieces `<key> ...`, a final
    evaluation's `top<rank> <key> ...`)."""
    words = piece.what.split(" ")
    return words[1] if words[0].startswith("top") else words[0]


def _epoch_s(p: Piece, speed) -> float:
    f = FIXED_COSTS
    return (device_seconds(p, speed) + f.epoch_s * p.epochs
            + f.checkpoint_s * p.checkpoints) / max(p.epochs, 1)


def paper_workload(cfg, cluster: Cluster, folder: Path, gpu: str = "h100") -> Workload:
    """A benchmark's trainings and jobs (`cfg`: a BenchmarkConfig; no checkpoint exists)."""
    from pgray.config import ExperimentConfig
    from pgray.pipelines.components.specs import training_space
    from pgray.pipelines.plan.data import plan_targets
    from pgray.pipelines.plan.estimate import make_speed
    from pgray.pipelines.plan.pieces import benchmark_pieces

    pieces, concurrent, actors = benchmark_pieces(cfg, cluster)
    speed = make_speed(cluster, ExperimentConfig.from_dict(cfg.train).model, gpu=gpu,
                       gpu_profile=None, gpu_utilization=None)
    space = training_space(cfg, list(plan_targets(cfg.entries())))
    work = _workload(cfg.name, space, 1, pieces, speed, cfg.actors, folder)
    work.plan_wall_s = estimate(pieces, cluster, speed, concurrent, actors).wall_s
    return work


def search_workload(space, cluster: Cluster, folder: Path, gpu: str = "h100") -> Workload:
    """A sweep's search and, per target, its rank-agreement and final-evaluation jobs."""
    from pgray.pipelines.components.specs import benchmark_config
    from pgray.pipelines.plan.estimate import make_speed
    from pgray.pipelines.plan.pieces import sweep_pieces

    pieces, concurrent, actors = sweep_pieces(space, cluster)
    pieces = [p for p in pieces if p.kind == "evaluation" and (
        p.what.startswith("top") or "rank agreement" in p.what) or " trial " in p.what]
    speed = make_speed(cluster, space.fixed_config().model, gpu=gpu, gpu_profile=None,
                       gpu_utilization=None)
    from pgray.pipelines.components.targets import resolve_targets

    bench = benchmark_config(space, resolve_targets(space), folder, 1,
                             1.0 if cluster.gpus else 0.0)
    work = _workload(space.name, space, space.budget.trials, pieces, speed, bench.actors,
                     folder)
    work.plan_wall_s = estimate(pieces, cluster, speed, concurrent, actors).wall_s
    return work


def _workload(name: str, space, trials: int, pieces: list[Piece], speed, actors,
              folder: Path) -> Workload:
    from pgray.config.passes import default_proxy_every

    work = Workload(name, space, trials, {}, {}, {}, defaultdict(list), {}, actors,
                    1.0, 0.0, pieces)
    for p in pieces:
        key = _target_of(p)
        if p.kind == "training":
            work.epochs[key], work.epoch_s[key] = p.epochs, _epoch_s(p, speed)
            work.gpus_per_training = p.gpus
            train = space.fixed_config().train
            # the epochs a training reports with a checkpoint: its proxy epochs (every
            # checkpoint on a GPU falls on one: every 10th)
            work.report_every[key] = train.proxy_every or default_proxy_every(
                space.fixed_config())
            continue
        seconds = device_seconds(p, speed) / p.jobs + FIXED_COSTS.job_s
        if "rank agreement" in p.what:
            work.rank_job_s[key] = seconds
            continue
        file = folder / "checkpoints" / key.replace("/", "__") / "checkpoint.pt"
        work.jobs[key].append(SimulatedJob(
            key=f"{key}|{p.what}", seconds=seconds, what=p.what, checkpoint=str(file),
            checkpoint_sha256=key))
    return work


@dataclass
class Outcome:
    """What the driver saw, in host seconds (time.time()), for the timeline."""

    began: float = 0.0
    ended: float = 0.0
    enqueued: dict[str, float] = field(default_factory=dict)  # job key -> when queued
    dispatched: dict[str, float] = field(default_factory=dict)  # job key -> handed to an actor
    delivered: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    trial_seen: dict[str, float] = field(default_factory=dict)  # trial id -> driver heard
    trials: list = field(default_factory=list)  # TrialSummary of every trial
    failures: list = field(default_factory=list)
    peak_actors: int = 0
    actor_starts: int = 0
    store_bytes_put: int = 0
    store_peak_bytes: int = 0
    store_peak_files: int = 0
    cpu_s: float = 0.0  # the driver process's CPU over the run


class _Feed:
    """Hands each target's jobs to the evaluations as its checkpoints land."""

    def __init__(self, work: Workload, evaluations: Evaluations, out: Outcome,
                 folder: Path) -> None:
        self._work, self._evaluations, self._out = work, evaluations, out
        self._folder = folder
        self._queued: set[str] = set()

    def __call__(self, trial, target_trials) -> None:
        from pgray.distributed.train import fetch_train_checkpoint

        self._out.trial_seen.setdefault(trial.trial_id, time.time())
        key = trial.target
        ended = [t for t in target_trials if t.state != "running"]
        if key in self._queued or len(ended) < self._work.trials_per_target:
            return
        done = [t for t in ended if t.checkpoint is not None]
        if not done:
            return
        jobs = list(self._work.jobs.get(key, []))
        if jobs:
            fetch_train_checkpoint(done[0].checkpoint, Path(jobs[0].checkpoint))
        if key in self._work.rank_job_s:  # one short job per trial, on its own checkpoint
            for t in done:
                dest = self._folder / "trials" / t.trial_id / "checkpoint.pt"
                fetch_train_checkpoint(t.checkpoint, dest)
                jobs.append(SimulatedJob(
                    key=f"{key}|rank|{t.trial_id}", seconds=self._work.rank_job_s[key],
                    what=f"{key} rank agreement {t.trial_id}", checkpoint=str(dest),
                    checkpoint_sha256=t.trial_id))
        self._queued.add(key)
        now = time.time()
        for job in jobs:
            self._out.enqueued[job.key] = now
        self._evaluations.add(jobs, self._deliver)

    def _deliver(self, job, result) -> None:
        self._out.delivered[job.key].append(time.time())


def run_simulated(work: Workload, sim: Simulation, folder: Path, mlflow_uri: str, *,
                  max_failures: int = 3) -> Outcome:
    """Run the workload on the connected (logical) cluster; what the driver saw."""
    import functools
    import resource

    from pgray.distributed.cluster import resolve_resources
    from pgray.distributed.sweep_context import sweep_context
    from pgray.pipelines.components.targets import resolve_targets
    from pgray.pipelines.runners.trainings import run_trainings
    from pgray.tracking.mlflow_runs import open_run

    parent = open_run(mlflow_uri, f"simulation:{work.name}:{folder}",
                      run_name=f"simulated {work.name}")
    res = dataclasses.replace(resolve_resources(work.space.resources,
                                                "resources.gpus_per_worker"),
                              max_failures=max_failures)
    ctx = sweep_context(work.space, {t.key: t for t in resolve_targets(work.space)},
                        mlflow_uri=mlflow_uri, parent_run_id=parent.run_id,
                        storage=str(folder / "tune"), resources=res,
                        search=work.trials_per_target > 1)
    ctx = dataclasses.replace(ctx, simulate=sim)
    out = Outcome()
    evaluations = Evaluations(work.actors, sequential=False, progress=False,
                              make_worker=functools.partial(SimulatedJobs, sim))
    feed = _Feed(work, evaluations, out, folder)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    out.began = time.time()
    search = run_trainings(ctx, str(folder / "tune"), resume=False, verbose=0,
                           on_trial=feed, evaluations=evaluations)
    for trial in search.trials:  # a target whose last trial the feed did not hear of
        feed(trial, [t for t in search.trials if t.target == trial.target])
    evaluations.finish()
    out.ended = time.time()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    out.cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    out.trials = search.trials
    out.failures = evaluations.failures
    out.dispatched = evaluations.dispatched
    stats = evaluations.pool_stats()
    out.peak_actors, out.actor_starts = stats["peak_actors"], stats["actor_starts"]
    out.store_bytes_put, out.store_peak_bytes = stats["bytes_put"], stats["peak_bytes_held"]
    out.store_peak_files = stats["peak_files_held"]
    parent.finish()
    return out
