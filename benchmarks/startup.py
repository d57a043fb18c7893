"""Start-up time of every entry point's --help (target: under 1.0 s wall each), and which
heavy packages each one imports (none should: they load lazily when work starts).

    python benchmarks/startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

ENTRY_POINTS = ("pgray.sweep", "pgray.train", "pgray.evaluate", "pgray.benchmark", "pgray.data",
                "pgray.data.synthetic", "pgray.pseudo", "pgray.detectors", "pgray.__main__")
HEAVY = ("torch", "ray", "mlflow", "timm", "optuna", "torchattacks", "pyarrow", "sklearn", "cv2")
PROBE = """
import runpy, sys
sys.argv = [{module!r}, "--help"]
try:
    runpy.run_module({module!r}, run_name="__main__")
except SystemExit:
    pass
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
"""


def wall(cmd: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def heavy_imports(module: str) -> str:
    code = PROBE.format(module=module, heavy=HEAVY)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("HEAVY=")]
    return line[-1].removeprefix("HEAVY=") if line else "?"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    base = wall([sys.executable, "-c", "pass"], args.repeat)
    print(f"python interpreter start-up alone: {base:.3f} s (median of {args.repeat})\n")
    print("| entry point | --help wall s (median) | under 1.0 s | heavy imports |")
    print("|---|---|---|---|")
    ok = True
    for module in ENTRY_POINTS:
        t = wall([sys.executable, "-m", module, "--help"], args.repeat)
        heavy = heavy_imports(module) or "none"
        ok &= t < 1.0
        print(f"| `python -m {module} --help` | {t:.3f} | {'yes' if t < 1.0 else 'NO'} | {heavy} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
