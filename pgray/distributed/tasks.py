"""Functions run as Ray tasks with the CPUs and GPUs they ask for. A task's function is called
as `fn(*args, assigned_gpus=[...])`, the GPUs Ray gave it (none: the CPU), the way an
evaluation actor's worker is built (`pgray.distributed.actors`); it knows nothing of Ray. The
driver waits on one (`run_task`), or lands those of many that have finished without waiting
(`Tasks.ready`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MAX_RETRIES = 2  # a task whose worker process dies (its node lost) starts again


def _call_with_gpus(fn: Callable[..., Any], *args: Any) -> Any:
    import ray

    return fn(*args, assigned_gpus=ray.get_gpu_ids())


def _remote(cpus: float, gpus: float):
    import ray

    return ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=MAX_RETRIES)(_call_with_gpus)


def run_task(fn: Callable[..., Any], *args: Any, cpus: float, gpus: float) -> Any:
    """`fn(*args)` as one Ray task; its result (its error raised here)."""
    import ray

    return ray.get(_remote(cpus, gpus).remote(fn, *args))


class Tasks:
    """Calls of one function as Ray tasks of (cpus, gpus) each, every one with a tag the
    driver knows it by."""

    def __init__(self, fn: Callable[..., Any], *, cpus: float, gpus: float) -> None:
        self._fn = fn
        self._task = _remote(cpus, gpus)
        self._pending: dict[Any, Any] = {}  # object ref -> tag

    def submit(self, tag: Any, *args: Any) -> None:
        self._pending[self._task.remote(self._fn, *args)] = tag

    def ready(self) -> list[tuple[Any, Any]]:
        """(tag, result) of every task finished by now, without waiting for the others."""
        import ray

        landed = []
        while self._pending:
            done, _ = ray.wait(list(self._pending), num_returns=1, timeout=0)
            if not done:
                break
            landed.append((self._pending.pop(done[0]), ray.get(done[0])))
        return landed

    @property
    def pending(self) -> int:
        return len(self._pending)
