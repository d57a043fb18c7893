"""benchmarks/gpu_check.sh, the one prepared GPU run, works before a GPU is ever lent: its
--smoke mode runs every stage of both calls on the CPU with tiny models, and what it leaves in
OUT is what the lent machine brings back (at most 8 plain files)."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def test_gpu_check_smoke_runs_every_stage_and_returns_at_most_eight_files(tmp_path):
    out = tmp_path / "out"
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.run(["bash", str(SCRIPT), "--smoke", str(out), "--work",
                           str(tmp_path / "work")], capture_output=True, text=True,
                          timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert [s["name"] for s in results["stages"]] == [
        "attack_step", "method", "train_step", "gpu_utilisation", "paths", "precision"]
    assert all(s["status"] == "ok" for s in results["stages"]), results["stages"]
    assert set(results["rows"]) == {s["name"] for s in results["stages"]}
    returned = sorted(p.name for p in out.iterdir())
    assert returned == ["gpu_utilisation.json", "logs.tar.gz", "mlflow.tar.gz",
                        "results.json", "summary.md"]
    summary = (out / "summary.md").read_text()
    for model in ("adversarial PGD-10", "clean-trained", "fast: nfgsm"):
        assert f"| {model} |" in summary
    for path in ("ray_train_one_gpu_worker", "eval_actors_half_a_gpu",
                 "nccl_collectives_world_1", "bf16_attack_and_step"):
        assert f"- {path}: ok" in summary
    assert "## Utilisation per batch size (for --plan)" in summary
    with tarfile.open(out / "logs.tar.gz") as tar:
        assert {"attack_step.txt", "method.md", "paths.txt"} <= set(tar.getnames())
    with tarfile.open(out / "mlflow.tar.gz") as tar:  # the Ray Train run's MLflow record
        assert any(n.endswith("meta.yaml") for n in tar.getnames())
