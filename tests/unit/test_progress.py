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
    bar = progress.JobProgress([], enabled=True, every_s=0.0)
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


def test_off_a_terminal_a_line_comes_every_so_often_and_when_all_known_jobs_are_done(
        monkeypatch, capsys):
    clock = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    jobs = [Job(str(i)) for i in range(6)]
    bar = progress.JobProgress(jobs, enabled=True, every_s=30.0)
    said = []
    for job, after in zip(jobs, (5, 5, 25, 10, 15, 5)):  # done at 5, 10, 35, 45, 60, 65 s
        clock[0] += after
        bar.update(job, {})
        said += [line for line in capsys.readouterr().err.splitlines() if line]
    # nothing before 30 s of work; then at 35 s, not again until 65 s, where all are done
    assert [line.split(" done")[0] for line in said] == ["[3/6]", "[6/6]"]
