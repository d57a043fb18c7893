"""Does the train-then-evaluate pipeline use the whole cluster? The same benchmark (4 generated
categories, each trained from scratch, then evaluated) on a `ray.cluster_utils.Cluster` with
1 and with 2 worker nodes of 1 CPU each, wall time side by side.

    python benchmarks/pipeline_scaling.py [--epochs 12] [--nodes 1 2]

Each training asks for one CPU (0.25 for its trial, 0.75 for its Ray Train worker) and each
evaluation actor for one CPU, so one node runs one piece at a time and two nodes two. Target:
2 nodes >= 1.7x one node. Startup of Ray, Tune and Train is inside the wall time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

CATEGORIES = ("weave", "grain", "disc", "gear")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--n-train", type=int, default=24)
    p.add_argument("--n-test", type=int, default=16)
    return p.parse_args()


def config(root: Path, ckpt: Path, args) -> dict:
    from pgray.config import tiny_model_config
    from pgray.config.base import to_dict

    return {
        "name": "scaling", "eps": [8.0], "steps": [5], "n_panels": 0, "batch_size": 16,
        "suite": {"steps": 5, "restarts": 1, "square_queries": 20, "square_images": 8,
                  "check_steps": 5},
        "train_missing": True,
        "datasets": [{"dataset": "synthetic", "root": str(root), "categories": list(CATEGORIES),
                      "checkpoint": str(ckpt / "{category}" / "checkpoint.pt")}],
        "train": {
            "model": to_dict(tiny_model_config(img_size=args.size)),
            "loss": {"attention_layers": [1, 2], "attention_weights": [0.01, 0.05]},
            "train": {"epochs": args.epochs, "batch_size": 8, "holdout_fraction": 0.25,
                      "proxy_steps": 2, "proxy_every": args.epochs,
                      "attack": {"eps": 8.0, "steps": 3}},
        },
        "train_resources": {"workers_per_trial": 1, "cpus_per_worker": 0.75,
                            "trial_cpus": 0.25, "max_failures": 0},
        "actors": {"count": 4, "cpus": 1.0, "threads": 1},
    }


def run(nodes: int, root: Path, work: Path, args) -> tuple[float, dict]:
    import ray
    from ray.cluster_utils import Cluster

    from pgray.config.base import from_dict
    from pgray.config.benchmark import BenchmarkConfig
    from pgray.pipelines.benchmark import run_benchmark

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(nodes):
        cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        out = work / f"nodes{nodes}"
        cfg = from_dict(BenchmarkConfig, config(root, out / "checkpoints", args))
        started = time.perf_counter()
        result = run_benchmark(cfg, out / "results", progress=False,
                               mlflow_uri=f"sqlite:///{out / 'mlflow.db'}")
        wall = time.perf_counter() - started
        return wall, {"trained": result.trained, "jobs": result.ran,
                      "peak_actors": result.peak_actors}
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> int:
    args = parse()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["PGRAY_SHARED_TRACKING_FS"] = "1"  # every node is on this machine
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from pgray.data.synthetic import generate

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = generate(work / "data", seed=0, size=args.size, n_train=args.n_train,
                        n_test=args.n_test, categories=CATEGORIES)
        rows = []
        for nodes in args.nodes:
            wall, info = run(nodes, root, work, args)
            rows.append((nodes, wall, info))
            print(f"{nodes} node(s): {wall:.1f} s {info}", file=sys.stderr, flush=True)
    base = rows[0][1]
    print(f"\n4 categories x ({args.epochs} epochs of tiny training at {args.size} px + the"
          f" adaptive suite, short) on ray.cluster_utils.Cluster, 1-CPU worker nodes\n")
    print("| worker nodes | wall s | speed-up vs 1 node | trainings | evaluation jobs |"
          " peak eval actors |")
    print("|---|---|---|---|---|---|")
    for nodes, wall, info in rows:
        print(f"| {nodes} | {wall:.1f} | {base / wall:.2f}x | {info['trained']} |"
              f" {info['jobs']} | {info['peak_actors']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
