"""The bracket of every certified radius (docs/method.md, "Certification"): one row per L2
radius with the smoothed detector's certified numbers (`pgray.core.certification`), the
numbers the suite's l2 members reach against the same smoothed detector (attacking its noise
expectation, judged by its percentile: `pgray.core.smoothing`), its clean numbers, and the
base detector's clean and attacked numbers beside them, so that the cost of smoothing shows.

A row's columns: `setting` (`certified_l2_r<r>`), `attack` `certified`, `threat` l2,
`radius` (= `eps`), `sigma`, `samples`, `percentile`, `confidence`, `eot_samples`, `seed`,
`level_low` / `level_high` (the percentiles that bound the smoothed score within the radius),
`input_size`, `l2_per_pixel`, and for each side in `SIDES` its `<side>_image_auroc`,
`<side>_pixel_auroc`, `<side>_aupro` with their `_ci_low` / `_ci_high` bootstrap intervals;
`n_images`, `n_anomalous`, `time_s` (the certification pass shared by every radius, plus
this radius' attacks), `flags` / `flag_notes` (`certified_above_attacked`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pgray.config import EvalConfig

if TYPE_CHECKING:  # torch stays out of the tables that import SIDES
    import torch

    from pgray.core.scoring import EvalOutputs

Rows = list[dict[str, Any]]
# certified: the smoothed detector's certified bound; attacked: the l2 suite's worst case on
# it; smoothed: it, clean; base / base_attacked: the detector itself, clean and under the
# same l2 suite at the same radius
SIDES = ("certified", "attacked", "smoothed", "base", "base_attacked")
METRICS = ("image_auroc", "pixel_auroc", "aupro")


def _side(prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    """`prefix_<metric>` and its interval columns, from a row or a metrics dict."""
    keys = [m + tail for m in METRICS for tail in ("", "_ci_low", "_ci_high")]
    return {f"{prefix}_{k}": values.get(k, float("nan")) for k in keys}


def _measured(out: EvalOutputs) -> dict[str, float]:
    metrics = out.metrics()
    return metrics | out.intervals(metrics)


def _base_rows(rows: Rows, radius: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """The base detector's clean row and its l2 worst case at `radius` (empty if absent)."""
    from pgray.attacks.suite import WORST

    clean = next((r for r in rows if r.get("attack") == "clean"), {})
    attacked = next((r for r in rows if r.get("attack") == WORST and r.get("threat") == "l2"
                     and r.get("eps") == radius), {})
    return clean, attacked


def certified_rows(model, dataset, eval_cfg: EvalConfig, base_rows: Rows, *,
                   device: torch.device, identity: dict[str, Any] | None = None,
                   progress: bool = True) -> Rows:
    """One flagged row per radius of `eval_cfg.certify` (identity columns first).
    `base_rows`: the base detector's rows (`evaluate_robustness`), read for its clean and
    l2 worst-case numbers."""
    from pgray.attacks.checks import bracket_flags
    from pgray.core.certification import certify_split
    from pgray.core.device import on_device
    from pgray.core.row_columns import input_size, threat_columns
    from pgray.core.smoothing import SmoothedDetector

    cfg = eval_cfg.certify
    batch = on_device(cfg.batch_size, device, cpu=256, cuda=1024)
    smoothed = SmoothedDetector(model, sigma=cfg.sigma, samples=cfg.samples,
                                percentile=cfg.percentile, batch_size=batch, seed=cfg.seed)
    split = certify_split(smoothed, dataset, cfg.radii, confidence=cfg.confidence,
                          device=device, progress=progress)
    smoothed_clean = _measured(split.clean)
    height, width = input_size(dataset)
    rows = []
    for bounds in split.bounds:
        started = time.perf_counter()
        attacked = _attacked_worst(model, smoothed, dataset, eval_cfg, bounds.radius,
                                   device=device, progress=progress)
        clean, base_attacked = _base_rows(base_rows, bounds.radius)
        row = ({"setting": f"certified_l2_r{bounds.radius:g}", "attack": "certified",
                "threat": "l2", "radius": bounds.radius, "eps": bounds.radius,
                "sigma": cfg.sigma, "samples": cfg.samples, "percentile": cfg.percentile,
                "confidence": cfg.confidence, "eot_samples": cfg.eot_samples,
                "seed": cfg.seed, "level_low": bounds.level_low,
                "level_high": bounds.level_high}
               | threat_columns("l2", bounds.radius, height, width)
               | _side("certified", _measured(split.worst[bounds.radius]))
               | _side("attacked", attacked) | _side("smoothed", smoothed_clean)
               | _side("base", clean) | _side("base_attacked", base_attacked)
               | split.clean.counts()
               | {"time_s": split.time_s + time.perf_counter() - started})
        rows.append(bracket_flags((identity or {}) | row))
    return rows


def _attacked_worst(model, smoothed, dataset, eval_cfg: EvalConfig, radius: float, *,
                    device: torch.device, progress: bool) -> dict[str, Any]:
    """The l2 suite's worst-case row against the smoothed detector at `radius`: its members
    step along the noise expectation (`eot_samples` draws per step), every candidate is
    judged by the smoothed percentile."""
    from pgray.attacks.suite import members
    from pgray.core.device import on_device
    from pgray.core.scoring import evaluate_suite
    from pgray.core.smoothing import NoiseExpectation

    cfg, suite = eval_cfg.certify, eval_cfg.suite
    expectation = NoiseExpectation(model, sigma=cfg.sigma, samples=cfg.eot_samples)
    # about one eval batch of noisy images per attack forward
    images = max(1, on_device(eval_cfg.batch_size, device, cpu=32, cuda=256) // cfg.eot_samples)
    rows, _ = evaluate_suite(
        expectation, dataset, members(suite, eval_cfg.attack, radius, threat="l2"),
        batch_size=images, device=device, subset_size=suite.square_images,
        progress=progress, scorer=smoothed,
        label=f"l2 suite on the smoothed detector, radius {radius:g}")
    return rows[-1]
