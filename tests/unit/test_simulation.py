"""The simulation's pieces: trials that never import torch, and the timeline's arithmetic
(idle GPUs, work that waited while GPUs stood idle) on records made up here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from pgray.tracking.timeline import Interval, Timeline

REPO = Path(__file__).resolve().parents[2]


def test_a_simulated_trial_process_never_imports_torch():
    """What a Tune trial's process unpickles (the trainable's module, the simulated trial, the
    pool's worker) leaves torch out: the old distributed.train took the checkpoint's file
    name from core.checkpoint, which imports torch (hundreds of MB per trial process)."""
    code = ("import sys; import pgray.distributed.tune, pgray.distributed.simulation,"
            " pgray.distributed.actors, pgray.distributed.trial_summaries;"
            " print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def _timeline(work, waits, gpus=2.0):
    return Timeline(began=0.0, ended=100.0, scale=0.5, gpus=gpus, work=work, waits=waits)


def test_idle_fraction_and_idle_while_waiting_in_simulated_seconds():
    # two GPUs; one busy 0-100, the other 0-40 and 60-100: a job waiting 30-70 (needing one
    # GPU) saw one idle from 40 to 60: 20 host s, 40 simulated at scale 0.5
    work = [Interval("training", "a", 0.0, 100.0, 1.0),
            Interval("evaluation", "j1", 0.0, 40.0, 1.0),
            Interval("evaluation", "j2", 60.0, 100.0, 1.0)]
    t = _timeline(work, [Interval("evaluation", "j2", 30.0, 60.0, 1.0)])
    assert abs(t.idle_fraction() - 0.1) < 1e-3  # 20 of 200 GPU-seconds
    assert abs(t.makespan - 200.0) < 1e-9
    assert abs(t.idle_while_waiting()["evaluation"] - 40.0) < 0.1
    # a job needing two GPUs never had both free: it waited, but no GPU it could use was idle
    t = _timeline(work, [Interval("evaluation", "big", 30.0, 60.0, 2.0)])
    assert t.idle_while_waiting()["evaluation"] == 0.0


def test_the_lower_bound_is_the_work_over_the_gpus_or_the_longest_chain():
    from pgray.distributed.simulation import SimulatedJob
    from pgray.tracking.timeline import lower_bound

    job = SimulatedJob(key="t|j", seconds=50.0, what="j", checkpoint="", checkpoint_sha256="")
    work = SimpleNamespace(epoch_s={"t": 10.0}, jobs={"t": [job]}, rank_job_s={},
                           gpus_per_training=1.0, actors=SimpleNamespace(gpus=1.0))
    trials = [{"trial": "x", "target": "t", "to_epoch": 4},  # restarted: 4 then 10 epochs
              {"trial": "x", "target": "t", "to_epoch": 10}]
    bound = lower_bound(work, trials, gpus=1.0, start_s=5.0)
    # 5 + 10 x 10 of training once (the repeated epochs are not work the run needed), 50 of job
    assert bound == {"work": 155.0, "chain": 155.0, "bound": 155.0}
    assert lower_bound(work, trials, gpus=4.0, start_s=5.0)["bound"] == 155.0  # the chain
