"""Any detector under the same attacks: the reference code's released weights through the CLI
and the benchmark, and the detector registry."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml
from helpers import tiny_experiment

from pgray.core.checkpoint import REFERENCE_PREFIXES


def reference_state_dict(model) -> dict[str, torch.Tensor]:
    """`model`'s weights under the reference code's key names (what its released files hold)."""
    out = {}
    for key, value in model.state_dict().items():
        theirs = next(t + key[len(o):] for t, o in REFERENCE_PREFIXES if key.startswith(o))
        out[theirs] = value
    return out


def _reference_files(synthetic_root, tmp_path):
    """A tiny PatchGuard saved twice: as a pgray checkpoint and as a reference state dict."""
    from pgray.core.checkpoint import save_checkpoint
    from pgray.core.model import PatchGuard

    cfg = tiny_experiment(synthetic_root)
    torch.manual_seed(3)
    model = PatchGuard(cfg.model).eval()
    ours = save_checkpoint(tmp_path / "ours.pt", model, cfg)
    theirs = tmp_path / "patchguard_synthetic_disc.pth"
    torch.save({"state_dict": reference_state_dict(model)}, theirs)
    arch = tmp_path / "arch.yaml"
    arch.write_text(yaml.safe_dump({"model": cfg.to_dict()["model"]}))
    return cfg, ours, theirs, arch


def test_a_reference_state_dict_evaluates_through_the_cli(synthetic_root, tmp_path, mlflow_uri):
    from pgray.evaluate import main

    cfg, ours, theirs, arch = _reference_files(synthetic_root, tmp_path)
    common = ["--eps", "8", "--steps", "2", "--suite", "protocol", "--n-panels", "0",
              "--quiet"]
    assert main(["--checkpoint", str(ours), "--out", str(tmp_path / "a"), *common]) == 0
    assert main(["--checkpoint", str(theirs), "--config", str(arch), "--dataset", "synthetic",
                 "--root", str(synthetic_root), "--category", "disc",
                 "--out", str(tmp_path / "b"), *common]) == 0
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert a["detector"] == "patchguard" and b["detector"] == "patchguard_reference"
    # the same weights, mapped from the reference's names: the same numbers
    for x, y in zip(a["results"], b["results"]):
        assert x["attack"] == y["attack"]
        for key in ("image_auroc", "pixel_auroc", "aupro"):
            assert x[key] == y[key], (x["attack"], key)


def test_a_reference_file_without_its_data_is_refused(synthetic_root, tmp_path):
    from pgray.errors import run_cli
    from pgray.evaluate import main

    _, _, theirs, arch = _reference_files(synthetic_root, tmp_path)
    assert run_cli(main, ["--checkpoint", str(theirs), "--config", str(arch),
                          "--out", str(tmp_path / "x"), "--quiet"]) == 2


def test_the_benchmark_takes_reference_files_per_category(synthetic_root, tmp_path, mlflow_uri):
    from pgray.config.base import from_dict
    from pgray.config.benchmark import BenchmarkConfig
    from pgray.pipelines.benchmark import run_benchmark

    cfg, ours, theirs, _ = _reference_files(synthetic_root, tmp_path)
    (tmp_path / "disc").mkdir()
    theirs.rename(tmp_path / "disc" / "reference.pth")
    bench = from_dict(BenchmarkConfig, {
        "name": "ref", "eps": [8.0], "steps": [2], "suite": "protocol", "n_panels": 0,
        "batch_size": 8,
        "datasets": [{"dataset": "synthetic", "root": str(synthetic_root), "categories": ["disc"],
                      "checkpoint": str(ours),
                      "detectors": [{"name": "patchguard_reference",
                                     "checkpoint": str(tmp_path / "{category}" / "reference.pth"),
                                     "model": cfg.to_dict()["model"]}]}]})
    result = run_benchmark(bench, tmp_path / "out", progress=False, sequential=True)
    by = {(r["detector"], r["attack"]): r for r in result.rows}
    assert set(by) == {(d, a) for d in ("patchguard", "patchguard_reference")
                       for a in ("clean", "protocol", "worst_case")}
    for attack in ("clean", "protocol", "worst_case"):
        assert by[("patchguard", attack)]["image_auroc"] == by[
            ("patchguard_reference", attack)]["image_auroc"]
    assert "detectors compared" in result.table_text


def test_a_bad_baseline_option_fails_the_benchmark_before_any_fit(synthetic_root, tmp_path,
                                                                  mlflow_uri):
    """GeneralAD at an image size its ViT's patches do not divide: refused at once, naming the
    detector and the key, with the baseline before it not fitted (found running the comparison:
    four baselines were fitted, then the fifth failed)."""
    from pgray.config.base import from_dict
    from pgray.config.benchmark import BenchmarkConfig
    from pgray.errors import ConfigError
    from pgray.pipelines.benchmark import run_benchmark

    _, ours, _, _ = _reference_files(synthetic_root, tmp_path)
    fits = tmp_path / "fits"
    bench = from_dict(BenchmarkConfig, {
        "name": "bad-fit", "eps": [8.0], "steps": [2], "suite": "protocol", "n_panels": 0,
        "train_missing": True,
        "datasets": [{"dataset": "synthetic", "root": str(synthetic_root), "categories": ["disc"],
                      "checkpoint": str(ours), "detectors": [
                          {"name": "padim", "fit": {"img_size": 32},
                           "checkpoint": str(fits / "padim.pt")},
                          {"name": "general_ad", "fit": {"img_size": 32},  # ViT-S/14: 32 % 14
                           "checkpoint": str(fits / "general_ad.pt")}]}]})
    with pytest.raises(ConfigError, match=r"general_ad.*img_size.*patch size 14"):
        run_benchmark(bench, tmp_path / "out", progress=False, sequential=True)
    assert not fits.exists() or not any(fits.iterdir())


def test_detectors_list_names_every_detector():
    proc = subprocess.run([sys.executable, "-m", "pgray.detectors", "list"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    names = [line.split()[0] for line in proc.stdout.splitlines()]
    assert names[:2] == ["patchguard", "patchguard_reference"]
    assert {"patchcore", "padim", "reverse_distillation"} <= set(names)


BASELINES = ("patchcore", "padim", "reverse_distillation", "stfpm", "general_ad")
# GeneralAD's default DINOv2 ViT-S/14 has no patch grid at 32 px: a random ViT-S with 8 px
# patches cut after block 2, a small discriminator trained for a few epochs
FIT = {"general_ad": {"backbone": "vit_small_patch8_224.dino", "layers": [2],
                      "options": {"hidden_dim": 64, "top_k": 3, "epochs": 5}}}
TINY_SUITE = {"steps": 2, "restarts": 1, "square_queries": 4, "square_images": 4,
              "check_steps": 2}


def test_a_baseline_fits_and_evaluates_through_the_cli(synthetic_root, tmp_path, mlflow_uri):
    from pgray.evaluate import main as evaluate
    from pgray.train import main as train

    assert train(["--detector", "padim", "--dataset", "synthetic", "--root", str(synthetic_root),
                  "--category", "disc", "--img-size", "32", "--out", str(tmp_path / "fit"),
                  "--quiet"]) == 0
    assert evaluate(["--checkpoint", str(tmp_path / "fit" / "detector.pt"), "--eps", "8",
                     "--steps", "2", "--suite-steps", "2", "--suite-restarts", "1",
                     "--square-queries", "4", "--square-images", "4", "--n-panels", "0",
                     "--out", str(tmp_path / "eval"), "--quiet"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["detector"] == "padim" and metrics["backbone_weights"] == "random"
    rows = {r["attack"]: r for r in metrics["results"]}
    assert rows["worst_case"]["image_auroc"] <= rows["clean"]["image_auroc"]
    assert rows["worst_case"]["zero_grad_detection"] == 0.0  # the attack reaches the detector
    assert "zero_gradients" not in {f for r in metrics["results"] for f in r["flags"]}


def test_the_benchmark_fits_and_attacks_every_baseline(synthetic_root, tmp_path, mlflow_uri):
    from pgray.config.base import from_dict
    from pgray.config.benchmark import BenchmarkConfig
    from pgray.pipelines.benchmark import run_benchmark

    cfg, ours, _, _ = _reference_files(synthetic_root, tmp_path)
    detectors = [{"name": name, "fit": {"img_size": 32} | FIT.get(name, {}),
                  "checkpoint": str(tmp_path / "fits" / "{category}" / f"{name}.pt")}
                 for name in BASELINES]
    bench = from_dict(BenchmarkConfig, {
        "name": "baselines", "eps": [8.0], "steps": [2], "suite": TINY_SUITE, "n_panels": 0,
        "batch_size": 8, "train_missing": True,
        "datasets": [{"dataset": "synthetic", "root": str(synthetic_root), "categories": ["disc"],
                      "checkpoint": str(ours), "detectors": detectors}]})
    result = run_benchmark(bench, tmp_path / "out", progress=False, sequential=True)
    assert result.trained == len(BASELINES)  # fitted here, then evaluated
    for name in BASELINES:
        rows = {r["attack"]: r for r in result.rows if r["detector"] == name}
        assert rows["clean"]["backbone_weights"] == "random"
        assert rows["worst_case"]["zero_grad_detection"] == 0.0, name
        assert rows["worst_case"]["zero_grad_localization"] == 0.0, name
        assert rows["worst_case"]["image_auroc"] <= rows["clean"]["image_auroc"], name
        assert rows["worst_case"]["pixel_auroc"] <= rows["clean"]["pixel_auroc"] + 1e-9, name
    text = result.table_text
    assert "detectors compared" in text and "Random-init backbones" in text
    for name in BASELINES:
        assert f"{name} AD worst" in text
