"""Evaluation jobs on a pool of Ray actors that grows as jobs arrive and shrinks when none wait.

The pool knows jobs only through `job.key`, `job.cost` and `job.label()`, and workers only
through `make_worker(assigned_gpus=..., node=...)` and `worker.run(job, *inputs)`. Where
`shared_file(job)` (optional) names a file on the driver's disk that the job needs (a
checkpoint), by a key and a path, the pool puts its bytes into Ray's object store once per key
and hands them to `run` as the one input (Ray resolves them on the actor's node: how the file
reaches an actor on another machine); the copy is freed when the last job of its key is done.
What a cluster shared with training needs:
- it never holds more actors than the cluster's total resources fit, counting every resource
  an actor asks for (an actor that can never be scheduled would keep its jobs forever);
- actors are created when jobs wait and ended when none do, so their GPUs go back to the
  trainings that Ray schedules beside them (no fixed split of the cluster);
- the costliest waiting job starts first, and only on an actor that is up: a job bound to an
  actor still waiting for a GPU would wait behind it while another actor stood free (and,
  after a node is lost, behind an actor the smaller cluster never schedules); a job already
  queued or done is not queued again;
- an actor lost with its node is dropped and its job queued again for a new actor (up to
  `max_retries` times); a job that fails in its own code is reported once, not retried, and
  the others go on (`failures`).
It waits on the actors' futures itself (`ray.wait`): Ray's ActorPool does not say which job a
failed future belonged to.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any

Job = Any  # anything with .key, .cost and .label()


class PoolWorker:
    """The actor body: builds the pipeline's worker with the GPUs Ray assigned to this actor
    (none: the CPU) and the node it landed on. An actor holding part of a GPU keeps to its
    share of the GPU's memory."""

    def __init__(self, make_worker: Callable[..., Any]):
        import ray

        from pgray.core.device import cap_gpu_memory

        cap_gpu_memory(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))
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
                 progress: bool = True,
                 shared_file: Callable[[Job], tuple[str, str]] | None = None) -> None:
        import ray

        from pgray.errors import ClusterError
        from pgray.tracking.progress import JobProgress

        self._limit = pool_size(max_actors, cpus, gpus, dict(ray.cluster_resources()))
        if self._limit < 1:
            raise ClusterError(
                f"an evaluation actor asks for {cpus:g} CPU and {gpus:g} GPU, more than the"
                f" cluster has ({dict(ray.cluster_resources())}); lower actors.cpus/gpus")
        # SPREAD: actors land on different nodes, so one lost node costs one actor, not all.
        self._actor_cls = ray.remote(num_cpus=cpus, num_gpus=gpus,
                                     scheduling_strategy="SPREAD")(PoolWorker)
        self._make_worker = make_worker
        self._max_retries = max_retries
        self._idle: list[Any] = []
        self._actors = 0
        self._waiting: list[Job] = []
        self._seen: set[str] = set()
        self._running: dict[Any, tuple[Job, Any]] = {}  # future -> (job, actor)
        self._starting: dict[Any, Any] = {}  # an actor's ready future -> the actor
        self._failed_starts = 0  # actors in a row that died starting
        self._lost: dict[str, int] = {}  # job key -> actors lost while running it
        self._on_result = on_result
        self._shared_file = shared_file
        self._blobs: dict[str, Any] = {}  # file key -> object ref of its bytes
        self._users: dict[str, int] = {}  # file key -> its jobs not done yet
        self._progress = JobProgress([], progress)
        self.failures: list[tuple[Job, str]] = []  # jobs that failed in their own code
        self.peak_actors = 0
        self.actor_starts = 0
        # job key -> when the pool had done all it can for it: handed it to an actor, started
        # one for it, or holds every actor it may (what is left until it runs is actors
        # starting or busy, not the pool's choice)
        self.dispatched: dict[str, float] = {}
        self.bytes_put = 0  # checkpoint bytes copied into the object store
        self._bytes_held = 0
        self.peak_bytes_held = 0
        self.peak_files_held = 0  # checkpoints in the object store at once

    @property
    def limit(self) -> int:
        return self._limit

    def add(self, jobs: list[Job]) -> int:
        """Queue the jobs not queued before; returns how many were new."""
        new = [j for j in jobs if j.key not in self._seen]
        self._seen.update(j.key for j in new)
        for job in new if self._shared_file is not None else ():
            key = self._shared_file(job)[0]
            self._users[key] = self._users.get(key, 0) + 1
        self._progress.expect(new)
        self._queue(new)
        return len(new)

    def _queue(self, jobs: list[Job]) -> None:
        self._waiting += jobs
        self._waiting.sort(key=lambda j: -j.cost)
        self._start_waiting()

    def _start_waiting(self) -> None:
        """Hand the costliest waiting jobs to ready idle actors, start actors for the jobs
        left (a job is bound to an actor only once it is up: one bound to an actor still
        waiting for a GPU would wait behind it while another actor stood free), and end
        actors that nothing waits for."""

        while self._waiting and self._idle:
            job, actor = self._waiting.pop(0), self._idle.pop()
            self.dispatched.setdefault(job.key, time.time())
            self._running[actor.run.remote(job, *self._inputs(job))] = (job, actor)
        while len(self._starting) < len(self._waiting) and self._actors < self._limit:
            actor = self._actor_cls.remote(self._make_worker)
            self._starting[actor.__ray_ready__.remote()] = actor
            self._actors += 1
            self.actor_starts += 1
            self.peak_actors = max(self.peak_actors, self._actors)
        now = time.time()
        covered = len(self._waiting) if self._actors >= self._limit else len(self._starting)
        for job in self._waiting[:covered]:
            self.dispatched.setdefault(job.key, now)
        while len(self._starting) > len(self._waiting):  # more on the way than jobs wait
            self._end(self._starting.pop(next(reversed(self._starting))))
        while self._idle:  # nothing waits: idle actors give their GPUs back
            self._end(self._idle.pop())

    def _end(self, actor: Any) -> None:
        import ray

        ray.kill(actor)
        self._actors -= 1

    def _inputs(self, job: Job) -> list:
        """The object reference of the job's shared file (put once per key), or nothing."""
        if self._shared_file is None:
            return []
        import ray

        key, path = self._shared_file(job)
        if key not in self._blobs:
            with open(path, "rb") as handle:
                data = handle.read()
            self._blobs[key] = (ray.put(data), len(data))
            self.bytes_put += len(data)
            self._bytes_held += len(data)
            self.peak_bytes_held = max(self.peak_bytes_held, self._bytes_held)
            self.peak_files_held = max(self.peak_files_held, len(self._blobs))
        return [self._blobs[key][0]]

    def _done_with(self, job: Job) -> None:
        """The job will not run again: free its file's copy once no other job needs it."""
        if self._shared_file is None:
            return
        key = self._shared_file(job)[0]
        self._users[key] -= 1
        if self._users[key] == 0 and key in self._blobs:
            self._bytes_held -= self._blobs.pop(key)[1]

    def poll(self, timeout: float | None = 0.0) -> int:
        """Hand on every finished result (waiting up to `timeout` for the first one)."""
        import ray

        done = 0
        while self._running or self._starting:
            ready, _ = ray.wait([*self._running, *self._starting], num_returns=1,
                                timeout=timeout)
            if not ready:
                break
            timeout = 0.0
            if ready[0] in self._starting:
                self._actor_up(ready[0])
                continue
            job, actor = self._running.pop(ready[0])
            try:
                _, result = ray.get(ready[0])
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as err:
                self._actor_lost(job, actor, err)
                continue
            except ray.exceptions.RayTaskError as err:
                self._job_failed(job, actor, err)
                continue
            self._idle.append(actor)
            self._done_with(job)
            self._on_result(job, result)
            self._progress.update(job, {k: j for k, (j, _) in self._running.items()})
            done += 1
            self._start_waiting()
        return done

    def _actor_up(self, ready: Any) -> None:
        """An actor finished starting (or died starting: another is started if jobs wait)."""
        import ray

        actor = self._starting.pop(ready)
        try:
            ray.get(ready)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as err:
            self._end(actor)
            # a worker that cannot be built fails the jobs, one per start past the retries
            self._failed_starts += 1
            if self._failed_starts > self._max_retries and self._waiting:
                self._job_failed(self._waiting.pop(0), None, err)
        else:
            self._failed_starts = 0
            self._idle.append(actor)
        self._start_waiting()

    def _actor_lost(self, job: Job, actor: Any, err: BaseException) -> None:
        """Its node went away (or the actor died): a new actor takes the job."""
        self._end(actor)
        self._lost[job.key] = self._lost.get(job.key, 0) + 1
        if self._lost[job.key] > self._max_retries:
            self._job_failed(job, None, err)
            return
        warnings.warn(f"evaluation actor lost while running {job.label()}; retrying it"
                      f" ({self._lost[job.key]} of {self._max_retries})", stacklevel=2)
        self._queue([job])

    def _job_failed(self, job: Job, actor: Any, err: BaseException) -> None:
        from pgray.errors import first_line

        cause = getattr(err, "cause", None) or err
        self.failures.append((job, first_line(cause)))
        self._done_with(job)
        warnings.warn(f"evaluation {job.label()} failed: {first_line(cause)}", stacklevel=2)
        if actor is not None:
            self._idle.append(actor)
        self._progress.update(job, {k: j for k, (j, _) in self._running.items()})
        self._start_waiting()

    def drain(self) -> None:
        while self._waiting or self._running:
            self.poll(timeout=None)
        self._start_waiting()

    @property
    def busy(self) -> bool:
        return bool(self._waiting or self._running)
