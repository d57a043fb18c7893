"""`python -m pgray.detectors list`: the detectors pgray can evaluate, one line each."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pgray.detectors",
                                description="Detectors evaluated under pgray's attack suite.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every detector, with one line each")
    p.parse_args(argv)
    from pgray.detectors.registry import all_specs

    for spec in all_specs().values():
        how = "fit: python -m pgray.train --detector " + spec.name if spec.fitted else ""
        print(f"{spec.name:<22} {spec.description}" + (f"  [{how}]" if how else ""))
    return 0


if __name__ == "__main__":
    from pgray.errors import run_cli

    sys.exit(run_cli(main))
