"""The walk of a benchmark's config from the command to the workers enters each file at most
twice (`benchmarks/layer_walk.py`: a sequential benchmark on generated data, traced)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_the_benchmark_config_walks_down_the_layers(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "layer_walk.py"),
                           "--max-entries", "2", "--keep", str(tmp_path)],
                          capture_output=True, text=True, timeout=600,
                          env=os.environ | {
                              "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.endswith("most entries of one file: 2"), summary
    # the config reaches the job worker and the results side
    assert "| pipelines/components/job_worker.py |" in proc.stdout
    assert "| tracking/benchmark_run.py |" in proc.stdout
