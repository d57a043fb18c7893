"""benchmarks/gpu_check.sh, the one prepared GPU run, works before a GPU is ever lent: its
--smoke mode runs every stage on the CPU with tiny models."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"


def test_gpu_check_smoke_runs_every_stage(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), "--smoke", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    stages = (tmp_path / "out" / "stages.txt").read_text().splitlines()
    assert [s.split(":")[0] for s in stages] == ["attack_step", "train_step", "precision",
                                                  "method", "paths", "gpu_utilisation"]
    assert all(": ok in" in s for s in stages), stages
    summary = (tmp_path / "out" / "summary.md").read_text()
    for model in ("adversarial PGD-10", "clean-trained", "fast: nfgsm"):
        assert f"| {model} |" in summary
    for path in ("ray_train_one_gpu_worker", "eval_actors_half_a_gpu",
                 "nccl_collectives_world_1", "bf16_attack_and_step"):
        assert f"- {path}: ok" in summary
    assert "## Utilisation per batch size (for --plan)" in summary
    for rows in ("attack_step.json", "train_step.json", "precision.json", "method.json",
                 "paths.json", "gpu_utilisation.json"):
        assert (tmp_path / "out" / rows).stat().st_size > 0
