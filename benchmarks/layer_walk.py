"""The walk of a benchmark's config from the command to the workers, traced on a small run.

    python benchmarks/layer_walk.py [--max-entries N] [--keep DIR]

What it runs: `python -m pgray.benchmark --sequential` (in this process, no Ray) on generated
data (32 px, two categories) with a PatchGuard checkpoint per category trained here beforehand
(not traced) and one baseline (PaDiM) the benchmark fits itself: the producers of existing
files and of baseline fits, the evaluation dispatcher, the job worker, the tables and the report.

What it measures: every call of a function of pgray/ is seen (`sys.setprofile`); a *stop* is a
function that is handed the config or what it becomes on the way (`CARRIERS`: the
BenchmarkConfig, its dataset entries and baselines, the jobs; an argument is one, or holds one
as an attribute or element), counted once, at its first call. A carrier's own methods and
properties (a job's `key`, the config's `entries()`) are no stops: they read the config where
it is; the walk is where it is handed to. The stops in that order are the walk; consecutive
stops in one file are one *entry* of that file. It prints the entries (file, its layer and the
functions stopped at), then per file how often it was entered, the *climbs* (an entry into a
higher layer than the one before: a return up the stack, or a lower layer calling up; also
counted between packages, pipelines/ and its tiers as one layer), and the *returns* (an entry
into a file already left). The command is the first stop: the config is born there. Two
tiny PatchGuard checkpoints are trained first (one per category; a minute on 2 cores). Exit
status 1 where a file is entered more than `--max-entries` times (default: no limit).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the checkout this script lives in, not an installed pgray
PACKAGE = REPO / "pgray"
# lowest first (docs/INTERFACES.md, "Layers")
LAYERS = (("errors.py", "io.py"), ("config",), ("core", "data", "pseudo", "attacks", "detectors"),
          ("tracking",), ("distributed",), ("pipelines/components",), ("pipelines/runners",),
          ("pipelines",))
COMMAND_LAYER = len(LAYERS)


def layer_of(rel: str) -> int:
    """The layer index of a file path relative to pgray/ (commands on top)."""
    best, longest = COMMAND_LAYER, 0
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            # the longest prefix wins: pipelines/components over pipelines
            if (rel == prefix or rel.startswith(prefix + "/")) and len(prefix) > longest:
                best, longest = index, len(prefix)
    return best


# The config and what it becomes on its way to the workers: its entries, their baselines, and
# the jobs (by class name: where each class lives is what the walk measures).
CARRIERS = frozenset({"BenchmarkConfig", "DatasetEntry", "DetectorEntry", "BenchJob"})


def package_layer(rel: str) -> int:
    """The layer of a file's package: pipelines/ and its tiers are one."""
    return layer_of("pipelines/x.py") if rel.startswith("pipelines/") else layer_of(rel)


def _carries(value, depth: int = 1) -> bool:
    """The value is one of CARRIERS, or holds one as an attribute or an element (one level
    down)."""
    try:
        if type(value).__name__ in CARRIERS:
            return True
        if depth == 0:
            return False
        if isinstance(value, list | tuple):
            inner = list(value[:4])
        else:
            attrs = object.__getattribute__(value, "__dict__")
            inner = list(attrs.values()) if isinstance(attrs, dict) else []
        return any(_carries(v, depth - 1) for v in inner)
    except Exception:  # noqa: BLE001 - a proxy that refuses: an error here unsets the profiler
        return False


class Walk:
    """Records the first call of each pgray function handed the config or what it became."""

    def __init__(self) -> None:
        self.stops: list[tuple[str, str]] = []  # (file relative to pgray/, function)
        self._seen: set[tuple[str, str]] = set()

    def __call__(self, frame, event, arg) -> None:
        if event != "call":
            return
        code = frame.f_code
        path = code.co_filename
        if not path.startswith(str(PACKAGE)):
            return
        key = (Path(path).relative_to(PACKAGE).as_posix(), code.co_qualname)
        if key in self._seen:
            return
        n = code.co_argcount + code.co_kwonlyargcount
        names = code.co_varnames[:n + bool(code.co_flags & 0x04) + bool(code.co_flags & 0x08)]
        values = [frame.f_locals.get(name) for name in names]
        if names and names[0] == "self" and type(values[0]).__name__ in CARRIERS:
            return  # a carrier's own method reads it where it is: no step of the walk
        if any(_carries(v) for v in values):
            self._seen.add(key)
            self.stops.append(key)


