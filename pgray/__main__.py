"""The `pgray` console script: `pgray VERB ...` runs `python -m pgray.VERB ...`."""

from __future__ import annotations

import importlib
import sys

VERBS = {
    "sweep": ("pgray.sweep", "search training parameters with Ray Tune + Optuna (main job)"),
    "train": ("pgray.train", "adversarially train one category (in-process or Ray Train)"),
    "evaluate": ("pgray.evaluate", "clean + PGD evaluation of a checkpoint"),
    "benchmark": ("pgray.benchmark", "PGD benchmark grid on Ray actors"),
    "leaderboard": ("pgray.leaderboard", "robustness cards of many runs in one table"),
    "data": ("pgray.data.__main__", "check dataset trees, write foreground masks"),
    "synthetic": ("pgray.data.synthetic", "write the generated dataset"),
    "pseudo": ("pgray.pseudo.__main__", "preview pseudo-anomalies"),
    "detectors": ("pgray.detectors.__main__", "list the detectors pgray evaluates"),
}


def usage() -> str:
    lines = ["usage: pgray VERB [ARGS...]  (pgray VERB --help for each)", "", "verbs:"]
    lines += [f"  {verb:<10} {help_}" for verb, (_, help_) in VERBS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    verb, rest = args[0], args[1:]
    if verb not in VERBS:
        print(f"error: unknown verb {verb!r}\n\n{usage()}", file=sys.stderr)
        return 2
    from pgray.errors import run_cli

    module = importlib.import_module(VERBS[verb][0])
    sys.argv = [f"pgray {verb}", *rest]
    return run_cli(module.main, rest)


if __name__ == "__main__":
    sys.exit(main())
