"""How long do the bootstrap intervals take on a realistic test split? pgray's histogram
bootstrap (pgray/core/intervals.py) against the naive loop that recomputes the exact metrics
(pgray/core/metrics.py) on every resample, timed on a few resamples and extrapolated.

    python benchmarks/bootstrap_speed.py [--images 200] [--size 224] [--resamples 1000]
        [--naive 3] [--threads 1]

The split is generated: a third of the images anomalous with 1-3 rectangular defects, maps of
smooth noise raised on the defects (as a blurred pixel map is), image scores the map maxima.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from types import SimpleNamespace


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--naive", type=int, default=3, help="resamples of the exact loop, timed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def split(n: int, size: int, seed: int):
    import numpy as np
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 3 == 0).astype(np.int64)
    masks = np.zeros((n, size, size), np.uint8)
    for i in np.flatnonzero(labels):
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, size - size // 5, 2)
            h, w = rng.integers(size // 40 + 1, size // 5, 2)
            masks[i, y:y + h, x:x + w] = 1
    noise = ndimage.gaussian_filter(rng.normal(size=(n, size, size)).astype(np.float32),
                                    (0, 6, 6))
    maps = (noise / noise.std() + 1.0 * masks).astype(np.float32)
    return SimpleNamespace(scores=maps.reshape(n, -1).max(1), labels=labels, maps=maps,
                           masks=masks)


def main() -> int:
    args = parse()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(args.threads))
    import numpy as np

    from pgray.core import intervals as iv
    from pgray.core.metrics import aupro, image_auroc, pixel_auroc

    out = split(args.images, args.size, args.seed)
    pixels = out.maps.size
    print(f"split: {args.images} images at {args.size} px ({pixels / 1e6:.1f} M pixels,"
          f" {int(out.labels.sum())} anomalous); {args.resamples} resamples;"
          f" {args.threads} thread(s)")

    started = time.perf_counter()
    exact = {"image_auroc": image_auroc(out.scores, out.labels),
             "pixel_auroc": pixel_auroc(out.maps, out.masks), "aupro": aupro(out.maps, out.masks)}
    exact_s = time.perf_counter() - started

    counts = iv.resample_counts(out.labels, args.resamples, args.seed)
    reps, each = {}, {}
    full = np.vstack([counts, np.ones((1, counts.shape[1]), dtype=counts.dtype)])
    maps = out.maps.astype(np.float64)
    for metric, run in (
            ("image_auroc", lambda: iv.image_auroc_replicates(out.scores, out.labels, full)),
            ("pixel_auroc", lambda: iv.pixel_auroc_replicates(maps, out.masks, full)),
            ("aupro", lambda: iv.aupro_replicates(maps, out.masks, full))):
        started = time.perf_counter()
        reps[metric] = run()
        each[metric] = time.perf_counter() - started
    fast_s = sum(each.values())

    started = time.perf_counter()
    for r in range(args.naive):
        take = np.repeat(np.arange(args.images), counts[r])
        image_auroc(out.scores[take], out.labels[take])
        pixel_auroc(out.maps[take], out.masks[take])
        aupro(out.maps[take], out.masks[take])
    naive_each = (time.perf_counter() - started) / max(args.naive, 1)

    print(f"exact metrics once: {exact_s:.2f} s")
    print(f"histogram bootstrap, {args.resamples} resamples (+ the all-ones one):"
          f" {fast_s:.2f} s  (image AUROC {each['image_auroc']:.2f} s, pixel AUROC"
          f" {each['pixel_auroc']:.2f} s, AUPRO {each['aupro']:.2f} s)")
    print(f"naive exact loop: {naive_each:.2f} s a resample ({args.naive} timed) ->"
          f" {naive_each * args.resamples / 60:.1f} min for {args.resamples}"
          f" ({naive_each * args.resamples / fast_s:.0f} x slower)")
    for metric, value in exact.items():
        low, high = iv.percentile_interval(iv.centred(reps[metric], value))
        print(f"{metric:<12} exact {value:.5f}  all-ones resample {reps[metric][-1]:.5f}"
              f" (diff {reps[metric][-1] - value:+.1e})  95 % interval [{low:.4f}, {high:.4f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
