"""A run's lineage and system metrics: the training split as an MLflow dataset whose digest is
the split's fingerprint, and the node's system metrics sampled onto a run, a block shorter
than one sampling interval included, in a process that never imported Ray."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pgray.config import DataConfig

REPO = Path(__file__).resolve().parents[2]

SAMPLE = """
import sys, time
from mlflow.tracking import MlflowClient
from pgray.tracking.lineage import system_metrics
from pgray.tracking.mlflow_runs import open_run
run = open_run(sys.argv[1], "watched")
with system_metrics(sys.argv[1], run.run_id, node="node7"):
    time.sleep(0.3)  # far shorter than the 60 s interval below
metrics = MlflowClient(sys.argv[1]).get_run(run.run_id).data.metrics
print("RAY" if "ray" in sys.modules else "NORAY", sorted(metrics))
"""


def test_a_short_block_gets_its_system_metrics_without_ray(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = os.environ | {"PYTHONPATH": str(REPO), "PGRAY_SYSTEM_METRICS_S": "60"}
    done = subprocess.run([sys.executable, "-c", SAMPLE, uri], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    said = done.stdout.strip().splitlines()[-1]
    assert said.startswith("NORAY")
    for key in ("cpu_utilization_percentage", "system_memory_usage_megabytes"):
        assert f"'system/node7/{key}'" in said, said


def test_the_training_split_is_a_dataset_with_the_fingerprint_as_digest(synthetic_root):
    from pgray.data.dataset import discover_split
    from pgray.data.samples import split_fingerprint
    from pgray.tracking.lineage import training_dataset

    data = DataConfig(dataset="synthetic", root=str(synthetic_root), category="weave")
    split = training_dataset(data)
    assert split.name == "synthetic/weave/train"
    assert split.digest == split_fingerprint(discover_split(data, "train"), synthetic_root)
    assert training_dataset(DataConfig(dataset="synthetic", root=str(synthetic_root / "no"),
                                       category="weave")) is None  # said, never raised
