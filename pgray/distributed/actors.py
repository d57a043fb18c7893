"""Evaluation jobs on a pool of Ray actors that grows as jobs arrive and shrinks when none wait.

The pool knows jobs only through `job.key`, `job.cost` and `job.label()`, and workers only
through `make_worker(assigned_gpus=..., node=...)` and `worker.run(job, *inputs)`, where
`inputs(job)` (optional) gives object references that Ray resolves on the actor's node: how a
file on the driver's disk (a checkpoint) reaches an actor on another machine. It is built on Ray's
`ActorPool` and adds what a cluster shared with training needs:
- it never holds more actors than the cluster's total resources fit, counting every resource
  an actor asks for (an actor that can never be scheduled would keep its jobs forever);
- actors are created when jobs wait and ended when none do, so their GPUs go back to the
  trainings that Ray schedules beside them (no fixed split of the cluster);
- the costliest waiting job starts first; a job already queued or done is not queued again.
Actors restart (on another node if theirs is gone) and their in-flight job is retried.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

Job = Any  # anything with .key, .cost and .label()


class PoolWorker:
    """The actor body: builds the pipeline's worker with the GPUs Ray assigned to this actor
    (none: the CPU) and the node it landed on."""

    def __init__(self, make_worker: Callable[..., Any]):
        import ray

        self._worker = make_worker(assigned_gpus=ray.get_gpu_ids(),
                                   node=ray.get_runtime_context().get_node_id())

    def run(self, job: Job, *inputs: Any) -> tuple[str, Any]:
        return job.key, self._worker.run(job, *inputs)


def pool_size(wanted: int, cpus: float, gpus: float, cluster: dict[str, float]) -> int:
    """How many actors of (cpus, gpus) the cluster holds at once, at most `wanted`."""
    fits = wanted
    for kind, need in (("CPU", cpus), ("GPU", gpus)):
        if need > 0:
            fits = min(fits, math.floor(cluster.get(kind, 0.0) / need + 1e-9))
    return fits


class EvalPool:
    """Jobs in, results out through `on_result(job, result)`; call `poll()` often and
    `drain()` at the end."""

    def __init__(self, make_worker: Callable[..., Any], *, cpus: float, gpus: float,
                 max_actors: int, max_retries: int, on_result: Callable[[Job, Any], None],
                 progress: bool = True, inputs: Callable[[Job], list] | None = None) -> None:
        import ray
        from ray.util import ActorPool

        from pgray.errors import ClusterError
        from pgray.tracking.progress import JobProgress

        self._limit = pool_size(max_actors, cpus, gpus, dict(ray.cluster_resources()))
        if self._limit < 1:
            raise ClusterError(
                f"an evaluation actor asks for {cpus:g} CPU and {gpus:g} GPU, more than the"
                f" cluster has ({dict(ray.cluster_resources())}); lower actors.cpus/gpus")
        # SPREAD: actors land on different nodes, so one lost node costs one actor, not all.
        self._actor_cls = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=max_retries,
                                     max_task_retries=max_retries,
                                     scheduling_strategy="SPREAD")(PoolWorker)
        self._make_worker = make_worker
        self._pool = ActorPool([])
        self._actors = 0
        self._waiting: list[Job] = []
        self._seen: set[str] = set()
        self._running: dict[str, Job] = {}
        self._on_result = on_result
        self._inputs = inputs or (lambda job: [])
        self._progress = JobProgress([], progress)
        self.peak_actors = 0

    @property
    def limit(self) -> int:
        return self._limit

    def add(self, jobs: list[Job]) -> int:
        """Queue the jobs not queued before; returns how many were new."""
        new = [j for j in jobs if j.key not in self._seen]
        self._seen.update(j.key for j in new)
        self._waiting += new
        self._waiting.sort(key=lambda j: -j.cost)
        self._progress.expect(new)
        self._start_waiting()
        return len(new)

    def _start_waiting(self) -> None:
        import ray

        while self._waiting:
            if not self._pool.has_free():
                if self._actors >= self._limit:
                    return
                self._pool.push(self._actor_cls.remote(self._make_worker))
                self._actors += 1
                self.peak_actors = max(self.peak_actors, self._actors)
            job = self._waiting.pop(0)
            self._running[job.key] = job
            self._pool.submit(lambda actor, j: actor.run.remote(j, *self._inputs(j)), job)
        while self._pool.has_free():  # nothing waits: idle actors give their GPUs back
            ray.kill(self._pool.pop_idle())
            self._actors -= 1

    def poll(self, timeout: float | None = 0.0) -> int:
        """Hand on every finished result (waiting up to `timeout` for the first one)."""
        done = 0
        while self._pool.has_next():
            try:
                key, result = self._pool.get_next_unordered(timeout=timeout)
            except TimeoutError:
                break
            job = self._running.pop(key)
            self._on_result(job, result)
            self._progress.update(job, self._running)
            done += 1
            timeout = 0.0
            self._start_waiting()
        return done

    def drain(self) -> None:
        while self._waiting or self._pool.has_next():
            self.poll(timeout=None)
        self._start_waiting()

    @property
    def busy(self) -> bool:
        return bool(self._waiting or self._pool.has_next())
