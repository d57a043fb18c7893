"""A pool of Ray actors that run jobs, each actor holding its own worker (models, data) on its
device and reused across jobs.

The pool knows jobs only through `job.cost` and `job.label()`, and workers only through
`make_worker(assigned_gpus=..., node=...)` and `worker.run(job)`. Longest jobs start first.
Actors restart (on another node if theirs is gone) and their in-flight job is retried; the
driver keeps one result per job, so a retried job lands once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Job = Any  # anything with .cost (float) and .label() (str)


class PoolWorker:
    """The actor body: builds the pipeline's worker with the GPUs Ray assigned to this actor
    (none: the CPU) and the node it landed on."""

    def __init__(self, make_worker: Callable[..., Any]):
        import ray

        self._worker = make_worker(assigned_gpus=ray.get_gpu_ids(),
                                   node=ray.get_runtime_context().get_node_id())

    def run(self, job: Job) -> Any:
        return self._worker.run(job)


def make_actor_class(cpus: float, gpus: float, max_retries: int):
    import ray

    # SPREAD: actors land on different nodes, so one lost node costs one actor, not all.
    return ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=max_retries,
                      max_task_retries=max_retries, scheduling_strategy="SPREAD")(PoolWorker)


def run_on_actors(
    jobs: list[Job],
    make_worker: Callable[..., Any],
    *,
    count: int,
    cpus: float,
    gpus: float,
    max_retries: int,
    on_result: Callable[[Job, Any], None],
    progress: bool = True,
) -> int:
    """Run every job once on a pool of `count` actors; returns the number of jobs finished."""
    import ray

    actor_cls = make_actor_class(cpus, gpus, max_retries)
    actors = [actor_cls.remote(make_worker) for _ in range(min(count, len(jobs)))]
    queue = sorted(jobs, key=lambda j: -j.cost)
    running: dict[Any, tuple[int, Job]] = {}
    from pgray.tracking.progress import JobProgress

    tracker = JobProgress(jobs, progress)
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
