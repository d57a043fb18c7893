"""The bracket of every certified radius (docs/method.md, "Certification"): one row per L2
radius with the smoothed detector's certified numbers (`pgray.core.certification`), the
numbers the suite's l2 members reach against the same smoothed detector (attacking its noise
expectation, judged by its percentile: `pgray.core.smoothing`), its clean numbers, and the
base detector's clean and attacked numbers beside them, so that the cost of smoothing shows.

A row's columns: `setting` (`certified_l2_r<r>`), `attack` `certified`, `threat` l2,
`radius` (= `eps`), `sigma`, `samples`, `percentile`, `confidence`, `eot_samples`,
`noise_seed` (the noise's; `seed` stays the training seed's column),
`level_low` / `level_high` (the percentiles that bound the smoothed score within the radius),
`input_size`, `l2_per_pixel`, and for each side in `SIDES` its `<side>_image_auroc`,
`<side>_pixel_auroc`, `<side>_aupro` with their `_ci_low` / `_ci_high` bootstrap intervals;
`n_images`, `n_anomalous`, `time_s` (the certification pass shared by every radius, plus
this radius' attacks), `flags` / `flag_notes` (`certified_above_attacked`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
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
CERTIFIED = "certified"  # a certified row's `attack`: it is no attack's row of its threat


def is_certified(row: dict[str, Any]) -> bool:
    """A certified row: tables, cards and flags of the attacked rows leave it out."""
    return row.get("attack") == CERTIFIED


def side_columns(prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    """`prefix_<metric>` and its interval columns, from a row or a metrics dict."""
    keys = [m + tail for m in METRICS for tail in ("", "_ci_low", "_ci_high")]
    return {f"{prefix}_{k}": values.get(k, float("nan")) for k in keys}


def _measured(out: EvalOutputs) -> dict[str, float]:
    metrics = out.metrics()
    return metrics | out.intervals(metrics)


def with_base(row: dict[str, Any], base_rows: Rows) -> dict[str, Any]:
    """A certified row with its `base` and `base_attacked` sides read from the base
    detector's rows (`base_rows`, of the same model): its clean row and its l2 worst case at
    the row's radius (NaN where absent). `pgray.evaluate` has them at hand; the benchmark
    joins them when it finishes (they are other jobs' rows)."""
    clean = next((r for r in base_rows if r.get("attack") == "clean"), {})
    attacked = next((r for r in base_rows if r.get("attack") == "worst_case"
                     and r.get("threat") == "l2" and r.get("eps") == row["radius"]), {})
    return row | side_columns("base", clean) | side_columns("base_attacked", attacked)


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
        row = ({"setting": f"certified_l2_r{bounds.radius:g}", "attack": CERTIFIED,
                "threat": "l2", "radius": bounds.radius, "eps": bounds.radius,
                "sigma": cfg.sigma, "samples": cfg.samples, "percentile": cfg.percentile,
                "confidence": cfg.confidence, "eot_samples": cfg.eot_samples,
                "noise_seed": cfg.seed, "level_low": bounds.level_low,
                "level_high": bounds.level_high}
               | threat_columns("l2", bounds.radius, height, width)
               | side_columns("certified", _measured(split.worst[bounds.radius]))
               | side_columns("attacked", attacked) | side_columns("smoothed", smoothed_clean)
               | split.clean.counts()
               | {"time_s": split.time_s + time.perf_counter() - started})
        rows.append(bracket_flags(with_base((identity or {}) | row, base_rows)))
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


@dataclass(frozen=True)
class CertifyWork:
    """Passes through the base model that `certified_rows` makes on a split (the plan and
    benchmarks/certify_cost.py price them)."""

    certify_forwards: int  # images x samples: the one sampling pass every radius shares
    # every radius: each l2 member's candidate and the clean image judged by the smoothed
    # percentile, `samples` noisy forwards per image each
    judge_forwards: int
    attack_image_steps: int  # every radius: the l2 suite's steps x eot_samples (with gradient)
    query_forwards: int  # every radius: the black-box member's queries x eot_samples

    @property
    def forwards(self) -> int:
        return self.certify_forwards + self.judge_forwards + self.query_forwards

    def image_steps(self, forward_cost: float) -> float:
        """In image-steps (a forward and an input gradient each), a forward at
        `forward_cost`."""
        return self.attack_image_steps + forward_cost * self.forwards


def certify_work(eval_cfg: EvalConfig, n_images: int) -> CertifyWork:
    """The passes `certified_rows` makes on `n_images` images (as `planned_work` counts a
    suite's: each step of each member on each image)."""
    from pgray.attacks.suite import members, planned_work

    cfg, suite = eval_cfg.certify, eval_cfg.suite
    subset = n_images if suite.square_images == 0 else min(suite.square_images, n_images)
    judge = steps = queries = 0
    for radius in cfg.radii:
        attacks = members(suite, eval_cfg.attack, radius, threat="l2")
        work = planned_work(attacks, n_images, subset)
        judge += (len(attacks) + 1) * n_images * cfg.samples
        steps += work["image_steps"] * cfg.eot_samples
        queries += work["queries"] * cfg.eot_samples
    return CertifyWork(n_images * cfg.samples, judge, steps, queries)
