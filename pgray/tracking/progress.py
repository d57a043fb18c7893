"""Progress lines for long work: jobs done of those known so far, and time left."""

from __future__ import annotations

import sys
import time
from typing import Any


class JobProgress:
    """Jobs done / known, and time left from the cost done so far. Jobs may keep arriving
    (evaluations of checkpoints that are still training): `expect` adds them, and the rate
    counts only the time some job was waiting or running, never the wait for a checkpoint."""

    def __init__(self, jobs: list[Any], enabled: bool = True, every_s: float = 30.0):
        # Off a terminal (a log, `ray job logs`) a line at most every `every_s` and when the
        # known jobs are all done; on a terminal one line that updates in place.
        self.every_s = every_s
        self._said_at = 0.0  # busy seconds at the last line
        self.total_cost = 0.0
        self.total = 0
        self.done = 0
        self.done_cost = 0.0
        self.enabled = enabled
        self._busy_s = 0.0  # closed stretches with work outstanding
        self._busy_since: float | None = None
        self.expect(jobs)

    def expect(self, jobs: list[Any]) -> None:
        if jobs and self._busy_since is None:
            self._busy_since = time.perf_counter()
        self.total += len(jobs)
        self.total_cost += sum(j.cost for j in jobs)

    def busy_s(self) -> float:
        open_s = 0.0 if self._busy_since is None else time.perf_counter() - self._busy_since
        return self._busy_s + open_s

    def update(self, job: Any, running: dict[Any, Any]) -> None:
        self.done += 1
        self.done_cost += job.cost
        busy = self.busy_s()
        if self.done == self.total and self._busy_since is not None:
            self._busy_s, self._busy_since = busy, None
        if not self.enabled:
            return
        left = busy * (self.total_cost - self.done_cost) / max(self.done_cost, 1e-9)
        now = ", ".join(j.label() for j in running.values()) or "-"
        line = (f"[{self.done}/{self.total}] done {job.label()} | running: {now} | "
                f"busy {busy:.0f}s, left ~{left:.0f}s")
        finished = self.done == self.total
        if sys.stderr.isatty():
            sys.stderr.write("\r\033[K" + line + ("\n" if finished else ""))
            sys.stderr.flush()
            return
        # counted in busy time: the wait for a checkpoint still training says nothing new
        since = busy - self._said_at
        if finished or since >= self.every_s:
            self._said_at = busy
            print(line, file=sys.stderr, flush=True)
