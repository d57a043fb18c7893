"""Pseudo-anomaly throughput: images per second on one core, per severity level and overall.

    .venv/bin/python benchmarks/pseudo_throughput.py [--sizes 224 64] [--seconds 2]

Single process, one thread for torch and cv2, so the figure is per core: a DataLoader with
k workers makes about k times as many. Inputs are a textured image with a disc foreground
(a typical object category) and an all-ones foreground (a texture category).
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import torch

from pgray.config.pseudo import LEVELS, PseudoConfig
from pgray.pseudo.generator import PseudoAnomalyGenerator

BATCH = 20


def inputs(size: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(9 * xx), np.cos(7 * yy), np.sin(5 * (xx + yy))])
    img = np.clip(0.5 + 0.3 * base + 0.1 * rng.standard_normal((3, size, size)), 0, 1)
    image = torch.from_numpy(img.astype(np.float32))
    r = np.hypot(yy - 0.5, xx - 0.5)
    disc = torch.from_numpy(r < 0.3)
    return {"object": (image, disc), "texture": (image, torch.ones(size, size, dtype=torch.bool))}


def rate(gen: PseudoAnomalyGenerator, image, fg, level: str | None, seconds: float) -> float:
    """Images per second: batches of 20 for at least `seconds`, median batch time.

    The median, not the mean, so a neighbour process stealing the core for a moment does not
    drag the figure down.
    """
    rng = np.random.default_rng(0)
    for _ in range(5):  # warm-up: first calls pay for lazy cv2 / numpy initialisation
        gen.sample(image, fg, rng, level=level)
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 5:
        t0 = time.perf_counter()
        for _ in range(BATCH):
            gen.sample(image, fg, rng, level=level)
        times.append(time.perf_counter() - t0)
    return BATCH / float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 64])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    print(f"{'size':>5} {'foreground':>10} " + " ".join(f"{c:>8}" for c in (*LEVELS, "overall")))
    for size in args.sizes:
        patch = 14 if size % 14 == 0 else 8
        gen = PseudoAnomalyGenerator(PseudoConfig(), size, patch)
        for name, (image, fg) in inputs(size).items():
            rates = [rate(gen, image, fg, lv, args.seconds) for lv in (*LEVELS, None)]
            print(f"{size:>5} {name:>10} " + " ".join(f"{r:8.0f}" for r in rates))
    print("images / second / core (torch and cv2 on 1 thread); overall = severity p 0.2/0.2/0.6")


if __name__ == "__main__":
    main()
