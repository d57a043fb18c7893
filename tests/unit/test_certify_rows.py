"""`pgray.evaluate`'s certified rows on a tiny PatchGuard (32 px): one row per radius in
metrics.json with every side of the bracket, the base detector's l2 numbers at each radius
beside them, the rows of evaluation version 3."""

from __future__ import annotations

import json

import torch
from helpers import tiny_experiment

from pgray.config import EvalConfig
from pgray.config.base import from_dict
from pgray.core.certify import METRICS, SIDES
from pgray.core.checkpoint import save_checkpoint
from pgray.core.model import PatchGuard

RADII = [0.1, 0.25]
CHEAP = {"eps": [8.0], "attack": {"steps": 1}, "batch_size": 8, "n_panels": 0,
         "suite": {"steps": 2, "restarts": 1, "square_queries": 10, "square_images": 8,
                   "check_steps": 2},
         "certify": {"radii": RADII, "samples": 50, "eot_samples": 2}}


def test_a_tiny_model_gets_a_certified_row_per_radius_beside_its_attacked_numbers(
        data_root, tmp_path):
    from pgray.pipelines.evaluate import evaluate_checkpoint

    config = tiny_experiment(data_root)
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "model.pt", PatchGuard(config.model), config)
    evaluate_checkpoint(ckpt, {}, from_dict(EvalConfig, CHEAP, "eval"), tmp_path / "eval",
                        progress=False)
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["eval_version"] == 3 and written["certify"]["radii"] == RADII
    rows = written["certified"]
    assert [r["radius"] for r in rows] == RADII
    base_l2 = {r["eps"]: r for r in written["results"]
               if r["attack"] == "worst_case" and r["threat"] == "l2"}
    clean = next(r for r in written["results"] if r["attack"] == "clean")
    assert sorted(base_l2) == RADII  # the base is attacked at each radius, no --l2-eps given
    for row in rows:
        assert row["eval_version"] == 3 and row["checkpoint_sha256"] == clean[
            "checkpoint_sha256"]
        assert (row["sigma"], row["samples"], row["confidence"]) == (0.25, 50, 0.999)
        # the noise's seed has a column of its own: `seed` is a training seed's (tables
        # average rows over it)
        assert row["noise_seed"] == 0 and row.get("seed") == clean.get("seed")
        assert row["input_size"] == 32 and row["setting"] == f"certified_l2_r{row['radius']:g}"
        for side in SIDES:
            for m in METRICS:
                assert row[f"{side}_{m}"] == row[f"{side}_{m}"], (side, m)  # not NaN
                assert f"{side}_{m}_ci_low" in row
        for m in METRICS:
            assert row[f"base_{m}"] == clean[m]
            assert row[f"base_attacked_{m}"] == base_l2[row["radius"]][m]
            assert row[f"certified_{m}"] <= row[f"attacked_{m}"] <= row[f"smoothed_{m}"]
        assert row["flags"] == []
    for m in METRICS:
        assert rows[1][f"certified_{m}"] <= rows[0][f"certified_{m}"]
        assert rows[1][f"smoothed_{m}"] == rows[0][f"smoothed_{m}"]  # one set of samples
    # every card of the model (linf and l2) has the certified block, l2's budgets none of it
    cards = [json.loads(open(path).read()) for path in written["cards"]]
    assert sorted(c["threat"] for c in cards) == ["l2", "linf"]
    for card in cards:
        assert [e["radius"] for e in card["certified"]] == RADII
        assert card["certified"][1]["certified"]["aupro"]["value"] == rows[1]["certified_aupro"]
    assert next(c for c in cards if c["threat"] == "l2")["budgets"] == RADII
