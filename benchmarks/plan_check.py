"""Does `--plan` tell the truth here? The plan's wall time beside the real run's, on this CPU.

    .venv/bin/python benchmarks/plan_check.py [--config benchmarks/demo.yaml] [--sequential]

Copies the benchmark config with its checkpoints pointed into a temporary folder (so every
training the config asks for is planned and then runs), prints the plan of
`python -m pgray.benchmark --config COPY --plan`, runs `python -m pgray.benchmark --config
COPY` (the embedded Ray, as the real command does; --sequential: in one process), and prints
predicted and measured wall time side by side with their ratio (target: within 30 %) and the
load average before and after: on a shared host, other work slows the run and the
calibration alike, but not always equally.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _timing  # noqa: F401 (makes pgray importable)
import yaml

from pgray.pipelines.plan.speed import calibration_file

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.30  # |measured / predicted - 1| the plan aims within


def isolated_config(config: Path, folder: Path, epochs: int | None = None,
                    suite_steps: int | None = None) -> Path:
    """The config, its checkpoints under `folder` (none there yet: all are trained); with
    more epochs or suite steps, more of the run is compute (less is fixed costs)."""
    data = yaml.safe_load(config.read_text())
    if epochs is not None:
        data.setdefault("train", {}).setdefault("train", {})["epochs"] = epochs
    if suite_steps is not None:
        data.setdefault("suite", {})["steps"] = suite_steps
    for entry in data.get("datasets", []):
        if "checkpoint" in entry:
            entry["checkpoint"] = str(folder / "checkpoints" / "{dataset}" / "{category}"
                                      / "checkpoint.pt")
    out = folder / config.name
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def predicted_seconds(plan_text: str) -> float:
    """The plan's 'wall time about N s' (or 'N h')."""
    match = re.search(r"wall time about ([\d,.]+) (s|h)", plan_text)
    if match is None:
        raise SystemExit(f"no wall time in the plan:\n{plan_text}")
    value = float(match.group(1).replace(",", ""))
    return value * 3600 if match.group(2) == "h" else value


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=ROOT / "benchmarks" / "demo.yaml")
    p.add_argument("--sequential", action="store_true",
                   help="run the benchmark in one process, without Ray (the plan still assumes"
                        " Ray's concurrency and start-up: expect a larger gap)")
    p.add_argument("--epochs", type=int, help="train this many epochs instead")
    p.add_argument("--suite-steps", type=int, help="the adaptive suite's steps instead")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--log", type=Path, help="write the benchmark's own output here")
    args = p.parse_args(argv)

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    with tempfile.TemporaryDirectory(prefix="pgray-plan-check-") as tmp:
        folder = Path(tmp)
        config = isolated_config(args.config, folder, args.epochs, args.suite_steps)
        base = [sys.executable, "-m", "pgray.benchmark", "--config", str(config)]
        # the plan calibrates the CPU afresh, just before the run it predicts
        calibration_file().unlink(missing_ok=True)
        load_before = os.getloadavg()
        plan_s, plan = run(base + ["--plan"], env)
        if plan.returncode != 0:
            print(plan.stdout, plan.stderr, sep="\n")
            return plan.returncode
        print(plan.stdout)
        predicted = predicted_seconds(plan.stdout)
        cmd = base + ["--out", str(folder / "out"), "--mlflow-uri",
                      f"sqlite:///{folder / 'mlflow.db'}"]
        measured, done = run(cmd + (["--sequential"] if args.sequential else []), env)
        load_after = os.getloadavg()
        if args.log:
            args.log.write_text(done.stdout + "\n" + done.stderr)
        if done.returncode != 0:
            print(done.stdout[-4000:], done.stderr[-4000:], sep="\n")
            return done.returncode

    ratio = measured / predicted
    within = abs(ratio - 1) <= TARGET
    mode = "sequential" if args.sequential else "embedded Ray"
    changed = "".join(f", {k.replace('_', ' ')} {v}" for k, v in
                      (("epochs", args.epochs), ("suite_steps", args.suite_steps)) if v)
    print(f"## Plan check: {args.config.name}{changed} on this machine ({os.cpu_count()} CPUs,"
          f" {mode})\n")
    print("| predicted wall | measured wall | measured / predicted | within 30 % |"
          " load average before (1/5/15 min) | after |")
    print("|---|---|---|---|---|---|")
    print(f"| {predicted:.0f} s | {measured:.0f} s | {ratio:.2f} | {'yes' if within else 'NO'} |"
          f" {' / '.join(f'{x:.1f}' for x in load_before)} |"
          f" {' / '.join(f'{x:.1f}' for x in load_after)} |")
    print(f"\n(the plan itself took {plan_s:.0f} s, its CPU calibration included unless cached;"
          " a load average above the CPU count means the host is shared: other work slowed"
          " this run)")
    if args.json:
        args.json.write_text(json.dumps({
            "config": str(args.config), "epochs": args.epochs,
            "suite_steps": args.suite_steps, "mode": mode, "predicted_s": predicted,
            "measured_s": measured, "ratio": ratio, "within_target": within,
            "load_before": load_before, "load_after": load_after, "cpus": os.cpu_count()},
            indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
