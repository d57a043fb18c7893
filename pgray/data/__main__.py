"""`python -m pgray.data {check,foreground,list}`: validate trees, write foreground masks.

Heavy modules (numpy, PIL, torch) load inside the commands, so `--help` answers at once.
"""

from __future__ import annotations

import argparse
from typing import Any

from pgray.errors import DatasetError, run_cli


def _option(text: str) -> tuple[str, Any]:
    """`key=value` with the value read as an int, a float, or else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    return key, value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="layout name (see `python -m pgray.data list`)")
    p.add_argument("--root", required=True, help="dataset root folder")
    p.add_argument("--category", default=None, help="one category (default: every one present)")
    p.add_argument("--visa-split", choices=("1cls", "reference"), default="1cls", help="VisA split")
    p.add_argument(
        "--option",
        action="append",
        type=_option,
        default=[],
        metavar="KEY=VALUE",
        help="layout option, e.g. normal_dir=good for --dataset folder (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pgray.data",
        description="Validate anomaly-detection dataset trees and write foreground masks.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate a dataset tree and print counts")
    _common(check)
    fg = sub.add_parser("foreground", help="write train/foreground_mask/*.png for the train images")
    _common(fg)
    fg.add_argument("--method", choices=("gradcam", "otsu"), default="gradcam")
    fg.add_argument("--weights", default=None, help="ImageNet resnet18 state_dict for Grad-CAM")
    fg.add_argument("--force", action="store_true", help="overwrite existing masks")
    sub.add_parser("list", help="known datasets and their categories")
    return parser


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {"visa_split": args.visa_split, **dict(args.option)}


def cmd_check(args: argparse.Namespace) -> int:
    from pgray.data.check import check_tree, format_table

    rows = check_tree(
        args.dataset, args.root, args.category, _options(args),
        # Progress goes to stdout: stderr carries only the one-line error, if any.
        progress=lambda msg: print(msg, flush=True),
    )  # fmt: skip
    print(format_table(rows))
    n_cat = len({r.category for r in rows})
    print(
        f"OK: {sum(r.images for r in rows)} images in {n_cat} categor{'y' if n_cat == 1 else 'ies'}"
    )
    return 0


def cmd_foreground(args: argparse.Namespace) -> int:
    from pgray.data.foreground import generate_foreground

    report = generate_foreground(
        args.dataset,
        args.root,
        args.category,
        args.method,
        args.weights,
        args.force,
        _options(args),
    )
    print(f"done: {report.written} written, {report.skipped} skipped")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from pgray.data.registry import get_layout, list_datasets

    for name in list_datasets():
        cats = get_layout(name).categories
        print(f"{name:14s} {' '.join(cats) if cats else '(any folder)'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse's own usage errors keep its exit status 2
        return int(exit_.code or 0)
    commands = {"check": cmd_check, "foreground": cmd_foreground, "list": cmd_list}
    if args.command not in commands:
        raise DatasetError(f"unknown command {args.command!r}")
    return commands[args.command](args)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
