"""python -m pgray.train: adversarially train PatchGuard on one category.

--workers 1 (the default) trains in this process without Ray; --workers N runs N data-parallel
Ray Train workers (DDP: gloo on CPU, NCCL on GPU), locally or on the cluster in RAY_ADDRESS.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pgray.config.args import add_data_args, add_model_args, build_config, default_run_name
from pgray.errors import run_cli


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pgray.train",
        description="Train PatchGuard (ViT + attention discriminator) adversarially on one "
        "category. Writes OUT/checkpoint.pt, OUT/metrics.json and an MLflow run. Re-running "
        "with the same --name resumes from the latest checkpoint.",
    )
    add_data_args(p)
    add_model_args(p)
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, help="epochs (default 1000, as the reference)")
    g.add_argument("--batch-size", type=int,
                   help="GLOBAL batch size, split evenly over the workers (default 16)")
    g.add_argument("--lr", type=float, help="AdamW learning rate (default 8e-4)")
    g.add_argument("--eps-train", type=float, help="training PGD eps in 1/255 units (default 8)")
    g.add_argument("--steps-train", type=int, help="training PGD steps (default 10)")
    g.add_argument("--train-attack", choices=["pgd", "fgsm_rs", "nfgsm", "pgd2"],
                   help="how the training attack is made: pgd (the reference PGD, default),"
                        " fgsm_rs (FGSM + random start, Wong et al. 2020), nfgsm (N-FGSM, de Jorge"
                        " et al. 2022) or pgd2 (PGD-2, random start); docs/method.md")
    g.add_argument("--no-adversarial", action="store_true",
                   help="drop the two PGD terms (the clean baseline)")
    g.add_argument("--seed", type=int)
    g.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                   help="auto: bf16 autocast on CUDA, fp32 on CPU")
    g.add_argument("--checkpoint-every", type=int, help="epochs between checkpoints (default 1)")
    g.add_argument("--max-steps-per-epoch", type=int, help="cap steps per epoch (smoke runs)")
    g.add_argument("--select-metric", metavar="METRIC",
                   help="also write best.pt: the weights of the proxy epoch where this held-out"
                        " metric peaked, e.g. proxy_score or proxy_robust_image_auroc (adversarial"
                        " training overfits robustly late in a run); default: keep the last")
    d = p.add_argument_group("a baseline detector instead of PatchGuard")
    d.add_argument("--detector", help="fit this baseline on the normal training images"
                   " (python -m pgray.detectors list); --backbone (default resnet18),"
                   " --img-size, --pretrained and --weights apply to it; writes OUT/detector.pt")
    d.add_argument("--layers", nargs="+", help="backbone layers the detector reads")
    d.add_argument("--detector-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a detector option, e.g. coreset_ratio=0.1 or epochs=20 (repeatable;"
                        " VALUE read as YAML)")
    r = p.add_argument_group("where it runs")
    r.add_argument("--out", default="runs/train", help="output folder (default runs/train)")
    r.add_argument("--name", help="run name (default DATASET-CATEGORY-CONFIGHASH); same name"
                   " = resume")
    r.add_argument("--workers", type=int, default=1,
                   help="data-parallel workers; 1 trains in-process without Ray (default 1)")
    r.add_argument("--ray", action="store_true", help="use Ray Train even with --workers 1")
    r.add_argument("--gpus-per-worker", type=float,
                   help="GPUs per Ray Train worker (default: 1 when the cluster has GPUs, else"
                        " 0); whole GPUs when --workers > 1")
    r.add_argument("--allow-cpu", action="store_true",
                   help="allow --gpus-per-worker 0 on a cluster that has GPUs")
    r.add_argument("--cpus-per-worker", type=float, default=1.0)
    r.add_argument("--storage", help="checkpoint storage: absolute path, s3:// or gs://"
                   " (default OUT/ray_storage; multi-node clusters need shared storage)")
    r.add_argument("--address", help="Ray address (default RAY_ADDRESS, else a local Ray)")
    r.add_argument("--max-failures", type=int, default=2, help="worker failures tolerated")
    r.add_argument("--mlflow-uri", help="MLflow tracking URI (default MLFLOW_TRACKING_URI, else"
                   " sqlite:///./mlflow.db)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    t: dict[str, Any] = {}
    for key in ("epochs", "batch_size", "lr", "seed", "precision", "checkpoint_every",
                "max_steps_per_epoch", "select_metric"):
        if getattr(args, key) is not None:
            t[key] = getattr(args, key)
    if args.no_adversarial:
        t["adversarial"] = False
    if args.train_attack:
        t["attack_method"] = args.train_attack
    attack = {}
    if args.eps_train is not None:
        attack["eps"] = args.eps_train
    if args.steps_train is not None:
        attack["steps"] = args.steps_train
    if attack:
        t["attack"] = attack
    return {"train": t} if t else {}


def fit_baseline(args: argparse.Namespace) -> int:
    """--detector NAME: fit a baseline instead of training PatchGuard."""
    from pgray.config.args import detector_and_data
    from pgray.pipelines.fit_detector import FitRequest, fit_detector

    det, data = detector_and_data(args)
    result = fit_detector(FitRequest(
        detector=det, data=data, out=Path(args.out),
        name=args.name or f"{det.name}-{data.dataset}-{data.category}",
        use_ray=args.ray or args.workers > 1, gpus=args.gpus_per_worker, address=args.address,
        mlflow_uri=args.mlflow_uri, progress=not args.quiet, batch_size=args.batch_size or 16))
    print(f"detector:   {result.checkpoint} ({det.name}, fitted in {result.fit_s:.1f} s)")
    print(f"mlflow run: {result.mlflow_run_id}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.workers < 1:
        parser().error("--workers must be >= 1")
    if args.detector:
        return fit_baseline(args)
    cfg = build_config(args, train_overrides(args))
    from pgray.io import check_name

    if args.name:
        check_name(args.name)
    from pgray.pipelines.train import TrainRequest, train_category

    result = train_category(TrainRequest(
        config=cfg, out=Path(args.out), name=args.name or default_run_name(cfg),
        workers=args.workers, use_ray=args.ray or args.workers > 1,
        gpus_per_worker=args.gpus_per_worker, allow_cpu=args.allow_cpu,
        cpus_per_worker=args.cpus_per_worker,
        storage=args.storage, address=args.address, max_failures=args.max_failures,
        mlflow_uri=args.mlflow_uri, progress=not args.quiet,
    ))
    print(f"checkpoint: {result.checkpoint}")
    if result.selected_checkpoint is not None:
        epoch = next(r["selected_epoch"] for r in reversed(result.history)
                     if "selected_epoch" in r)
        print(f"selected:   {result.selected_checkpoint} (epoch {epoch:.0f}, best "
              f"{cfg.train.select_metric})")
    print(f"metrics:    {result.metrics_file}")
    print(f"mlflow run: {result.mlflow_run_id} ({result.mlflow_hint})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
