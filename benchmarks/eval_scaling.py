"""Evaluation scaling: the same small benchmark grid run sequentially in this process, on one
Ray actor and on two, with wall times and speed-ups measured in one run.

    python benchmarks/eval_scaling.py [--steps 200] [--categories disc weave]

Targets: 2 actors >= 1.7x over 1 actor on a 2-core machine. The actors' start-up (a fresh
Python importing torch) is inside the measured wall time, as a user would see it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--categories", nargs="+", default=["disc", "weave"])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--n-test", type=int, default=32)
    p.add_argument("--eps", type=float, nargs="+", default=[2.0, 4.0, 8.0])
    p.add_argument("--steps", type=int, default=200)
    return p.parse_args()


def make_checkpoints(root: Path, out: Path, categories: list[str], size: int) -> None:
    from pgray.config import ExperimentConfig, tiny_model_config
    from pgray.config.base import to_dict
    from pgray.pipelines.train import TrainRequest, train_category

    for cat in categories:
        cfg = ExperimentConfig.from_dict({
            "data": {"dataset": "synthetic", "root": str(root), "category": cat},
            "model": to_dict(tiny_model_config(img_size=size)),
            "loss": {"attention_layers": [1, 2], "attention_weights": [0.01, 0.05]},
            "train": {"epochs": 1, "batch_size": 8, "max_steps_per_epoch": 2,
                      "attack": {"steps": 2}, "proxy_steps": 2, "holdout_fraction": 0.2},
        })
        train_category(TrainRequest(config=cfg, out=out / cat, name=f"scaling-{cat}",
                                    progress=False))


def grid(root: Path, ckpts: Path, args, actors: int):
    from pgray.config.base import from_dict
    from pgray.config.benchmark import BenchmarkConfig

    return from_dict(BenchmarkConfig, {
        "name": f"scaling-{actors}",
        "datasets": [{"dataset": "synthetic", "root": str(root), "categories": args.categories,
                      "checkpoint": str(ckpts / "{category}" / "checkpoint.pt")}],
        "eps": args.eps, "steps": [args.steps], "batch_size": 32, "n_panels": 0,
        "actors": {"count": actors, "cpus": 1, "threads": 1},
    })


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> int:
    args = parse()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        from pgray.data.synthetic import generate
        from pgray.pipelines.benchmark import run_benchmark

        root = generate(tmp / "data", size=args.size, n_train=16, n_test=args.n_test,
                        categories=tuple(args.categories))
        make_checkpoints(root, tmp / "ckpt", args.categories, args.size)
        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        n_jobs = len(args.categories) * (1 + len(args.eps))
        walls = {
            "sequential (1 process, 1 thread)": timed(lambda: run_benchmark(
                grid(root, tmp / "ckpt", args, 1), tmp / "seq", sequential=True,
                progress=False)),
            "1 actor": timed(lambda: run_benchmark(grid(root, tmp / "ckpt", args, 1),
                                                   tmp / "a1", progress=False)),
            "2 actors": timed(lambda: run_benchmark(grid(root, tmp / "ckpt", args, 2),
                                                    tmp / "a2", progress=False)),
        }
        ray.shutdown()
    seq, one = walls["sequential (1 process, 1 thread)"], walls["1 actor"]
    print(f"\ngrid: {n_jobs} jobs ({len(args.categories)} categories x clean + eps "
          f"{args.eps}), PGD-{args.steps}, {args.n_test} test images each, tiny ViT "
          f"{args.size}px; {os.cpu_count()} CPU cores\n")
    print("| run | wall s | speed-up vs sequential | speed-up vs 1 actor |")
    print("|---|---|---|---|")
    for name, wall in walls.items():
        print(f"| {name} | {wall:.1f} | {seq / wall:.2f}x | {one / wall:.2f}x |")
    ratio = one / walls["2 actors"]
    print(f"\n2 actors vs 1 actor: {ratio:.2f}x (target >= 1.7x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
