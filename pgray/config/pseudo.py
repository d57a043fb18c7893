"""Parameters of the foreground-aware pseudo-anomaly generator (docs/method.md, "Pseudo-anomalies").

Plain dataclass, no heavy imports: the sweep searches these values. Defaults equal the
reference code's behaviour. Per-level values are lists of three entries in the order of
`LEVELS` (light, medium, heavy); ranges are (low, high) pairs drawn uniformly (integers
inclusive). Sizes are given at 224 px and scaled with the image size by the generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from pgray.config.base import check

LEVELS = ("light", "medium", "heavy")

# Every transform the generator knows; "color_jitter" is also inserted into every draw.
OPS = (
    "gaussian_blur",
    "elastic",
    "swirl",
    "jpeg",
    "torn_lines",
    "perlin_fill",
    "random_erase",
    "color_jitter",
)

FloatRange = tuple[float, float]
IntRange = tuple[int, int]


def _per_level(*values):
    """default_factory for a three-entry per-level list (fresh list per instance)."""
    return field(default_factory=lambda: list(values))


@dataclass
class PseudoConfig:
    severity_probs: list[float] = field(default_factory=lambda: [0.2, 0.2, 0.6])
    # at most this many ops (drawn 0..N without replacement from the level's list)
    max_ops: list[int] = field(default_factory=lambda: [1, 2, 4])
    level_ops: list[list[str]] = field(
        default_factory=lambda: [
            ["gaussian_blur", "elastic", "swirl"],
            ["gaussian_blur", "swirl", "jpeg", "elastic"],
            [
                "elastic",
                "torn_lines",
                "jpeg",
                "perlin_fill",
                "swirl",
                "random_erase",
                "gaussian_blur",
            ],
        ]
    )
    always_color_jitter: bool = True  # the reference inserts a colour jitter into every draw
    # lower / upper bound of the pasted rectangle side in pixels at 224 (scaled with img size,
    # at least 2 px). The reference's table has 6 to 14 px per category.
    min_size: int = 10
    max_size: int | None = None  # the reference has one in its table but never applies it
    dilation_iterations: int = 10  # 3 x 3 kernel, at 224 px (scaled with the image size)
    rotation: float = 90.0  # uniform rotation in [-rotation, rotation] degrees
    max_attempts: int = 251
    patch_label_rule: Literal["any", "fraction"] = "any"
    patch_label_fraction: float = 0.0  # with rule "fraction": a patch is anomalous above it
    fixed_elastic_field: bool = False  # reproduce the reference's same-field-every-call quirk

    # --- op parameters, one entry per level (light, medium, heavy) ---
    blur_radius: list[FloatRange] = _per_level((0.2, 0.5), (0.8, 1.5), (2.0, 3.0))
    elastic_alpha: list[FloatRange] = _per_level((10.0, 20.0), (20.0, 40.0), (40.0, 100.0))
    elastic_sigma: float = 3.0
    swirl_strength: list[FloatRange] = _per_level((0.5, 1.0), (1.0, 1.5), (1.5, 2.0))
    swirl_radius_divisor: int = 3  # radius = min(h, w) // divisor around the patch centre
    jpeg_quality: list[IntRange] = _per_level((30, 50), (20, 30), (1, 20))
    torn_lines: list[IntRange] = _per_level((1, 3), (5, 10), (10, 20))
    perlin_scale: list[FloatRange] = _per_level((20.0, 50.0), (10.0, 20.0), (5.0, 10.0))
    perlin_threshold: list[FloatRange] = _per_level((200.0, 255.0), (150.0, 200.0), (128.0, 150.0))
    perlin_octaves: int = 6
    erase_area: list[FloatRange] = _per_level((0.01, 0.05), (0.05, 0.1), (0.1, 0.2))
    erase_boxes: list[IntRange] = _per_level((1, 2), (2, 3), (3, 5))
    erase_aspect: FloatRange = (0.3, 3.3)
    # brightness, contrast and saturation share one strength s: factor ~ U(max(0, 1-s), 1+s)
    jitter_strength: list[FloatRange] = _per_level((0.1, 0.1), (0.4, 0.4), (0.8, 1.0))
    jitter_hue: list[FloatRange] = _per_level((0.1, 0.1), (0.3, 0.3), (0.5, 0.5))

    def validate(self) -> None:
        self._validate_levels()
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
        self._validate_op_params()

    def _validate_levels(self) -> None:
        check(
            len(self.severity_probs) == 3, "severity_probs", "needs 3 values (light, medium, heavy)"
        )
        check(all(p >= 0 for p in self.severity_probs), "severity_probs", "must be >= 0")
        check(abs(sum(self.severity_probs) - 1) < 1e-6, "severity_probs", "must sum to 1")
        check(len(self.max_ops) == 3, "max_ops", "needs 3 values (light, medium, heavy)")
        check(all(n >= 0 for n in self.max_ops), "max_ops", "must be >= 0")
        check(len(self.level_ops) == 3, "level_ops", "needs 3 lists (light, medium, heavy)")
        for i, ops in enumerate(self.level_ops):
            key = f"level_ops[{i}]"
            unknown = [op for op in ops if op not in OPS]
            check(not unknown, key, f"unknown op {unknown[:1]}; known ops: {', '.join(OPS)}")
            check(len(set(ops)) == len(ops), key, "lists an op twice")
            check(
                self.max_ops[i] <= len(ops),
                f"max_ops[{i}]",
                f"draws without replacement, so must be <= len(level_ops[{i}]) = {len(ops)}",
            )

    def _validate_op_params(self) -> None:
        _check_ranges("blur_radius", self.blur_radius, 0.0, None)
        _check_ranges("elastic_alpha", self.elastic_alpha, 0.0, None)
        check(self.elastic_sigma > 0, "elastic_sigma", "must be > 0")
        _check_ranges("swirl_strength", self.swirl_strength, None, None)
        check(self.swirl_radius_divisor >= 1, "swirl_radius_divisor", "must be >= 1")
        _check_ranges("jpeg_quality", self.jpeg_quality, 0, 100)
        _check_ranges("torn_lines", self.torn_lines, 0, None)
        _check_ranges("perlin_scale", self.perlin_scale, 1e-6, None)
        _check_ranges("perlin_threshold", self.perlin_threshold, 0.0, 255.0)
        check(self.perlin_octaves >= 1, "perlin_octaves", "must be >= 1")
        _check_ranges("erase_area", self.erase_area, 0.0, 1.0)
        _check_ranges("erase_boxes", self.erase_boxes, 0, None)
        _check_range("erase_aspect", self.erase_aspect, 1e-6, None)
        _check_ranges("jitter_strength", self.jitter_strength, 0.0, None)
        _check_ranges("jitter_hue", self.jitter_hue, 0.0, 0.5)


def _check_ranges(
    key: str, ranges: Sequence[Sequence[float]], low: float | None, high: float | None
) -> None:
    check(len(ranges) == 3, key, "needs 3 ranges (light, medium, heavy)")
    for i, rng in enumerate(ranges):
        _check_range(f"{key}[{i}]", rng, low, high)


def _check_range(key: str, rng: Sequence[float], low: float | None, high: float | None) -> None:
    check(len(rng) == 2, key, f"needs a (low, high) pair, got {rng!r}")
    a, b = rng
    check(a <= b, key, f"low must be <= high, got {rng!r}")
    check(low is None or a >= low, key, f"must be >= {low}, got {rng!r}")
    check(high is None or b <= high, key, f"must be <= {high}, got {rng!r}")
