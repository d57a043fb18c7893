"""The evaluation dispatcher: jobs from anywhere in a run, each with the callback its result
goes to, on Ray actors (`pgray.distributed.actors.EvalPool`) or in this process."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from operator import attrgetter
from typing import Any

from pgray.config.benchmark import ActorConfig
from pgray.pipelines.components.job_worker import JobEvaluator

WAIT_S = 0.5  # the driver's longest wait on any one thing before it looks at the rest


def _checkpoint_file(job) -> tuple[str, str]:
    """The file an actor copies: the job's checkpoint, known by its digest."""
    return job.checkpoint_sha256, job.checkpoint


class Evaluations:
    """Evaluation jobs from anywhere in a run, each with the callback its result goes to; on
    Ray actors (the pool grows and shrinks with the queue) or, with `sequential`, in this
    process at `finish()`.

    A job names its checkpoint by a path on the driver's disk; on Ray the pool copies the
    file's bytes to the actor through the object store (once per checkpoint, by its digest),
    since an actor on another node sees none of the driver's files."""

    def __init__(self, actors: ActorConfig, *, sequential: bool, progress: bool,
                 make_worker: Callable[..., Any] | None = None) -> None:
        self._sinks: dict[str, Callable[[Any, Any], None]] = {}
        self._pending: list[Any] = []
        self._pollers: list[Callable[[], bool]] = []
        self._actors = actors
        self._progress = progress
        # the actors' worker (the simulation's stands in for JobEvaluator)
        self._make_worker = make_worker or functools.partial(JobEvaluator,
                                                             threads=actors.threads)
        self._pool = None if sequential else self._make_pool()
        self._failed: list[tuple[Any, str]] = []  # jobs that failed in this process

    def _make_pool(self):
        from pgray.distributed.actors import EvalPool

        return EvalPool(self._make_worker,
                        cpus=self._actors.cpus, gpus=self._actors.gpus,
                        max_actors=self._actors.count, max_retries=self._actors.max_retries,
                        on_result=self._deliver, progress=self._progress,
                        shared_file=_checkpoint_file)

    def _deliver(self, job, result) -> None:
        self._sinks.pop(job.key)(job, result)

    def add(self, jobs: list, on_result: Callable[[Any, Any], None]) -> None:
        jobs = [j for j in jobs if j.key not in self._sinks]
        for job in jobs:
            self._sinks[job.key] = on_result
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
        from pgray.tracking.progress import JobProgress

        evaluator = JobEvaluator(threads=self._actors.threads)
        tracker = JobProgress(self._pending, self._progress)
        for job in sorted(self._pending, key=attrgetter("cost"), reverse=True):
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

    def pool_stats(self) -> dict[str, int]:
        """The pool's actors (most at once, started in all) and the checkpoints it copied
        into the object store (bytes in all, bytes and files held at once at most)."""
        pool = self._pool
        names = ("peak_actors", "actor_starts", "bytes_put", "peak_bytes_held",
                 "peak_files_held")
        return {n: 0 if pool is None else int(getattr(pool, n)) for n in names}

    @property
    def dispatched(self) -> dict[str, float]:
        """Job key -> when the pool had done all it can for it (handed it to an actor, started
        one for it, or held every actor it may; host time)."""
        return {} if self._pool is None else dict(self._pool.dispatched)

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
