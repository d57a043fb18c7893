"""python -m pgray.benchmark: PGD evaluation of many checkpoints on a pool of Ray actors."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pgray.errors import run_cli


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pgray.benchmark",
        description="Evaluate a grid of (dataset, category, checkpoint, attack, eps, steps, "
        "restarts) jobs on Ray actors. Writes OUT/results.parquet (one row per setting, with "
        "every parameter that defines the number), OUT/results.md, robustness plots, and MLflow "
        "runs (a parent, and a child per job). Jobs already in OUT are skipped unless --force.",
    )
    p.add_argument("--config", required=True, help="benchmark YAML (see benchmarks/*.yaml)")
    p.add_argument("--out", help="results folder (default runs/benchmark/NAME)")
    p.add_argument("--force", action="store_true", help="re-run jobs that already have results")
    p.add_argument("--sequential", action="store_true",
                   help="run jobs one after another in this process, without Ray")
    p.add_argument("--address", help="Ray address (default RAY_ADDRESS, else a local Ray)")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (default MLFLOW_TRACKING_URI, else"
                   " sqlite:///./mlflow.db)")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from pgray.config.benchmark import BenchmarkConfig
    from pgray.pipelines.benchmark import run_benchmark

    cfg = BenchmarkConfig.from_yaml(args.config)
    out = Path(args.out) if args.out else Path("runs/benchmark") / cfg.name
    result = run_benchmark(cfg, out, mlflow_uri=args.mlflow_uri, force=args.force,
                           progress=not args.quiet, sequential=args.sequential,
                           address=args.address)
    print(result.table_text)
    print(f"{result.ran} jobs run, {result.skipped} skipped (already done)")
    print(f"results: {result.parquet}\ntable:   {result.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
