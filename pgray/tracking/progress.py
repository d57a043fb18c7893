"""Progress lines for long work: jobs done of total, what runs where, time left."""

from __future__ import annotations

import sys
import time
from typing import Any


class JobProgress:
    """Jobs done / total, what each actor runs, and time left from the cost done so far."""

    def __init__(self, jobs: list[Any], enabled: bool = True):
        self.total_cost = sum(j.cost for j in jobs) or 1.0
        self.total = len(jobs)
        self.done = 0
        self.done_cost = 0.0
        self.started = time.perf_counter()
        self.enabled = enabled

    def update(self, job: Any, running: dict[int, Any]) -> None:
        self.done += 1
        self.done_cost += job.cost
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.started
        left = elapsed * (self.total_cost - self.done_cost) / max(self.done_cost, 1e-9)
        now = ", ".join(f"a{i}: {j.label()}" for i, j in sorted(running.items())) or "-"
        print(f"[{self.done}/{self.total}] done {job.label()} | running: {now} | "
              f"elapsed {elapsed:.0f}s, left ~{left:.0f}s", file=sys.stderr, flush=True)