def entries(stops: list[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """Consecutive stops in one file, merged: (file, functions)."""
    out: list[tuple[str, list[str]]] = []
    for rel, function in stops:
        if out and out[-1][0] == rel:
            out[-1][1].append(function)
        else:
            out.append((rel, [function]))
    return out


def report(walk: list[tuple[str, list[str]]]) -> tuple[str, int]:
    """The walk as text, and the most entries of any one file."""
    counts = Counter(rel for rel, _ in walk)
    climbs = sum(layer_of(b) > layer_of(a) for (a, _), (b, _) in zip(walk, walk[1:]))
    # the same between packages (pipelines/ as one layer, as it was before its tiers)
    package_climbs = sum(package_layer(b) > package_layer(a)
                         for (a, _), (b, _) in zip(walk, walk[1:]))
    returns = sum(rel in {r for r, _ in walk[:i]} for i, (rel, _) in enumerate(walk))
    lines = ["| # | file | layer | functions |", "|---|---|---|---|"]
    lines += [f"| {i} | {rel} | {layer_of(rel)} | {', '.join(fns)} |"
              for i, (rel, fns) in enumerate(walk, start=1)]
    lines += ["", "| file | entries |", "|---|---|"]
    lines += [f"| {rel} | {n} |" for rel, n in counts.most_common()]
    stops = sum(len(fns) for _, fns in walk)
    most = max(counts.values(), default=0)
    lines += ["", f"{stops} stops in {len(counts)} files, {len(walk)} entries, {climbs} climbs"
              f" up the layers ({package_climbs} between packages), {returns} returns to a file"
              f" already left; most entries of one file: {most}"]
    return "\n".join(lines), most


def prepare(folder: Path) -> Path:
    """Generated data, a trained tiny PatchGuard checkpoint, and the benchmark's YAML."""
    from pgray.data.synthetic import generate
    from pgray.train import main as train

    root = generate(folder / "data", seed=0, size=32, n_train=12, n_test=8,
                    categories=("disc", "weave"))
    for category in ("disc", "weave"):
        code = train(["--dataset", "synthetic", "--root", str(root), "--category", category,
                      "--tiny", "--img-size", "32", "--epochs", "1",
                      "--batch-size", "4", "--steps-train", "1", "--max-steps-per-epoch", "1",
                      "--out", str(folder / "ckpt" / category), "--name", f"walk-{category}",
                      "--quiet"])
        if code != 0:
            raise SystemExit(f"training the walk's checkpoint failed ({code})")
    config = {
        "name": "walk", "eps": [8.0], "steps": [2], "batch_size": 8, "n_panels": 1,
        "suite": "protocol", "train_missing": True,
        "datasets": [{"dataset": "synthetic", "root": str(root), "categories": ["disc", "weave"],
                      "checkpoint": str(folder / "ckpt" / "{category}" / "checkpoint.pt"),
                      "detectors": [{"name": "padim", "fit": {"img_size": 32},
                                     "checkpoint": str(folder / "fits" / "{category}.pt")}]}],
    }
    path = folder / "walk.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-entries", type=int, help="fail where a file is entered more often")
    p.add_argument("--keep", help="work in this folder (default: a temporary one)")
    args = p.parse_args(argv)
    import os

    from pgray.benchmark import main as benchmark

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        config = folder / "walk.yaml"
        if not config.is_file():  # --keep: the data and checkpoints of an earlier walk
            config = prepare(folder)
        import shutil

        shutil.rmtree(folder / "out", ignore_errors=True)
        shutil.rmtree(folder / "fits", ignore_errors=True)
        walk = Walk()
        sys.setprofile(walk)
        try:
            code = benchmark(["--config", str(config), "--out", str(folder / "out"),
                              "--sequential", "--quiet"])
        finally:
            sys.setprofile(None)
        if code != 0:
            raise SystemExit(f"the benchmark failed ({code})")
    text, most = report(entries([("benchmark.py", "main"), *walk.stops]))
    print(text)
    return 1 if args.max_entries is not None and most > args.max_entries else 0


if __name__ == "__main__":
    sys.exit(main())
