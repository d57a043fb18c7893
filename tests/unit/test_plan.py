"""`--plan`'s arithmetic: passes per method, the proxy, the sweep's clean twins and extra
seeds, the peak of the precision that runs, the utilisation table and its labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import tiny_experiment

from pgray.pipelines.plan.cluster import Cluster
from pgray.pipelines.plan.costs import proxy_epochs, proxy_image_steps, step_image_steps
from pgray.pipelines.plan.estimate import Piece, estimate, training_piece
from pgray.pipelines.plan.speed import (
    ASSUMED_UTILISATION,
    PEAK_TFLOPS,
    GpuSpeed,
    gpu_precision,
    gpu_speed,
    lookup,
)

GPU_CLUSTER = Cluster(cpus=32, gpus=2, source="described")
PER_TRIAL = {"CPU": 1.0, "GPU": 1.0}


def test_training_piece_costs_each_method_from_its_passes(tmp_path):
    costs = {}
    for method in ("pgd", "nfgsm", "fgsm_rs", "pgd2"):
        cfg = tiny_experiment(tmp_path, train={"attack_method": method, "attack": {"steps": 10},
                                               "holdout_fraction": 0.0,
                                               "max_steps_per_epoch": None})
        piece = training_piece("t", cfg, 20, PER_TRIAL, 1, "", on_gpu=True)
        costs[method] = piece.image_steps / (cfg.train.epochs * 20)  # per image and epoch
        assert costs[method] == step_image_steps(cfg)
    # attack passes at 1, the 4 update passes at 1.5: N-FGSM is not charged PGD-10's 20
    assert costs == {"pgd": 26.0, "nfgsm": 8.0, "fgsm_rs": 8.0, "pgd2": 10.0}


def test_proxy_is_counted_at_its_epochs(tmp_path):
    # 16 train images, a quarter held out (4), 2 repeats: 8 pairs; proxy_steps 2
    cfg = tiny_experiment(tmp_path, train={"epochs": 10, "proxy_every": 4, "proxy_repeats": 2,
                                           "max_steps_per_epoch": None})
    assert proxy_epochs(cfg, 16) == 4  # epochs 1, 4, 8 and the last (as core.fit)
    per_pair = 2 * (0.5 + 2 * (2 + 0.5))  # clean forward, two short attacks and their scoring
    assert proxy_image_steps(cfg, 16) == 4 * 8 * per_pair
    piece = training_piece("t", cfg, 16, PER_TRIAL, 1, "", on_gpu=False)
    steps_only = 10 * 12 * step_image_steps(cfg)
    assert piece.image_steps == pytest.approx(steps_only + 4 * 8 * per_pair)
    assert piece.note.startswith("4 proxies")
    assert (piece.epochs, piece.checkpoints) == (10, 10)  # every epoch on a CPU
    on_gpu = training_piece("t", cfg, 16, PER_TRIAL, 1, "", on_gpu=True)
    assert on_gpu.checkpoints == 1  # every 10th on CUDA (the 10th is the last)
    none = tiny_experiment(tmp_path, train={"holdout_fraction": 0.0, "select_metric": None})
    assert proxy_image_steps(none, 16) == 0


def test_precision_picks_the_peak():
    # auto trains in bf16 on a GPU; fp32 trains on TF32 and evaluates in strict fp32
    assert gpu_precision("auto", training=True) == "bf16"
    assert gpu_precision("fp32", training=True) == "tf32"
    assert gpu_precision("fp32", training=False) == "fp32"
    speed = GpuSpeed(gflop_per_step=1.0, fixed=0.5)
    assert speed.rate(16, "bf16") == pytest.approx(989.0 * 1e3 * 0.5)
    assert speed.rate(16, "fp32") == pytest.approx(67.0 * 1e3 * 0.5)
    assert PEAK_TFLOPS["h200"]["bf16"] == PEAK_TFLOPS["h100"]["bf16"]


def test_utilisation_table_lookup():
    table = {8: 0.1, 32: 0.3}
    assert lookup(table, 8) == 0.1 and lookup(table, 32) == 0.3
    assert lookup(table, 1) == 0.1 and lookup(table, 1024) == 0.3  # the ends beyond
    assert lookup(table, 16) == pytest.approx(0.2)  # half-way in log2
    assert lookup(ASSUMED_UTILISATION["bf16"], 16) == 0.08


def test_assumed_table_is_labelled_and_a_profile_replaces_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no benchmarks/gpu_utilisation.json here
    assumed = gpu_speed(24.3)
    assert "assumed, not measured" in assumed.describe(16, "bf16")
    assert assumed.rate(16, "bf16") == pytest.approx(989e3 * 0.08 / 24.3)
    profile = tmp_path / "gpu_utilisation.json"
    profile.write_text(json.dumps({"rows": [
        {"precision": "bf16", "batch": 16, "image_steps_per_s": 1000.0, "fraction_of_peak": 0.02},
        {"precision": "bf16", "batch": 64, "image_steps_per_s": 8000.0, "fraction_of_peak": 0.2}]}))
    measured = gpu_speed(24.3, profile=str(profile))
    assert measured.fraction(16, "bf16") == 0.02
    assert f"measured: {profile}" in measured.describe(32, "bf16")
    assert "assumed, not measured" in measured.describe(16, "fp32")  # not in the profile
    Path("benchmarks").mkdir()
    Path("benchmarks/gpu_utilisation.json").write_text(profile.read_text())
    assert gpu_speed(24.3).fraction(64, "bf16") == 0.2  # the documented place, if present
    assert "--gpu-utilization" in gpu_speed(24.3, utilization=0.3).describe(16, "bf16")


def test_sweep_plan_counts_clean_twins_and_extra_seeds():
    from pgray.config.base import to_dict
    from pgray.config.search_space import load_search_space, space_from_dict
    from pgray.pipelines.plan.pieces import sweep_pieces

    demo = load_search_space("search_spaces/demo.yaml")  # 2 categories, 3 trials, twins on
    data = to_dict(demo)
    space = space_from_dict(data | {"seeds": [0, 1, 2]})  # 0 is the trials' own
    pieces, _, _ = sweep_pieces(space, GPU_CLUSTER)
    names = [p.what for p in pieces if p.kind == "training"]
    assert len(names) == 2 * (3 + 1 + 2)
    assert sum("clean twin" in n for n in names) == 2
    assert sum(n.endswith(("seed 1", "seed 2")) for n in names) == 4
    ranks = [p for p in pieces if "rank agreement" in p.what]
    # every trial of each target on the test split: one short-suite job per trial
    assert [(p.what.split(":")[0], p.jobs) for p in ranks] == [
        ("synthetic/weave rank agreement", 3), ("synthetic/grain rank agreement", 3)]
    assert "3 models x short_suite_eps4 (clean + 20 attack steps per image)" in ranks[0].what
    evals = [p.what for p in pieces if p.kind == "evaluation" and p not in ranks]
    per_model = sum(e.startswith("top1 ") for e in evals) // 2
    assert len(evals) == 2 * per_model * (1 + 1 + 2)  # top1, its twin, the 2 other seeds
    # a twin trains without attacks: cheaper than a trial
    twin = next(p for p in pieces if p.what.endswith("clean twin"))
    trial = next(p for p in pieces if p.what.endswith("trial 1"))
    assert twin.image_steps < trial.image_steps / 2
    assert trial.precision == "bf16"  # train.precision auto on a GPU
    plain, _, _ = sweep_pieces(space_from_dict(
        data | {"final_eval": data["final_eval"] | {"clean_baseline": False}}), GPU_CLUSTER)
    assert sum(p.kind == "training" for p in plain) == 2 * 3


def test_wall_time_adds_waves_evaluations_and_fixed_costs():
    from pgray.pipelines.plan.estimate import FixedCosts

    speed = GpuSpeed(gflop_per_step=1.0, fixed=1e-3)  # 989 image-steps/s in bf16
    rate = speed.rate(16, "bf16")
    pieces = [Piece("training", f"t{i}", rate * 100, 1, 1, precision="bf16", epochs=5,
                    checkpoints=2) for i in range(3)]
    pieces += [Piece("evaluation", f"e{i}", rate * 10, 1, 1, precision="bf16")
               for i in range(4)]
    fixed = FixedCosts(start_s=1, training_s=2, epoch_s=0.2, checkpoint_s=0.5, job_s=3,
                       finish_s=4)
    est = estimate(pieces, GPU_CLUSTER, speed, concurrent_trainings=2, concurrent_actors=2,
                   fixed=fixed)
    # 2 waves of (100 + 2 + 5 epochs x 0.2 + 2 checkpoints x 0.5) s, then 4 jobs of
    # (10 + 3) s on 2 actors, plus start and finish
    assert est.wall_s == pytest.approx(1 + 2 * 104 + 4 * 13 / 2 + 4)
    assert est.device_h == pytest.approx((300 + 40) / 3600)
    assert est.overlapped_s == pytest.approx(1 + 208 + 4)


def test_cpu_rate_is_measured_once_then_cached(tmp_path, monkeypatch):
    import tempfile

    from pgray.config import tiny_model_config
    from pgray.pipelines.plan.speed import CpuSpeed, calibration_file, cpu_rate

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    cfg = tiny_model_config(img_size=32)
    rate, cached = cpu_rate(cfg, 16, budget_s=0.05)
    assert rate > 0 and not cached and calibration_file().is_file()
    assert cpu_rate(cfg, 8, budget_s=0.05) == (rate, True)  # batch 16 was timed at 8
    said = CpuSpeed(cfg).describe(16)
    assert "measured on this machine (timed at batch 8, cached)" in said
