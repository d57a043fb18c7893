"""python -m pgray.leaderboard: robustness cards of many runs in one table, Markdown and
HTML."""

from __future__ import annotations

import argparse
import sys

from pgray.errors import run_cli


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pgray.leaderboard",
        description="Merge the robustness cards found under each folder (OUT/cards/*.json of"
        " python -m pgray.benchmark, the sweep's final evaluation and python -m"
        " pgray.evaluate; any *.json with the card schema) into one table: one line per card"
        " and budget, grouped by dataset, category, threat and budget, the best worst-case AD"
        " (image AUROC under the adaptive suite) first, with 95 %% intervals where measured and"
        " unreliable cards marked with their flags. Exit 2 when a folder does not exist or"
        " holds no card.",
        epilog="example: python -m pgray.leaderboard runs/benchmark/paper runs/sweeps/demo"
        " --out runs/leaderboard   (writes runs/leaderboard.md and runs/leaderboard.html)",
    )
    p.add_argument("folders", nargs="+", metavar="DIR", help="folders searched recursively")
    p.add_argument("--out", metavar="PATH", help="write PATH.md and PATH.html (a .md or .html"
                   " suffix of PATH is replaced); without it the Markdown table is printed")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from pgray.tracking.leaderboard import find_cards, markdown, write_leaderboard

    cards = find_cards(args.folders)
    if not args.out:
        print(markdown(cards), end="")
        return 0
    md, page = write_leaderboard(cards, args.out)
    print(f"{len(cards)} card(s)\nmarkdown: {md}\nhtml:     {page}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
