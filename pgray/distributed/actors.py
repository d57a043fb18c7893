"""A pool of Ray actors, each holding models on its device, reused across benchmark jobs.

Longest jobs start first. Actors restart (on another node if theirs is gone) and their
in-flight job is retried; the driver keeps one result per job key, so a retried job lands once.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from pgray.benchmark_jobs import BenchJob, JobEvaluator


def make_actor_class(cpus: float, gpus: float, max_retries: int):
    import ray

    # SPREAD: actors land on different nodes, so one lost node costs one actor, not all.
    return ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=max_retries,
                      max_task_retries=max_retries, scheduling_strategy="SPREAD")(JobEvaluator)


class Progress:
    """Jobs done / total, what each actor runs, and time left from the cost done so far."""

    def __init__(self, jobs: list[BenchJob], enabled: bool = True):
        self.total_cost = sum(j.cost for j in jobs) or 1.0
        self.total = len(jobs)
        self.done = 0
        self.done_cost = 0.0
        self.started = time.perf_counter()
        self.enabled = enabled

    def update(self, job: BenchJob, running: dict[int, BenchJob]) -> None:
        self.done += 1
        self.done_cost += job.cost
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.started
        left = elapsed * (self.total_cost - self.done_cost) / max(self.done_cost, 1e-9)
        now = ", ".join(f"a{i}: {j.label()}" for i, j in sorted(running.items())) or "-"
        print(f"[{self.done}/{self.total}] done {job.label()} | running: {now} | "
              f"elapsed {elapsed:.0f}s, left ~{left:.0f}s", file=sys.stderr, flush=True)


def run_on_actors(
    jobs: list[BenchJob],
    *,
    count: int,
    cpus: float,
    gpus: float,
    threads: int,
    max_retries: int,
    on_result: Callable[[BenchJob, dict[str, Any]], None],
    progress: bool = True,
) -> int:
    """Run every job once on a pool of `count` actors; returns the number of jobs finished."""
    import ray

    actor_cls = make_actor_class(cpus, gpus, max_retries)
    actors = [actor_cls.remote(threads=threads) for _ in range(min(count, len(jobs)))]
    queue = sorted(jobs, key=lambda j: -j.cost)
    running: dict[Any, tuple[int, BenchJob]] = {}
    tracker = Progress(jobs, progress)
    finished = 0
    for i, actor in enumerate(actors):
        if queue:
            job = queue.pop(0)
            running[actor.run.remote(job)] = (i, job)
    while running:
        ready, _ = ray.wait(list(running), num_returns=1)
        ref = ready[0]
        i, job = running.pop(ref)
        result = ray.get(ref)
        on_result(job, result)
        finished += 1
        tracker.update(job, {k: j for k, j in running.values()})
        if queue:
            nxt = queue.pop(0)
            running[actors[i].run.remote(nxt)] = (i, nxt)
    return finished


def run_sequential(jobs: list[BenchJob], *, threads: int,
                   on_result: Callable[[BenchJob, dict[str, Any]], None],
                   progress: bool = True) -> int:
    """The same jobs in this process, one after another (the reference for speed-ups)."""
    evaluator = JobEvaluator(threads=threads)
    tracker = Progress(jobs, progress)
    for job in sorted(jobs, key=lambda j: -j.cost):
        on_result(job, evaluator.run(job))
        tracker.update(job, {})
    return len(jobs)
