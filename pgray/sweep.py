"""python -m pgray.sweep: search PatchGuard's loss and pseudo-anomaly parameters with Ray Tune +
Optuna, then benchmark the best trial(s) of every category.

With no arguments it runs the built-in `demo` search space on a local Ray, the generated dataset
and an SQLite MLflow store in the working directory (or MLFLOW_TRACKING_URI). Under `ray job
submit` it joins the job's cluster. `--resume` continues an interrupted sweep without rerunning
finished trials and without a second MLflow parent run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pgray.config.args import add_plan_args
from pgray.errors import run_cli


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pgray.sweep",
        description="Search PatchGuard parameters (Ray Tune + Optuna, ASHA) per category, then "
        "benchmark the best trial(s). No arguments: the demo search space on generated data.",
    )
    from pgray.config.search_space import builtin_space_names

    p.add_argument("--config", help="search-space YAML, or the name of a built-in one ("
                   f"{', '.join(builtin_space_names())}; default demo); schema in"
                   " search_spaces/README.md")
    p.add_argument("--out", help="output folder (default runs/sweep/<name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted sweep: finished trials are kept, not rerun")
    p.add_argument("--storage", help="Tune/Train storage: absolute path, s3:// or gs:// (default"
                   " OUT/ray; multi-node clusters need shared storage)")
    p.add_argument("--address", help="Ray address (default RAY_ADDRESS or the job's cluster,"
                   " else a local Ray in this process)")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (default MLFLOW_TRACKING_URI, else"
                   " sqlite:///./mlflow.db)")
    p.add_argument("--no-final-eval", action="store_true",
                   help="stop after the search (no benchmark of the best trials)")
    p.add_argument("--quiet", action="store_true", help="no Tune status tables or progress")
    p.add_argument("--verbose", action="store_true",
                   help="everything Ray says: Tune's full trial tables and every worker's log"
                        " (default: pgray's own lines, one per finished trial, and the"
                        " warnings that matter)")
    p.add_argument("--register", metavar="NAME",
                   help="register each category's best model (the sweep's own pick) as a"
                        " version of the MLflow model NAME-<category>; its alias champion"
                        " moves only to a model more robust like with like (README, \"Models"
                        " a team can hand on\")")
    add_plan_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from pgray.config.search_space import load_search_space, resolve_space_path
    from pgray.pipelines.components.sweep_request import SweepRequest
    from pgray.pipelines.sweep import run_sweep

    space = load_search_space(resolve_space_path(args.config or "demo"))
    if args.plan:
        from pgray.pipelines.plan import describe_cluster, sweep_plan

        cluster = describe_cluster(args.gpus, args.cpus, args.address)
        print(sweep_plan(space, cluster, gpu=args.gpu, gpu_profile=args.gpu_profile,
                         gpu_utilization=args.gpu_utilization))
        return 0
    out = Path(args.out) if args.out else Path("runs") / "sweep" / space.name
    if args.register:
        from pgray.io import check_name

        check_name(args.register, "--register name")
    result = run_sweep(SweepRequest(
        space=space, out=out, resume=args.resume, storage=args.storage, address=args.address,
        mlflow_uri=args.mlflow_uri, final_eval=not args.no_final_eval,
        progress=not args.quiet, verbose=args.verbose, register=args.register,
    ))
    from pgray.tracking.sweep_report import results_text

    print()
    # the console leaves out what results.md and the report hold besides (--verbose: all)
    print(results_text(space, result, brief=not args.verbose))
    print()
    from pgray.tracking.report import REPORT_FILE, raised_flags

    for name, meaning, where in raised_flags([r for b in result.benchmarks for r in b.rows]):
        print(f"warning: flag {name} raised ({meaning}): {'; '.join(where[:3])}"
              + (f" and {len(where) - 3} more" if len(where) > 3 else ""), file=sys.stderr)
    print(f"sweep finished in {result.wall_s:.0f} s; results in {result.out} (every table:"
          " results.md)")
    print(f"report: {result.out / REPORT_FILE} (one file; open it in a browser)")
    configs = [path for paths in result.best_configs.values() for path in paths]
    if configs:
        print(f"best configs: {', '.join(p.name for p in configs)} in {configs[0].parent}"
              f" (reuse: python -m pgray.train --config {configs[0]})")
    print(f"Tune experiment: {result.experiment_path} (continue with --resume)")
    print(f"MLflow: sweep run {result.parent_run_id}; {result.mlflow_hint}")
    for line in result.registered:
        print(f"registered: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
