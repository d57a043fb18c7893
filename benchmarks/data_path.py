"""The data path against what a GPU consumes: images/s per core, today's decode against the cache.

    .venv/bin/python benchmarks/data_path.py [--n-train 48] [--source-px 1024] [--size 224]

Writes a generated object category (the synthetic `disc`, with foreground masks) whose PNG
sources are --source-px wide (rendered at 128 px, Lanczos-upscaled, with +-3 grey levels of
noise so the PNGs do not compress far better than camera images), then, in one process on one
thread (so each figure is per core), times one epoch of training items with pseudo-anomalies:

- decode each time: today's path without the cache (PNG decode + Lanczos resize + foreground
  mask at every epoch);
- cache, cold: the first epoch of a fresh cache (decode everything once, write the arrays, read);
- cache, warm: later epochs (memory-mapped uint8 rows).

Beside them: what a GPU consumes, from FLOPs (the formula is printed), per core of a 16-core
share, and the ratio measured / needed. Last, the loader wait share of a CPU training step of a
tiny model fed by make_loader (1 persistent worker, warm cache): time blocked in next(loader)
over the step time. CPU-time rates (process time, not wall time) are printed beside wall-time
ones: the host may be shared, and its load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GPU_TFLOPS = 989.0  # H100 / H200 dense bf16 peak
GPU_UTILIZATION = 0.40
CORES_PER_GPU = 16
TARGET_PER_CORE = 170.0  # images/s per core, warm, with pseudo-anomalies (N-FGSM's need)
TARGET_WAIT_SHARE = 0.05


def write_sources(root: Path, n_train: int, source_px: int) -> Path:
    """The disc category at 128 px, upscaled to source_px PNGs (images and foreground masks)."""
    from PIL import Image

    from pgray.data.synthetic import generate

    generate(root, seed=0, size=128, n_train=n_train, n_test=2, categories=("disc",))
    rng = np.random.default_rng(0)
    for path in sorted((root / "disc").rglob("*.png")):
        img = Image.open(path)
        is_mask = img.mode in ("L", "1")
        big = img.resize((source_px, source_px),
                         Image.Resampling.NEAREST if is_mask else Image.Resampling.LANCZOS)
        if not is_mask:
            noise = rng.integers(-3, 4, (source_px, source_px, 3))
            big = Image.fromarray(np.clip(np.asarray(big, np.int16) + noise, 0, 255)
                                  .astype(np.uint8))
        big.save(path, compress_level=1)  # fast to write; decoding costs about the same
    return root


def pseudo_items(samples, size: int, cache_dir: Path | None, patch: int = 14, seed: int = 0):
    from pgray.config import PseudoConfig
    from pgray.data.dataset import ADDataset
    from pgray.pseudo.dataset import PseudoAnomalyDataset
    from pgray.pseudo.generator import PseudoAnomalyGenerator

    return PseudoAnomalyDataset(ADDataset(samples, size, cache_dir=cache_dir),
                                PseudoAnomalyGenerator(PseudoConfig(), size, patch), seed=seed)


def epoch_rate(make, epochs: int = 1) -> tuple[float, float]:
    """(images/s by wall time, images/s by this process's CPU time) of `epochs` epochs of the
    dataset `make()` returns (its construction, where a cold cache is built, included)."""
    wall, cpu = time.perf_counter(), time.process_time()
    dataset = make()
    for epoch in range(epochs):
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        for i in range(len(dataset)):
            dataset[i]
    n = epochs * len(dataset)
    return n / (time.perf_counter() - wall), n / (time.process_time() - cpu)


def consumption() -> list[tuple[str, float]]:
    """Images/s one GPU consumes, per training method: peak x utilization / (GFLOP per pass x
    passes per image), passes from pgray.config.passes.step_passes."""
    from pgray.config.passes import step_passes
    from pgray.pipelines.plan.speed import VITS_GFLOP_PER_IMAGE_STEP

    out = []
    for label, method in (("PGD-10", "pgd"), ("N-FGSM", "nfgsm")):
        passes = step_passes(method, steps=10).passes
        rate = GPU_TFLOPS * 1e12 * GPU_UTILIZATION / (VITS_GFLOP_PER_IMAGE_STEP * 1e9 * passes)
        print(f"  {label:7s} {GPU_TFLOPS:g} TFLOP/s x {GPU_UTILIZATION:g} / ({VITS_GFLOP_PER_IMAGE_STEP}"
              f" GFLOP x {passes} passes) = {rate:,.0f} images/s per GPU = {rate / CORES_PER_GPU:.1f}"
              f" per core at {CORES_PER_GPU} cores")
        out.append((label, rate / CORES_PER_GPU))
    return out


def loader_wait_share(samples, cache_dir: Path, size: int, steps: int) -> tuple[float, float]:
    """(seconds blocked in next(loader) / seconds of the whole step loop, median step s) for a
    tiny ViT trained with N-FGSM on CPU, fed by make_loader with 1 persistent worker."""
    from pgray.config import ExperimentConfig, tiny_model_config
    from pgray.config.base import to_dict
    from pgray.core.model import PatchGuard
    from pgray.core.step import build_optimizer, train_step
    from pgray.core.training_data import make_loader

    cfg = ExperimentConfig.from_dict({
        "model": to_dict(tiny_model_config(img_size=size, patch_size=16, depth=2)),
        "loss": {"attention_layers": [1, 2], "attention_weights": [0.01, 0.05]},
        "train": {"batch_size": 8, "attack_method": "nfgsm", "attack": {"eps": 8.0},
                  "loader_workers": 1},
    })
    dataset = pseudo_items(samples, size, cache_dir, patch=16)
    model = PatchGuard(cfg.model)
    optimizer, _ = build_optimizer(model, cfg)
    loader = make_loader(dataset, cfg.train.batch_size, shuffle=True, cfg=cfg, rank=0,
                         world_size=1, device=torch.device("cpu"))
    waited = total = 0.0
    step_times: list[float] = []
    done, epoch = 0, 0
    while done < steps + 1:
        loader.sampler.set_epoch(epoch)
        it = iter(loader)
        while done < steps + 1:
            t0 = time.perf_counter()
            batch = next(it, None)
            t1 = time.perf_counter()
            if batch is None:
                break
            train_step(model, batch, cfg, optimizer, device=torch.device("cpu"))
            t2 = time.perf_counter()
            if done > 0:  # the first batch waits for the worker to start: reported apart
                waited += t1 - t0
                total += t2 - t0
                step_times.append(t2 - t1)
            done += 1
        epoch += 1
    return waited / total, float(np.median(step_times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=32, help="train images written")
    parser.add_argument("--source-px", type=int, default=1024, help="PNG source side")
    parser.add_argument("--size", type=int, default=224, help="model input side")
    parser.add_argument("--warm-epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=16, help="training steps timed for the"
                        " loader wait share")
    parser.add_argument("--keep", type=Path, default=None, help="write the dataset and the"
                        " cache here (default: a temporary folder, removed)")
    args = parser.parse_args()
    import cv2

    from pgray.data.dataset import ADDataset
    from pgray.data.registry import get_layout

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    work = args.keep or Path(tempfile.mkdtemp(prefix="pgray-data-path-"))
    try:
        t0 = time.perf_counter()
        root = write_sources(work / "data", args.n_train, args.source_px)
        samples = get_layout("synthetic").discover(root, "disc", "train")
        print(f"# data path, {len(samples)} disc train images ({args.source_px} px PNG sources,"
              f" foreground masks) at {args.size} px; written in {time.perf_counter() - t0:.1f} s")
        print(f"# host: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} /"
              f" {os.getloadavg()[1]:.2f} (1 / 5 min); the machine is shared with other jobs"
              " now, so CPU-time rates are printed beside wall-time ones")
        print("GPU consumption (one H200 / H100, ViT-S/14 at 224):")
        needs = consumption()
        cache = work / "cache"
        rows = [
            ("decode each time", epoch_rate(lambda: pseudo_items(samples, args.size, None))),
            ("cache, cold (1st epoch)", epoch_rate(lambda: pseudo_items(samples, args.size,
                                                                        cache))),
            ("cache, warm", epoch_rate(lambda: pseudo_items(samples, args.size, cache),
                                       args.warm_epochs)),
            ("cache, warm, no pseudo", epoch_rate(lambda: ADDataset(samples, args.size,
                                                                    cache_dir=cache),
                                                  args.warm_epochs)),
        ]
        print("\nimages/s per core (1 process, 1 thread), items with pseudo-anomalies (the"
              " last row without: what reading the cache costs):")
        heads = "".join(f" {'/ ' + label + ' need':>16s}" for label, _ in needs)
        print(f"  {'path':24s} {'wall':>7s} {'cpu':>7s}{heads}")
        for name, (wall, cpu) in rows:
            ratios = "".join(f" {wall / need:16.2f}" for _, need in needs)
            print(f"  {name:24s} {wall:7.1f} {cpu:7.1f}{ratios}")
        print("  (ratio: wall-time rate / images/s per core needed; > 1 keeps the GPU fed)")
        warm = rows[2][1][0]
        print(f"  target: warm >= {TARGET_PER_CORE:g} images/s per core:"
              f" {'met' if warm >= TARGET_PER_CORE else 'NOT met'} ({warm:.0f})")
        share, step_s = loader_wait_share(samples, cache, args.size, args.steps)
        print(f"\nloader wait share, tiny ViT (224 px, patch 16, depth 2, embed 64), N-FGSM, B 8,"
              f" CPU, 1 persistent worker, warm cache: {100 * share:.2f} % of step time"
              f" (median step {1000 * step_s:.0f} ms; target < {100 * TARGET_WAIT_SHARE:g} %)")
        print(f"# load average after: {os.getloadavg()[0]:.2f}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
