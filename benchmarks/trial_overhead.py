"""Where a sweep trial's time goes: start-up, epochs, proxy, checkpoints, shutdown.

    python benchmarks/trial_overhead.py [--config demo] [--only in-trial|train-run] [--keep DIR]

Runs the real command, `python -m pgray.sweep --config CONFIG --no-final-eval`, in a fresh
folder twice: with one-worker trials trained through a Ray Train run (a controller and a
worker actor per trial: how pgray ran them before) and inside the trial's own process (the
default, `resources.one_worker_in_trial`). Each trial's parts come from the sweep itself
(`pgray.distributed.trial_times`, in OUT/sweep_summary.json): start-up is from Tune launching
the trial to its first epoch; shutdown from its last result to Tune seeing it end. Prints each
part as a share of the trials' wall time (target: start-up under 20 %), the sweep's wall time,
and how busy the machine's CPUs were during it (all processes, from /proc/stat).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

VARIANTS = {"train-run": False, "in-trial": True}  # resources.one_worker_in_trial
PARTS = ("startup", "epochs", "proxy", "checkpoint", "shutdown", "other")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="demo", help="search space (name or YAML; default demo)")
    p.add_argument("--only", choices=sorted(VARIANTS), help="run one variant")
    p.add_argument("--keep", type=Path, help="keep the runs' folders here")
    p.add_argument("--per-trial", action="store_true", help="also print every trial's parts")
    return p.parse_args()


def cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) CPU time of the whole machine so far, or None off Linux."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def variant_config(config: str, in_trial: bool, folder: Path) -> Path:
    import yaml

    from pgray.config.search_space import resolve_space_path

    data = yaml.safe_load(resolve_space_path(config).read_text())
    data.setdefault("resources", {})["one_worker_in_trial"] = in_trial
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_variant(config: str, in_trial: bool, folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    space = variant_config(config, in_trial, folder)
    cmd = [sys.executable, "-m", "pgray.sweep", "--config", str(space), "--out",
           str(folder / "out"), "--no-final-eval"]
    env = os.environ | {"PYTHONPATH": str(_ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    before, started, load = cpu_jiffies(), time.perf_counter(), os.getloadavg()
    with open(folder / "console.txt", "w") as log:
        code = subprocess.call(cmd, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall, after = time.perf_counter() - started, cpu_jiffies()
    if code != 0:
        raise SystemExit(f"the sweep failed (exit {code}); its output: {folder / 'console.txt'}")
    summary = json.loads((folder / "out" / "sweep_summary.json").read_text())
    times = {t["trial_id"]: t["times"] for t in summary["trials"] if t.get("times")}
    busy = None
    if before and after:
        busy = (after[0] - before[0]) / max(1, after[1] - before[1])
    return {"wall": wall, "times": times, "busy": busy, "load": load,
            "states": [t["state"] for t in summary["trials"]]}


def main() -> int:
    args = parse()
    from pgray.distributed.trial_times import shares

    variants = {args.only: VARIANTS[args.only]} if args.only else VARIANTS
    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        runs = {}
        for name, in_trial in variants.items():
            print(f"{name}: python -m pgray.sweep --config {args.config} --no-final-eval ...",
                  file=sys.stderr, flush=True)
            runs[name] = run_variant(args.config, in_trial, base / name)
    print(f"\n{args.config} sweep without its final evaluation, {os.cpu_count()} CPUs\n")
    print("| one-worker trials | sweep wall s | trials | mean trial s | "
          + " | ".join(PARTS) + " | machine CPUs busy | load before |")
    print("|---|---|---|---|" + "---|" * len(PARTS) + "---|---|")
    for name, run in runs.items():
        total = shares(run["times"])
        cells = [f"{total[p + '_share']:.1%} ({total[p + '_s'] / max(1, total['trials']):.1f} s)"
                 for p in PARTS]
        busy = "-" if run["busy"] is None else f"{run['busy']:.0%}"
        print(f"| {name} | {run['wall']:.0f} | {total['trials']} of {len(run['states'])} | "
              f"{total['wall_s'] / max(1, total['trials']):.1f} | " + " | ".join(cells)
              + f" | {busy} | {run['load'][0]:.1f} |")
    print("\nEach part: its share of the trials' summed wall time (its mean per trial).")
    if args.per_trial:
        for name, run in runs.items():
            print(f"\n{name}:\n\n| trial | wall s | " + " | ".join(PARTS) + " |")
            print("|---|---|" + "---|" * len(PARTS))
            for trial_id, t in sorted(run["times"].items()):
                print(f"| {trial_id} | {t['wall_s']:.1f} | "
                      + " | ".join(f"{t[p + '_s']:.1f}" for p in PARTS) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
