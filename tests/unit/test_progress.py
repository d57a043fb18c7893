"""The evaluation progress line: time left comes from the time jobs were outstanding, not
from the wait for checkpoints still training (a sweep's pool exists long before its jobs)."""

from __future__ import annotations

from dataclasses import dataclass

from pgray.tracking import progress


@dataclass
class Job:
    name: str
    cost: float = 1.0

    def label(self) -> str:
        return self.name


def test_time_left_counts_only_the_stretches_with_work(monkeypatch, capsys):
    clock = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    bar = progress.JobProgress([], enabled=True)
    clock[0] += 250.0  # training: no job known yet
    a, b = Job("a"), Job("b")
    bar.expect([a, b])
    clock[0] += 10.0
    bar.update(a, {})
    assert "busy 10s, left ~10s" in capsys.readouterr().err
    clock[0] += 10.0
    bar.update(b, {})
    clock[0] += 500.0  # the next target still training
    c = Job("c", cost=2.0)
    bar.expect([c])
    clock[0] += 20.0
    bar.update(c, {})
    assert bar.busy_s() == 40.0
    assert "[3/3] done c | running: - | busy 40s, left ~0s" in capsys.readouterr().err
