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
        " pgray.evaluate; any *.json with the card schema) into one table, like with like:"
        " lines are ranked within a dataset, category, threat, budget, suite and precision"
        " (a --suite protocol card is labelled protocol and never ranked as a worst case),"
        " reliable lines first, unreliable ones after them with their flags; one line per"
        " model over its training seeds, the mean with a 95 % interval over both the test"
        " images and the seeds and the seed count; the worst case's TPR at 1 % and 5 % FPR"
        " and its AD with only normal or only anomalous images attacked beside AD, AL and"
        " AUPRO. Exit 2 when a folder does not exist or holds no card.",
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
