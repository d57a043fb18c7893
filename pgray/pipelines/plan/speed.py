"""How fast a device does image-steps, for `--plan` (pgray/pipelines/plan/).

An image-step is one forward and one backward pass to the input of one image, weights frozen
(a PGD step). Its rate comes from:
- GPU: peak TFLOP/s of the precision that runs (PEAK_TFLOPS) x the fraction of that peak a
  step reaches at its batch size, / the model's GFLOP per image-step. The fractions are
  measured where a GPU profile exists (`--gpu-profile FILE`, else GPU_PROFILE when present:
  benchmarks/gpu_check.sh writes one, OUT/gpu_utilisation.json), else ASSUMED_UTILISATION,
  which the plan labels "assumed, not measured".
- CPU: measured on this machine before the plan is made: a few image-steps of the config's
  own model at the piece's batch size on one thread, with pgray's PGD (`cpu_rate`), cached
  for an hour.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# Dense (no sparsity) peak TFLOP/s per precision: vendor datasheet figures, NVIDIA H100 SXM5
# and H200 SXM (the H200 has the H100's compute with more, faster memory). `tf32` is fp32 with
# TF32 tensor cores on, which pgray's training uses on CUDA (core.device.enable_tf32);
# `fp32` is strict fp32, which evaluation attacks in fp32 use (core.device.strict_fp32).
PEAK_TFLOPS = {
    "h100": {"bf16": 989.0, "tf32": 495.0, "fp32": 67.0},
    "h200": {"bf16": 989.0, "tf32": 495.0, "fp32": 67.0},
}
DEFAULT_GPU = "h100"

# Fraction of the peak one ViT-S/14 step at 224 reaches per batch size (images per forward):
# ASSUMED, NOT MEASURED (no GPU has run gpu_check.sh's utilisation stage yet). Small batches
# are launch-bound: a ViT-S forward + backward launches about a thousand kernels, 5-8 ms at
# a few microseconds each, which is what a batch of 16 (390 GFLOP) takes at 8 % of the bf16
# peak. Strict fp32 has 15x less peak, so it is compute-bound at far smaller batches.
ASSUMED_UTILISATION = {
    "bf16": {1: 0.005, 8: 0.04, 16: 0.08, 32: 0.14, 64: 0.22, 128: 0.30, 256: 0.35},
    "tf32": {1: 0.01, 8: 0.08, 16: 0.15, 32: 0.24, 64: 0.32, 128: 0.38, 256: 0.40},
    "fp32": {1: 0.05, 8: 0.35, 16: 0.50, 32: 0.55, 64: 0.60, 128: 0.60, 256: 0.60},
}
# Where a GPU run's profile is read from when --gpu-profile is not given (if present).
GPU_PROFILE = Path("benchmarks/gpu_utilisation.json")
# ViT-S/14 at 224: FlopCounterMode, forward + input gradient, frozen weights
VITS_GFLOP_PER_IMAGE_STEP = 24.3
CALIBRATION_TTL_S = 3600.0  # a CPU calibration is reused for an hour on the same host
CALIBRATION_STEPS = 3  # PGD steps per timed attack


def gpu_precision(precision: str, *, training: bool) -> str:
    """The PEAK_TFLOPS column a run at `precision` (a config's, 'auto' included) uses on a
    CUDA device: auto is bf16; fp32 trains on TF32 and evaluates strictly in fp32."""
    if precision in ("auto", "bf16"):
        return "bf16"
    return "tf32" if training else "fp32"


def lookup(table: dict[int, float], batch: int) -> float:
    """The table's fraction at `batch`: linear in log2(batch) between its entries, the end
    values beyond them."""
    sizes = sorted(table)
    if batch <= sizes[0]:
        return table[sizes[0]]
    if batch >= sizes[-1]:
        return table[sizes[-1]]
    upper = next(s for s in sizes if s >= batch)
    lower = max(s for s in sizes if s <= batch)
    if upper == lower:
        return table[lower]
    t = (math.log2(batch) - math.log2(lower)) / (math.log2(upper) - math.log2(lower))
    return table[lower] + t * (table[upper] - table[lower])


def read_gpu_profile(path: Path) -> dict[str, dict[int, float]]:
    """{precision: {batch: fraction of peak}} from a profile gpu_check.sh wrote."""
    data = json.loads(Path(path).read_text())
    out: dict[str, dict[int, float]] = {}
    for row in data["rows"]:
        out.setdefault(row["precision"], {})[int(row["batch"])] = float(row["fraction_of_peak"])
    return out


@dataclass
class GpuSpeed:
    """Image-steps/s per GPU at a batch size and precision."""

    gflop_per_step: float
    gpu: str = DEFAULT_GPU
    utilisation: dict[str, dict[int, float]] = field(
        default_factory=lambda: dict(ASSUMED_UTILISATION))
    source: str = "assumed, not measured"
    fixed: float | None = None  # --gpu-utilization: one fraction whatever the batch

    device = "GPU"

    def fraction(self, batch: int, precision: str) -> float:
        if self.fixed is not None:
            return self.fixed
        table = self.utilisation.get(precision) or ASSUMED_UTILISATION[precision]
        return lookup(table, batch)

    def label(self, precision: str) -> str:
        if self.fixed is not None:
            return "given with --gpu-utilization"
        return self.source if precision in self.utilisation else "assumed, not measured"

    def rate(self, batch: int, precision: str) -> float:
        peak = PEAK_TFLOPS[self.gpu][precision]
        return peak * 1e3 * self.fraction(batch, precision) / max(self.gflop_per_step, 1e-9)

    def describe(self, batch: int, precision: str) -> str:
        # the table is ViT-S/14's: a far smaller model is launch-bound at a lower fraction
        small = ("; a far smaller model than ViT-S/14 (the table's), so likely optimistic"
                 if self.gflop_per_step < 0.25 * VITS_GFLOP_PER_IMAGE_STEP else "")
        return (f"{self.rate(batch, precision):,.0f} image-steps/s per GPU at batch {batch},"
                f" {precision}: {PEAK_TFLOPS[self.gpu][precision]:g} TFLOP/s ({self.gpu}"
                f" {precision} peak) x {self.fraction(batch, precision):.3f} utilisation"
                f" ({self.label(precision)}) / {self.gflop_per_step:.3g} GFLOP per image-step"
                + small)


def gpu_speed(gflop_per_step: float, gpu: str = DEFAULT_GPU, profile: str | None = None,
              utilization: float | None = None) -> GpuSpeed:
    """The GPU rates: --gpu-utilization if given, else the profile (--gpu-profile, else
    GPU_PROFILE if present), else the assumed table."""
    path = Path(profile) if profile else (GPU_PROFILE if GPU_PROFILE.is_file() else None)
    if path is None:
        return GpuSpeed(gflop_per_step, gpu, fixed=utilization)
    return GpuSpeed(gflop_per_step, gpu, read_gpu_profile(path), f"measured: {path}",
                    fixed=utilization)


@dataclass
class CpuSpeed:
    """Image-steps/s per CPU thread, measured on this machine for the config's model."""

    model_cfg: object
    measured: dict[int, tuple[float, bool]] = field(default_factory=dict)  # batch: (rate, cached)

    device = "CPU thread"

    def rate(self, batch: int, precision: str = "fp32") -> float:
        if batch not in self.measured:
            self.measured[batch] = cpu_rate(self.model_cfg, batch)
        return self.measured[batch][0]

    def describe(self, batch: int, precision: str = "fp32") -> str:
        rate = self.rate(batch)
        timed = calibration_batch(batch)
        how = (f"timed at batch {timed}" if timed != batch else "") + (
            ", cached" if self.measured[batch][1] else "")
        return (f"{rate:,.1f} image-steps/s per CPU thread at batch {batch}, fp32: measured on"
                f" this machine ({how.lstrip(', ') or 'just now'}), one thread, pgray's PGD on"
                " the config's model")


def calibration_batch(batch: int) -> int:
    """The batch the CPU is timed at: at most 8, past which a CPU's rate barely changes."""
    return max(1, min(batch, 8))


def calibration_file() -> Path:
    return Path(tempfile.gettempdir()) / "pgray-plan-cpu-calibration.json"


def cpu_rate(model_cfg, batch: int, *, budget_s: float = 1.0) -> tuple[float, bool]:
    """(image-steps/s on one thread, whether it came from the cache): pgray's own PGD on the
    config's model (random weights: the time is the same), its per-step work included, which
    on a small model costs as much as the passes. One warm-up attack, then attacks of
    CALIBRATION_STEPS steps for about budget_s (at least 3), at `calibration_batch`;
    the median one's rate."""
    import dataclasses

    from pgray.config.base import to_dict

    batch = calibration_batch(batch)
    key = hashlib.sha256(json.dumps([to_dict(model_cfg), batch, os.uname().nodename],
                                    sort_keys=True, default=str).encode()).hexdigest()[:16]
    cache = _read_cache()
    hit = cache.get(key)
    if hit and time.time() - hit["at"] < CALIBRATION_TTL_S:
        return float(hit["rate"]), True
    import torch

    from pgray.attacks.pgd import attack
    from pgray.config import AttackConfig
    from pgray.core.model import PatchGuard

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = PatchGuard(dataclasses.replace(model_cfg, pretrained=False, weights=None)).eval()
        x = torch.rand(batch, 3, model_cfg.img_size, model_cfg.img_size)
        labels = (torch.rand(batch, model.num_patches) > 0.8).float()
        cfg = AttackConfig(eps=8.0, steps=CALIBRATION_STEPS)
        attack(model, x, labels, cfg)  # warm-up
        times: list[float] = []
        while len(times) < 3 or sum(times) < budget_s:
            start = time.perf_counter()
            attack(model, x, labels, cfg)
            times.append(time.perf_counter() - start)
        # the median attack: a shared host's bursts of other work move it least
        rate = batch * CALIBRATION_STEPS / statistics.median(times)
    finally:
        torch.set_num_threads(threads)
    cache[key] = {"rate": rate, "at": time.time()}
    _write_cache(cache)
    return rate, False


def _read_cache() -> dict:
    try:
        return json.loads(calibration_file().read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(cache: dict) -> None:
    from pgray.io import write_text

    try:
        write_text(calibration_file(), json.dumps(cache))
    except OSError:  # a read-only temp folder: the next plan measures again
        pass
