"""The producers' one entry to the evaluations: `JobQueue.enqueue(target)` expands a target's
jobs, keeps them as the run's, and hands those not done before to the evaluation dispatcher,
each result to the run's sink. Every producer (existing files, baseline fits, trainings, the
sweep's final stage per rank, its twins, recipe and extra seeds, the rank stage) holds that one
callable, never the results side itself."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from pgray.config.benchmark import BenchmarkConfig
from pgray.pipelines.components.jobs import BenchJob, jobs_for
from pgray.pipelines.components.targets import JobTarget
from pgray.pipelines.runners.evaluations import Evaluations

Enqueue = Callable[[JobTarget], list[BenchJob]]


class Sink(Protocol):
    """Where a run's results go: the jobs it holds already (skipped), and each new result."""

    done: set[str]

    def on_result(self, job: BenchJob, result: dict[str, Any]) -> None: ...


class JobQueue:
    """One run's jobs: a benchmark's grid on each target (or `jobs_of`'s), skipping those the
    sink holds; `keys` is every job asked for, done before or not (the run's tables)."""

    def __init__(self, cfg: BenchmarkConfig, sink: Sink, evaluations: Evaluations, *,
                 progress: bool = False, verbose: bool = False,
                 jobs_of: Callable[[JobTarget], list[BenchJob]] | None = None) -> None:
        self._cfg, self._sink, self._evaluations = cfg, sink, evaluations
        self._progress, self._verbose = progress, verbose
        self._jobs_of = jobs_of
        self.jobs: list[BenchJob] = []

    def enqueue(self, target: JobTarget) -> list[BenchJob]:
        """Queue the target's jobs not done before; returns all of them."""
        jobs = (jobs_for(self._cfg, *target) if self._jobs_of is None
                else self._jobs_of(target))
        self.jobs += jobs
        todo = [j for j in jobs if j.key not in self._sink.done]
        if self._progress and (self._verbose or len(todo) < len(jobs)):
            print(f"{target.entry.dataset}/{target.category} {jobs[0].detector}:"
                  f" {len(jobs)} evaluation jobs on {Path(jobs[0].checkpoint).name},"
                  f" {len(jobs) - len(todo)} already done", flush=True)
        self._evaluations.add(todo, self._sink.on_result)
        return jobs

    @property
    def keys(self) -> set[str]:
        return {j.key for j in self.jobs}
