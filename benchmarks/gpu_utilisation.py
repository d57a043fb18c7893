"""Fraction of the peak pgray's PGD reaches per batch size and precision: what `--plan` reads.

    .venv/bin/python benchmarks/gpu_utilisation.py --device cuda --json OUT/gpu_utilisation.json
    .venv/bin/python benchmarks/gpu_utilisation.py --quick --json OUT/gpu_utilisation.json

ViT-S/14 at 224 (random weights: timing only) attacked by pgray's PGD at each batch size in
bf16 (autocast), tf32 (fp32 with TF32 on, as training runs) and fp32 (TF32 off, as evaluation
attacks in fp32 run); image-steps/s = batch x steps / seconds (median of the timed attacks),
fraction of peak = image-steps/s x GFLOP per image-step / the precision's datasheet peak
(pgray.pipelines.plan.speed.PEAK_TFLOPS). gpu_check.sh runs it as a stage; copy its JSON to
benchmarks/gpu_utilisation.json (or pass it with --gpu-profile) and `--plan` uses the measured
fractions instead of the assumed ones. --quick: a tiny model on the CPU, two batch sizes, fp32
only: checks the script, measures nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import _timing as tm  # noqa: F401 (makes pgray importable)
import torch

BATCHES = (8, 16, 32, 64, 128, 256)
PRECISIONS = ("bf16", "tf32", "fp32")
STEPS = 3


def measure(model, batch: int, precision: str, device: torch.device, repeats: int) -> float:
    """Image-steps/s of pgray's PGD at this batch and precision (median attack)."""
    from pgray.attacks.pgd import attack
    from pgray.config import AttackConfig

    tf32 = precision == "tf32"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    size = model.cfg.img_size
    x = torch.rand(batch, 3, size, size, device=device)
    labels = (torch.rand(batch, model.num_patches, device=device) > 0.8).float()
    cfg = AttackConfig(eps=8.0, steps=STEPS, precision="bf16" if precision == "bf16" else "fp32")
    attack(model, x, labels, cfg)  # warm-up
    times = []
    for _ in range(repeats):
        times.append(tm.timed(lambda: attack(model, x, labels, cfg), device))
    return batch * STEPS / statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    from pgray.config import ModelConfig, tiny_model_config
    from pgray.core.model import PatchGuard
    from pgray.pipelines.plan.costs import gflop_per_image_step
    from pgray.pipelines.plan.speed import PEAK_TFLOPS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny model on the CPU (smoke)")
    p.add_argument("--json", type=Path, required=True)
    args = p.parse_args(argv)
    device = torch.device("cpu" if args.quick else args.device)
    if args.quick:
        torch.set_num_threads(1)  # a shared CPU: more threads than free cores only wait
    cfg = tiny_model_config() if args.quick else ModelConfig(pretrained=False)
    batches, precisions = ((2, 4), ("fp32",)) if args.quick else (BATCHES, PRECISIONS)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    gpu = "h200" if "H200" in name else "h100"
    gflop = gflop_per_image_step(cfg)
    model = PatchGuard(cfg).to(device).eval()
    rows, started = [], time.perf_counter()
    for precision in precisions:
        for batch in batches:
            rate = measure(model, batch, precision, device, repeats=2 if args.quick else 5)
            fraction = rate * gflop / (PEAK_TFLOPS[gpu][precision] * 1e3)
            rows.append({"precision": precision, "batch": batch, "image_steps_per_s": rate,
                         "fraction_of_peak": fraction})
            print(f"{precision:5} batch {batch:4}: {rate:12,.1f} image-steps/s,"
                  f" {fraction:.3f} of the {gpu} {precision} peak", flush=True)
            # written after every row: a stage cut short by its time limit keeps what it had
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({
                "device": name, "gpu": gpu, "model": "tiny" if args.quick else "vit_s14_224",
                "gflop_per_image_step": gflop, "peak_tflops": PEAK_TFLOPS[gpu],
                "smoke": args.quick, "seconds": time.perf_counter() - started, "rows": rows},
                indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
