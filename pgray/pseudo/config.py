"""Parameters of the foreground-aware pseudo-anomaly generator (METHOD.md section 2).

Plain dataclass, no heavy imports: the sweep searches these values. The pseudo-anomaly
work may extend it; keep the defaults equal to the reference code's behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pgray.configbase import check

LEVELS = ("light", "medium", "heavy")


@dataclass
class PseudoConfig:
    severity_probs: list[float] = field(default_factory=lambda: [0.2, 0.2, 0.6])
    max_ops: list[int] = field(default_factory=lambda: [1, 2, 4])
    # lower / upper bound of the pasted rectangle side in pixels at 224 (scaled with img size)
    min_size: int = 10
    max_size: int | None = None  # the reference has one in its table but never applies it
    dilation_iterations: int = 10
    rotation: float = 90.0  # uniform rotation in [-rotation, rotation] degrees
    max_attempts: int = 251
    patch_label_rule: Literal["any", "fraction"] = "any"
    patch_label_fraction: float = 0.0  # with rule "fraction": a patch is anomalous above it
    fixed_elastic_field: bool = False  # reproduce the reference's same-field-every-call quirk

    def validate(self) -> None:
        check(len(self.severity_probs) == 3, "severity_probs", "needs 3 values (light, medium, heavy)")
        check(all(p >= 0 for p in self.severity_probs), "severity_probs", "must be >= 0")
        check(abs(sum(self.severity_probs) - 1) < 1e-6, "severity_probs", "must sum to 1")
        check(len(self.max_ops) == 3, "max_ops", "needs 3 values (light, medium, heavy)")
        check(all(n >= 0 for n in self.max_ops), "max_ops", "must be >= 0")
        check(self.min_size >= 1, "min_size", f"must be >= 1, got {self.min_size}")
        check(
            self.max_size is None or self.max_size >= self.min_size,
            "max_size",
            f"must be >= min_size ({self.min_size}), got {self.max_size}",
        )
        check(self.dilation_iterations >= 0, "dilation_iterations", "must be >= 0")
        check(0 <= self.rotation <= 180, "rotation", "must be in [0, 180] degrees")
        check(self.max_attempts >= 1, "max_attempts", "must be >= 1")
        check(0 <= self.patch_label_fraction < 1, "patch_label_fraction", "must be in [0, 1)")
