"""python -m pgray.evaluate: clean and adversarial evaluation of a checkpoint on one category,
with the adaptive attack suite (the robust number is its per-image worst case) and the paper
protocol beside it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pgray.config.args import add_certify_args, certify_dict
from pgray.errors import run_cli


def add_attack_args(p: argparse.ArgumentParser) -> None:
    s = p.add_argument_group("attack suite")
    s.add_argument("--suite", choices=["adaptive", "protocol"], default="adaptive",
                   help="adaptive (default): the protocol plus detection, localization, APGD and"
                        " black-box attacks; the robust number is the per-image worst case."
                        " protocol: the paper's PGD alone")
    s.add_argument("--suite-steps", type=int, help="steps of each adaptive member (default 100)")
    s.add_argument("--suite-restarts", type=int,
                   help="random restarts of each adaptive member (default 2)")
    s.add_argument("--square-queries", type=int,
                   help="queries of the black-box member per image (default 1000)")
    s.add_argument("--square-images", type=int,
                   help="its class-balanced subset size (default 64; 0: every image)")
    t = p.add_argument_group("threats beyond linf (each with its own suite members and worst"
                             " case; docs/method.md, \"Threat models\")")
    t.add_argument("--l2-eps", type=float, nargs="+", default=[],
                   help="L2 budgets: the perturbation's L2 norm on [0, 1] pixels, e.g. 0.5 1.0"
                        " at 224 px (PGD-L2 and APGD-L2 members)")
    t.add_argument("--patch-eps", type=float, nargs="+", default=[],
                   help="patch budgets: the square patch's area as a fraction of the image in"
                        " (0, 1), e.g. 0.02 0.05 (a patch PGD at several places)")
    t.add_argument("--patch-positions", type=int,
                   help="places tried per image by the patch members (default 4)")
    g = p.add_argument_group("the paper protocol attack (exact reference PGD unless changed)")
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


def suite_dict(args: argparse.Namespace) -> dict[str, Any]:
    flags = {"steps": args.suite_steps, "restarts": args.suite_restarts,
             "square_queries": args.square_queries, "square_images": args.square_images,
             "patch_positions": args.patch_positions}
    return {"name": args.suite} | {k: v for k, v in flags.items() if v is not None}


def threats_list(args: argparse.Namespace) -> list[dict[str, Any]]:
    return [{"threat": name, "eps": eps} for name, eps in
            (("l2", args.l2_eps), ("patch", args.patch_eps)) if eps]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pgray.evaluate",
        description="Evaluate a PatchGuard checkpoint clean and under attack at each eps. Writes"
        " OUT/metrics.json: one row per setting (image_auroc, pixel_auroc, aupro, with threat, eps,"
        " steps, alpha, restarts, objective, precision, `attack`: clean, protocol, each suite"
        " member, worst_case, and `flags` from the reliability checks), with --certify a"
        " `certified` list (one row per radius: certified, attacked, smoothed and base"
        " numbers), PNG panels, and OUT/cards/*.json: the robustness card of the model"
        " (python -m pgray.leaderboard).",
    )
    p.add_argument("--checkpoint", required=True,
                   help="a checkpoint of pgray.train (PatchGuard, or a baseline fitted with"
                        " --detector), a reference state dict, or an MLflow model"
                        " (models:/NAME-<category>@champion, .../3, models:/m-<id>: evaluated"
                        " with the settings its numbers came from unless attack flags differ)")
    p.add_argument("--mlflow-uri", help="a models:/ checkpoint's MLflow store")
    p.add_argument("--config", help="for a reference state dict: an experiment YAML whose"
                   " `model` section is its architecture (default: the reference's, DINOv2"
                   " ViT-S/14 at 224)")
    p.add_argument("--dataset", help="dataset layout (default: the checkpoint's)")
    p.add_argument("--root", help="dataset root (default: the checkpoint's)")
    p.add_argument("--category", help="category (default: the checkpoint's)")
    p.add_argument("--mask-resize", choices=["nearest", "lanczos_any"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n-panels", type=int, default=4, help="PNG panels to write (default 4)")
    p.add_argument("--out", default="runs/eval", help="output folder (default runs/eval)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_attack_args(p)
    add_certify_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from pgray.config import EvalConfig, ExperimentConfig
    from pgray.config.base import from_dict

    settings = {
        "eps": args.eps, "attack": attack_dict(args), "suite": suite_dict(args),
        "threats": threats_list(args), "batch_size": args.batch_size,
        "n_panels": args.n_panels, "certify": certify_dict(args),
    }
    from pgray.pipelines.evaluate import evaluate_checkpoint, resolve_checkpoint

    given = {k for k, v in vars(args).items() if v != parser().get_default(k)}
    checkpoint, model, settings = resolve_checkpoint(args.checkpoint, args.mlflow_uri,
                                                     Path(args.out), settings, given)
    eval_cfg = from_dict(EvalConfig, settings, "eval")
    overrides = {k: v for k, v in {
        "dataset": args.dataset, "root": args.root, "category": args.category,
        "mask_resize": args.mask_resize}.items() if v is not None}
    reference = ExperimentConfig.from_yaml(args.config).model if args.config else None
    result = evaluate_checkpoint(checkpoint, overrides, eval_cfg, Path(args.out),
                                 progress=not args.quiet, reference_model=reference,
                                 fetched=model)
    from pgray.tracking.certified import certified_text
    from pgray.tracking.tables import rows_text

    print(rows_text(result["results"]))
    if result.get("certified"):
        print(certified_text(result["certified"]))
    if model is not None:  # its registered worst case beside this run's
        print(result["registered"])
    print(f"metrics: {Path(args.out) / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
