"""`python -m pgray.pseudo preview ...`: look at the pseudo-anomalies of a dataset category.

Imports stay inside functions so `--help` answers at once (no torch / cv2 import).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pgray.pseudo", description="Foreground-aware pseudo-anomalies."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "preview",
        help="write a grid PNG of pseudo-anomalies",
        description="Write a grid PNG: row 1 normal training images, row 2 their pseudo-"
        "anomalies, row 3 the pixel masks (white) over the anomalous patches (red).",
    )
    p.add_argument("--dataset", required=True, help="registry name, e.g. mvtec or synthetic")
    p.add_argument("--root", required=True, help="dataset root folder")
    p.add_argument("--category", required=True, help="category, e.g. bottle")
    p.add_argument("--out", required=True, type=Path, help="output PNG path")
    p.add_argument("--n", type=int, default=8, help="number of images (default 8)")
    p.add_argument("--size", type=int, default=224, help="image size (default 224)")
    p.add_argument("--patch-size", type=int, default=14, help="ViT patch size (default 14)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument(
        "--config", type=Path, default=None, help="experiment YAML whose `pseudo:` section to use"
    )
    return parser


def preview(args: argparse.Namespace) -> Path:
    from pgray.config import DataConfig, ExperimentConfig
    from pgray.config.pseudo import PseudoConfig
    from pgray.data.dataset import load_split
    from pgray.errors import ConfigError, DatasetError
    from pgray.pseudo.dataset import PseudoAnomalyDataset
    from pgray.pseudo.generator import PseudoAnomalyGenerator
    from pgray.pseudo.preview import compose, preview_rows, save_png_atomic

    if args.n < 1:
        raise ConfigError(f"--n: must be >= 1, got {args.n}")
    if args.seed < 0:
        raise ConfigError(f"--seed: must be >= 0, got {args.seed}")
    pseudo_cfg = ExperimentConfig.from_yaml(args.config).pseudo if args.config else PseudoConfig()
    data_cfg = DataConfig(dataset=args.dataset, root=str(args.root), category=args.category)
    base = load_split(data_cfg, "train", args.size)
    generator = PseudoAnomalyGenerator(pseudo_cfg, args.size, args.patch_size)
    dataset = PseudoAnomalyDataset(base, generator, seed=args.seed)
    if len(dataset) == 0:
        raise DatasetError(f"{args.root}: no normal training images for category {args.category}")
    save_png_atomic(compose(preview_rows(dataset, args.n, args.patch_size)), args.out)
    return args.out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "preview":
        out = preview(args)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    from pgray.errors import run_cli

    sys.exit(run_cli(main))
