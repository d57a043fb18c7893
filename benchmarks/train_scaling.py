"""Ray Train throughput: the same adversarial training with 1 and 2 data-parallel workers
(DDP over gloo on CPU), measured in one run.

    python benchmarks/train_scaling.py [--epochs 3] [--n-train 64]

Prints images per second (normal images; each also yields a pseudo-anomaly and two PGD
attacks) averaged over the epochs after the first, and the 2-worker / 1-worker ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--n-train", type=int, default=64)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16, help="global batch")
    p.add_argument("--train-steps", type=int, default=5, help="training PGD steps")
    return p.parse_args()


def experiment(args, root: Path):
    from pgray.config import ExperimentConfig, tiny_model_config
    from pgray.config.base import to_dict

    return ExperimentConfig.from_dict({
        "data": {"dataset": "synthetic", "root": str(root), "category": "disc"},
        "model": to_dict(tiny_model_config(img_size=args.size)),
        "loss": {"attention_layers": [1, 2], "attention_weights": [0.01, 0.05]},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "holdout_fraction": 0.0,
                  "attack": {"steps": args.train_steps}},
    })


def run(cfg, out: Path, workers: int, cpus: float) -> list[dict]:
    from pgray.pipelines.train import TrainRequest, train_category

    result = train_category(TrainRequest(
        config=cfg, out=out, name=f"scaling-{workers}w-{int(cpus * 10)}", workers=workers,
        use_ray=True, cpus_per_worker=cpus, progress=False))
    return result.history


def main() -> int:
    args = parse()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        from pgray.data.synthetic import generate

        root = generate(tmp / "data", size=args.size, n_train=args.n_train, n_test=4,
                        categories=("disc",))
        import ray

        cores = os.cpu_count() or 1
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
        cfg = experiment(args, root)
        rows = {
            "1 worker, 1 core": run(cfg, tmp / "w1", 1, 1.0),
            f"1 worker, {cores} cores": run(cfg, tmp / "w1c", 1, float(cores)),
            f"2 workers, {cores // 2} core each": run(cfg, tmp / "w2", 2, float(cores // 2)),
        }
        ray.shutdown()
    print(f"\ntiny ViT {args.size}px, {args.n_train} train images, global batch "
          f"{args.batch_size}, PGD-{args.train_steps} training attack, {args.epochs} epochs "
          f"(first epoch excluded); {cores} CPU cores\n")
    print("| run | images/s | vs 1 worker, 1 core |")
    print("|---|---|---|")
    rates = {}
    for name, history in rows.items():
        steady = [h["images_per_s"] for h in history[1:]] or [history[-1]["images_per_s"]]
        rates[name] = sum(steady) / len(steady)
    base = rates["1 worker, 1 core"]
    for name, rate in rates.items():
        print(f"| {name} | {rate:.1f} | {rate / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
