"""Progress lines for long work: jobs done of those known so far, and time left."""

from __future__ import annotations

import sys
import time
from typing import Any


class JobProgress:
    """Jobs done / known, and time left from the cost done so far. Jobs may keep arriving
    (evaluations of checkpoints that are still training): `expect` adds them."""

    def __init__(self, jobs: list[Any], enabled: bool = True):
        self.total_cost = 0.0
        self.total = 0
        self.done = 0
        self.done_cost = 0.0
        self.started = time.perf_counter()
        self.enabled = enabled
        self.expect(jobs)

    def expect(self, jobs: list[Any]) -> None:
        self.total += len(jobs)
        self.total_cost += sum(j.cost for j in jobs)

    def update(self, job: Any, running: dict[Any, Any]) -> None:
        self.done += 1
        self.done_cost += job.cost
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.started
        left = elapsed * (self.total_cost - self.done_cost) / max(self.done_cost, 1e-9)
        now = ", ".join(j.label() for j in running.values()) or "-"
        print(f"[{self.done}/{self.total}] done {job.label()} | running: {now} | "
              f"elapsed {elapsed:.0f}s, left ~{left:.0f}s", file=sys.stderr, flush=True)
