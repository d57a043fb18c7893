"""python -m pgray.evaluate: clean and PGD evaluation of a checkpoint on one category."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pgray.errors import run_cli


def add_attack_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("attack (exact reference PGD unless changed)")
    g.add_argument("--eps", type=float, nargs="+", default=[8.0],
                   help="L-inf radii in 1/255 units, e.g. --eps 2 4 8 (default 8)")
    g.add_argument("--steps", type=int, default=1000, help="PGD steps (default 1000)")
    g.add_argument("--alpha", type=float, help="step size in 1/255 units (default 2.5*eps/steps)")
    g.add_argument("--restarts", type=int, default=1)
    g.add_argument("--random-start", action="store_true")
    g.add_argument("--keep-best", action="store_true", help="keep each image's best iterate")
    g.add_argument("--objective", choices=["mask", "image_score"], default="mask")
    g.add_argument("--method", choices=["pgd", "apgd"], default="pgd")
    g.add_argument("--library", choices=["pgray", "torchattacks"], default="pgray")
    g.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")


def attack_dict(args: argparse.Namespace) -> dict[str, Any]:
    d = {
        "steps": args.steps, "alpha": args.alpha, "restarts": args.restarts,
        "random_start": args.random_start, "keep_best": args.keep_best,
        "objective": args.objective, "method": args.method, "library": args.library,
        "precision": args.precision,
    }
    if args.method == "apgd":
        d["library"] = "torchattacks"
    return d


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pgray.evaluate",
        description="Evaluate a PatchGuard checkpoint clean and under PGD at each eps. Writes "
        "OUT/metrics.json (image_auroc, pixel_auroc, aupro per setting, with eps, steps, alpha,"
        " restarts, objective and precision) and PNG panels.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt written by pgray.train")
    p.add_argument("--dataset", help="dataset layout (default: the checkpoint's)")
    p.add_argument("--root", help="dataset root (default: the checkpoint's)")
    p.add_argument("--category", help="category (default: the checkpoint's)")
    p.add_argument("--mask-resize", choices=["nearest", "lanczos_any"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n-panels", type=int, default=4, help="PNG panels to write (default 4)")
    p.add_argument("--out", default="runs/eval", help="output folder (default runs/eval)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_attack_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from pgray.config import EvalConfig
    from pgray.config.base import from_dict

    eval_cfg = from_dict(EvalConfig, {
        "eps": args.eps, "attack": attack_dict(args), "batch_size": args.batch_size,
        "n_panels": args.n_panels,
    }, "eval")
    overrides = {k: v for k, v in {
        "dataset": args.dataset, "root": args.root, "category": args.category,
        "mask_resize": args.mask_resize}.items() if v is not None}
    from pgray.pipelines.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(Path(args.checkpoint), overrides, eval_cfg, Path(args.out),
                                 progress=not args.quiet)
    for row in result["results"]:
        print(f"{row['setting']:<28} image_auroc {row['image_auroc']:.4f}  "
              f"pixel_auroc {row['pixel_auroc']:.4f}  aupro {row['aupro']:.4f}")
    print(f"metrics: {Path(args.out) / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
