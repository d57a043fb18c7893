"""benchmarks/certify_cost.py --quick: it measures certified images per second here, and its
GPU estimate for the paper's datasets is the certify jobs' passes (`CertifyWork`) at the
plan's rates."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_cost_benchmark_prints_measured_rates_and_the_paper_from_the_passes(tmp_path):
    from pgray.config import CertifyConfig, EvalConfig
    from pgray.config.passes import FORWARD_PASS_COST
    from pgray.core.certify import certify_work
    from pgray.pipelines.plan.data import ASSUMED_TEST
    from pgray.pipelines.plan.speed import VITS_GFLOP_PER_IMAGE_STEP, GpuSpeed

    env = os.environ | {"PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "certify_cost.py"),
                          "--quick"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600, check=True).stdout
    rate = float(re.search(r"ms per image: ([\d.]+) certified images/s", out).group(1))
    assert rate > 0
    passes = re.search(r"its passes per image: ([\d,]+) forwards \(([\d,]+) certifying,"
                       r" ([\d,]+) judging, ([\d,]+) queries\) and ([\d,]+) attack", out)
    # --quick: 100 samples, 2 radii, 5 l2 members and the clean image judged, Square 10
    # queries on each of the 4 images, 2 EOT draws; 4 gradient members x 2 steps x 2 draws
    assert [int(g.replace(",", "")) for g in passes.groups()] == [
        100 + 1200 + 40, 100, 2 * 6 * 100, 2 * 10 * 2, 2 * 4 * 2 * 2]
    mvtec = next(line.split() for line in out.splitlines()
                 if line.strip().startswith("mvtec "))
    # no data here: each of MVTec's 15 categories at the plan's assumed size, its own job
    # (Square on 64 of its images)
    categories, images = int(mvtec[1]), int(mvtec[2])
    assert (categories, images, mvtec[3]) == (15, 15 * ASSUMED_TEST, "assumed")
    work = certify_work(EvalConfig(eps=[], certify=CertifyConfig(radii=[0.1, 0.25])),
                        ASSUMED_TEST)
    assert int(mvtec[4].replace(",", "")) == categories * work.forwards
    assert int(mvtec[5].replace(",", "")) == categories * work.attack_image_steps
    speed = GpuSpeed(VITS_GFLOP_PER_IMAGE_STEP, "h100")  # no profile under tmp_path
    seconds = ((work.certify_forwards + work.judge_forwards) * FORWARD_PASS_COST
               / speed.rate(1024, "fp32") + (work.attack_image_steps + work.query_forwards
                                             * FORWARD_PASS_COST) / speed.rate(256, "bf16"))
    assert float(mvtec[6]) == pytest.approx(categories * seconds / 3600, abs=0.05)
    rows = [float(line.split()[-1]) for line in out.splitlines()
            if re.match(r"\s*\w+\s+\d+\s+\d+\s+(assumed|counted)", line)]
    assert len(rows) == 8
    total = float(re.search(r"all eight: ([\d,.]+) GPU hours", out).group(1))
    assert total == pytest.approx(sum(rows), abs=0.05 * (len(rows) + 1))  # rows rounded
