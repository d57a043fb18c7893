"""A simulated run's timeline (pgray.distributed.simulation's logs and what its driver saw):
GPUs at work over time, the makespan against its lower bound, how long work waited while
GPUs stood idle, and the driver's event latency. Pure functions of the records.

Times in the logs are host seconds; the simulation's are host seconds / `scale`. A GPU is at
work while a trial runs its function or an actor runs a job; starting processes and actors,
and waiting on the driver, count as idle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TRIALS_LOG, JOBS_LOG = "trials.jsonl", "jobs.jsonl"  # one line per piece of simulated work
DISPATCH = "evaluation hand-over"
GRID = 20_000  # points the run's span is cut into to measure idle-while-waiting


@dataclass
class Interval:
    kind: str  # training | evaluation
    key: str  # a trial id or a job key
    began: float  # host seconds
    ended: float
    gpus: float


@dataclass
class Timeline:
    began: float
    ended: float
    scale: float
    gpus: float
    work: list[Interval]
    waits: list[Interval]  # (kind, key, queued, started): work waiting for a GPU
    grid: np.ndarray = field(init=False)
    busy: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.grid = np.linspace(self.began, self.ended, GRID)
        delta = np.zeros(GRID + 1)
        for w in self.work:
            a, b = np.searchsorted(self.grid, [w.began, w.ended])
            delta[a] += w.gpus
            delta[b] -= w.gpus
        self.busy = np.cumsum(delta)[:GRID]

    @property
    def makespan(self) -> float:
        """Simulated seconds from the driver's start to its end."""
        return (self.ended - self.began) / self.scale

    def idle_fraction(self) -> float:
        return float(1.0 - self.busy.mean() / self.gpus)

    def idle_over_time(self, bins: int = 50) -> tuple[np.ndarray, np.ndarray]:
        """(simulated seconds at each bin's middle, idle fraction in the bin)."""
        parts = np.array_split(self.busy, bins)
        mids = np.array_split((self.grid - self.began) / self.scale, bins)
        return (np.array([m.mean() for m in mids]),
                np.array([1.0 - p.mean() / self.gpus for p in parts]))

    def idle_while_waiting(self) -> dict[str, float]:
        """Per kind, the longest simulated time one piece of work waited while at least the
        GPUs it needs stood idle (not at work)."""
        step = (self.ended - self.began) / (GRID - 1)
        longest: dict[str, float] = {}
        for w in self.waits:
            free = (self.gpus - self.busy) >= w.gpus - 1e-9
            a, b = np.searchsorted(self.grid, [w.began, w.ended])
            longest[w.kind] = max(longest.get(w.kind, 0.0),
                                  float(free[a:b].sum()) * step / self.scale)
        return longest


def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def build_timeline(log_dir: Path, outcome, *, scale: float, gpus: float,
                   training_gpus: float, job_gpus: float) -> Timeline:
    """The timeline of a simulated run: its logs (`log_dir`) and the driver's `outcome`."""
    trials, jobs = read_lines(log_dir / TRIALS_LOG), read_lines(log_dir / JOBS_LOG)
    work = [Interval("training", t["trial"], t["began"], t["ended"], training_gpus)
            for t in trials]
    work += [Interval("evaluation", j["job"], j["began"], j["ended"], job_gpus) for j in jobs]
    started: dict[str, float] = {}
    for w in work:
        started[w.key] = min(started.get(w.key, w.began), w.began)
    waits = [Interval("training", tid, outcome.began, first, training_gpus)
             for tid, first in started.items() if tid in {t["trial"] for t in trials}]
    waits += [Interval("evaluation", key, queued, started.get(key, outcome.ended), job_gpus)
              for key, queued in outcome.enqueued.items()]
    # the pool's own decisions: from a job's arrival to the pool handing it to an actor,
    # starting one for it or holding all it may (actors' start-up, the host's, left out)
    waits += [Interval(DISPATCH, key, queued, outcome.dispatched.get(key, outcome.ended),
                       job_gpus) for key, queued in outcome.enqueued.items()]
    return Timeline(outcome.began, outcome.ended, scale, gpus, work, waits)


def lower_bound(work, trials: list[dict[str, Any]], gpus: float, start_s: float
                ) -> dict[str, float]:
    """The makespan no schedule beats, in simulated seconds: the work done (each trial's
    epochs and each job once) over the GPUs, and the longest chain (a target's longest
    training, then its longest job)."""
    epochs: dict[str, tuple[str, int]] = {}
    for t in trials:
        done = epochs.get(t["trial"], (t["target"], 0))[1]
        epochs[t["trial"]] = (t["target"], max(done, t["to_epoch"]))
    training = {tid: start_s + n * work.epoch_s[target] for tid, (target, n) in epochs.items()}
    job_s = {j.key: j.seconds for jobs in work.jobs.values() for j in jobs}
    rank_s = sum(work.rank_job_s.get(target, 0.0) for target, _ in epochs.values())
    total = (sum(training.values()) * work.gpus_per_training
             + (sum(job_s.values()) + rank_s) * work.actors.gpus)
    chain = 0.0
    for target in work.epoch_s:
        longest = max((s for tid, s in training.items() if epochs[tid][0] == target),
                      default=0.0)
        after = max([j.seconds for j in work.jobs.get(target, [])]
                    + [work.rank_job_s.get(target, 0.0)])
        chain = max(chain, longest + after)
    return {"work": total / gpus, "chain": chain, "bound": max(total / gpus, chain)}


def latencies(log_dir: Path, outcome) -> dict[str, float]:
    """Host seconds from a piece of work's end to the driver hearing of it (median, 95th
    percentile, largest): evaluation results and trials' ends."""
    ends: dict[str, float] = {}
    for j in read_lines(log_dir / JOBS_LOG):
        ends[j["job"]] = j["ended"]
    job = [outcome.delivered[k][0] - ends[k] for k in outcome.delivered if k in ends]
    last: dict[str, float] = {}
    for t in read_lines(log_dir / TRIALS_LOG):
        last[t["trial"]] = max(last.get(t["trial"], 0.0), t["ended"])
    trial = [seen - last[tid] for tid, seen in outcome.trial_seen.items() if tid in last]
    out = {}
    for name, values in (("job", job), ("trial", trial)):
        v = np.array(values) if values else np.zeros(1)
        out |= {f"{name}_p50": float(np.median(v)), f"{name}_p95": float(np.percentile(v, 95)),
                f"{name}_max": float(v.max())}
    return out


def plot_idle(timeline: Timeline, path: Path, title: str) -> Path:
    """The idle fraction of the GPUs over the run (simulated hours)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mids, idle = timeline.idle_over_time()
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.step(mids / 3600, idle * 100, where="mid")
    ax.set_xlabel("simulated hours")
    ax.set_ylabel("GPUs idle (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
