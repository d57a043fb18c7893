"""python -m pgray.benchmark: the robust evaluation of many checkpoints on Ray actors, training
the missing ones first (all at once as far as the cluster allows)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pgray.config.args import add_plan_args
from pgray.errors import run_cli


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pgray.benchmark",
        description="Evaluate a grid of (dataset, category, checkpoint, attack, eps, steps, "
        "restarts) jobs on Ray actors. Writes OUT/results.parquet (one row per setting, with "
        "every parameter that defines the number), OUT/results.md, robustness plots, "
        "OUT/cards/*.json (a robustness card per detector, category and threat: python -m "
        "pgray.leaderboard), and MLflow runs (a parent, and a child per job). Jobs already in OUT are skipped unless --force.",
    )
    p.add_argument("--config", required=True, help="benchmark YAML (see benchmarks/*.yaml)")
    p.add_argument("--out", help="results folder (default runs/benchmark/NAME)")
    p.add_argument("--force", action="store_true", help="re-run jobs that already have results")
    p.add_argument("--sequential", action="store_true",
                   help="run jobs one after another in this process, without Ray")
    p.add_argument("--address", help="Ray address (default RAY_ADDRESS, else a local Ray)")
    p.add_argument("--resume", action="store_true",
                   help="continue the trainings of an interrupted benchmark (finished"
                        " categories are not trained again; finished jobs are always skipped)")
    p.add_argument("--storage", help="Ray Tune/Train storage for the trainings: absolute path,"
                   " s3:// or gs:// (default OUT/ray; multi-node clusters need shared storage)")
    add_plan_args(p)
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (default MLFLOW_TRACKING_URI, else"
                   " sqlite:///./mlflow.db)")
    p.add_argument("--register", metavar="NAME",
                   help="register the most robust model of each category (worst-case AD) as a"
                        " version of the MLflow model NAME-<category>; its alias champion"
                        " moves only to a model more robust like with like")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--verbose", action="store_true",
                   help="everything Ray says: Tune's trial tables for the trainings and every"
                        " worker's log (default: pgray's own lines)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from pgray.config.benchmark import BenchmarkConfig
    from pgray.pipelines.benchmark import run_benchmark

    cfg = BenchmarkConfig.from_yaml(args.config)
    if args.plan:
        from pgray.pipelines.plan import benchmark_plan, describe_cluster

        cluster = describe_cluster(args.gpus, args.cpus, args.address)
        print(benchmark_plan(cfg, cluster, gpu=args.gpu, gpu_profile=args.gpu_profile,
                             gpu_utilization=args.gpu_utilization))
        return 0
    out = Path(args.out) if args.out else Path("runs/benchmark") / cfg.name
    if args.register:
        from pgray.io import check_name

        check_name(args.register, "--register name")
    result = run_benchmark(cfg, out, mlflow_uri=args.mlflow_uri, force=args.force,
                           progress=not args.quiet, sequential=args.sequential,
                           address=args.address, resume=args.resume, storage=args.storage,
                           verbose=args.verbose, register=args.register)
    print(result.table_text)
    print(f"{result.trained} checkpoint(s) trained or fitted; {result.ran} jobs run,"
          f" {result.skipped} skipped (already done)")
    print(f"results: {result.parquet}\ntable:   {result.markdown}")
    print(f"report:  {result.markdown.parent / 'report.html'} (one file; open it in a browser)")
    for line in result.registered:
        print(f"registered: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
