"""The typed config of certification by percentile smoothing (docs/method.md,
"Certification"): which L2 radii are certified, the Gaussian noise, how many samples, at what
confidence. Free of heavy imports, as every config module."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pgray.config.attack import check_budget
from pgray.config.base import check


@dataclass
class CertifyConfig:
    # L2 radii in `--l2-eps`'s unit: the perturbation's L2 norm on [0, 1] pixels at the
    # model's own input size
    radii: list[float] = field(default_factory=list)
    # the noise's standard deviation per pixel value, on [0, 1] pixels at the input size
    sigma: float = 0.25
    samples: int = 1000  # noise samples per image: the empirical percentiles and the bounds
    # the probability, over the noise, that every bound of a row holds at once (so that all
    # of the row's certified numbers do): split over its images and its pixels
    confidence: float = 0.999
    percentile: float = 0.5  # the smoothed score: this percentile of the noisy scores
    batch_size: int | None = None  # noisy images per forward; None: 256 on the CPU, 1024 CUDA
    # noise samples averaged inside each attack step (expectation over transformation) when
    # the suite's l2 members attack the smoothed detector
    eot_samples: int = 8
    seed: int = 0  # of the noise the percentiles are taken over (the same for every image)

    def validate(self) -> None:
        check(len(self.radii) >= 1, "radii", "needs at least one radius")
        for i, radius in enumerate(self.radii):
            check_budget("l2", radius, f"radii[{i}]", zero=False)
        check(len(set(self.radii)) == len(self.radii), "radii", "lists a radius twice")
        check(self.sigma > 0, "sigma", f"must be > 0 (on [0, 1] pixels), got {self.sigma:g}")
        check(self.samples >= 10, "samples", f"must be >= 10, got {self.samples}")
        check(0 < self.confidence < 1, "confidence",
              f"must be in (0, 1), e.g. 0.999, got {self.confidence:g}")
        check(0 < self.percentile < 1, "percentile",
              f"must be in (0, 1) (0.5: the median), got {self.percentile:g}")
        check(self.batch_size is None or self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.eot_samples >= 1, "eot_samples", f"must be >= 1, got {self.eot_samples}")


def suite_threats(threats: Sequence[Any], certify: CertifyConfig | None
                  ) -> list[tuple[str, list[float]]]:
    """(threat, sorted budgets) of every suite run beyond linf: each of `threats`
    (`ThreatConfig`s), l2 also at each certified radius (the base detector's attacked number
    beside the smoothed one's). The one rule for `pgray.evaluate` and the benchmark's grid."""
    budgets = {t.threat: {float(e) for e in t.eps} for t in threats}
    if certify is not None:
        budgets["l2"] = budgets.get("l2", set()) | {float(r) for r in certify.radii}
    return [(threat, sorted(eps)) for threat, eps in budgets.items()]
