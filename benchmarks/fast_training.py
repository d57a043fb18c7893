"""Adversarial training at a fraction of PGD-10's cost: the same tiny ViT and data as
benchmarks/robustness_synthetic.py, trained with each training attack, then judged by the
worst case of the adaptive suite at eps 4 and 8/255.

    python benchmarks/fast_training.py --keep DIR [--methods fgsm_rs nfgsm pgd2]

DIR is a robustness_synthetic.py --keep folder: its `adversarial` (PGD-10) and
`clean-trained` models are reused when present (same data, config and epochs), the fast
methods are trained beside them into DIR/<method>. Compute is counted exactly (forward +
backward passes per normal image and step); time per epoch is measured for every method
side by side in this process (interleaved rounds, median), so the ratios share one machine
state. Target: a fast method within 0.02 of PGD-10's worst-case AD and AL at one third of its
compute or less.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import robustness_synthetic as rs  # noqa: E402 - the shared setup of the evidence runs

REFERENCE = "adversarial"  # robustness_synthetic's PGD-10 model
METHODS = ("fgsm_rs", "nfgsm", "pgd2")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keep", type=Path, required=True)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--eps", type=float, nargs="+", default=[4.0, 8.0])
    p.add_argument("--suite-steps", type=int, default=50)
    p.add_argument("--suite-restarts", type=int, default=1)
    p.add_argument("--square-queries", type=int, default=500)
    p.add_argument("--protocol-steps", type=int, default=100)
    p.add_argument("--timing-rounds", type=int, default=3)
    p.add_argument("--skip-train", action="store_true", help="evaluate what DIR holds")
    args, rest = p.parse_known_args()
    args.rs = rs.parse(rest)  # robustness_synthetic's own options (epochs, size, ...)
    return args


def config(args, root: Path, method: str):
    from pgray.config import ExperimentConfig
    from pgray.config.keys import apply_params

    adversarial = method != "clean-trained"
    base = rs.base_config(args.rs, root, adversarial)
    params = rs.overrides(args.rs.overrides)
    if method in METHODS:
        params["train.attack_method"] = method
    return ExperimentConfig.from_dict(apply_params(base, params))


def epoch_times(args, root: Path, methods: list[str]) -> dict[str, float]:
    """Median seconds of one training epoch per method, rounds interleaved."""
    import torch

    from pgray.core.model import PatchGuard
    from pgray.core.step import build_optimizer, train_epoch
    from pgray.core.training_data import build_datasets, make_loader

    setups = {}
    for m in methods:
        cfg = config(args, root, m)
        torch.manual_seed(0)
        model = PatchGuard(cfg.model)
        optimizer, _ = build_optimizer(model, cfg)
        train, _ = build_datasets(cfg, model.patch_size)
        loader = make_loader(train, cfg.train.batch_size, shuffle=True, cfg=cfg, rank=0,
                             world_size=1, device=torch.device("cpu"))
        setups[m] = (cfg, model, optimizer, loader)
    times: dict[str, list[float]] = {m: [] for m in methods}
    for r in range(args.timing_rounds):
        for m in methods[r % len(methods):] + methods[: r % len(methods)]:
            cfg, model, optimizer, loader = setups[m]
            started = time.perf_counter()
            train_epoch(model, loader, cfg, optimizer, device=torch.device("cpu"), epoch=r)
            times[m].append(time.perf_counter() - started)
    return {m: statistics.median(v) for m, v in times.items()}


def evaluate(path: Path, args) -> dict[str, dict]:
    import torch

    from pgray.config import AttackConfig, EvalConfig, SuiteConfig
    from pgray.core.checkpoint import load_checkpoint
    from pgray.core.robustness import evaluate_robustness
    from pgray.data.dataset import load_split

    model, cfg, _ = load_checkpoint(path)
    test = load_split(cfg.data, "test", cfg.model.img_size)
    eval_cfg = EvalConfig(eps=list(args.eps), attack=AttackConfig(steps=args.protocol_steps),
                          suite=SuiteConfig(steps=args.suite_steps, restarts=args.suite_restarts,
                                            square_queries=args.square_queries,
                                            square_images=0), batch_size=64)
    rows, _ = evaluate_robustness(model, test, eval_cfg, device=torch.device("cpu"),
                                  identity={"checkpoint_sha256": str(path)}, progress=False)
    return {f"{r['attack']}@{r['eps']:g}": r for r in rows}


def main() -> int:
    args = parse()
    import torch

    torch.set_num_threads(args.rs.threads)
    keep = args.keep
    root = rs.kept_data(args.rs, keep)
    methods = [REFERENCE, *args.methods, "clean-trained"]
    train_s: dict[str, float | None] = {}
    for m in methods:
        folder = keep / m
        if rs.kept_model(folder) is None and not args.skip_train:
            print(f"training {m} ({args.rs.epochs} epochs)...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            rs.train(config(args, root, m), folder)
            train_s[m] = time.perf_counter() - started
        else:
            saved = folder / "results.json"
            train_s[m] = json.loads(saved.read_text()).get("train_s") if saved.is_file() else None
        if m not in (REFERENCE, "clean-trained") and train_s[m] is not None:
            (folder / "results.json").write_text(json.dumps({"train_s": train_s[m]}))
    from pgray.config.passes import passes_per_image

    passes = {m: passes_per_image(config(args, root, m)) for m in methods}
    print("timing epochs side by side...", file=sys.stderr, flush=True)
    epoch_s = epoch_times(args, root, methods)
    results = {}
    for m in methods:
        print(f"evaluating {m}...", file=sys.stderr, flush=True)
        results[m] = evaluate(rs.kept_model(keep / m), args)
    (keep / "fast_training.json").write_text(json.dumps(
        {"results": results, "epoch_s": epoch_s, "passes": passes, "train_s": train_s},
        default=str, indent=1))
    print_table(args, methods, results, epoch_s, passes, train_s)
    return 0


def print_table(args, methods, results, epoch_s, passes, train_s) -> None:
    e = max(args.eps)
    ref = results[REFERENCE]
    print(f"\nsynthetic/{args.rs.category}, {args.rs.size} px, ViT depth {args.rs.depth} width"
          f" {args.rs.embed_dim}, {args.rs.epochs} epochs; the adaptive suite at"
          f" {args.suite_steps} steps x {args.suite_restarts} restarts (protocol PGD-"
          f"{args.protocol_steps}), worst case per image\n")
    head = ["method", "passes/img/step", "compute vs PGD-10", "epoch s", "time vs PGD-10",
            "train s", "AD clean", *(f"AD worst eps{x:g}" for x in args.eps), "AL clean",
            *(f"AL worst eps{x:g}" for x in args.eps), f"dAD@{e:g}", f"dAL@{e:g}"]
    print("| " + " | ".join(head) + " |")
    print("|---" * len(head) + "|")
    for m in methods:
        r = results[m]
        worst = [r[f"worst_case@{x:g}"] for x in args.eps]
        cells = [m, f"{passes[m]:g}", f"{passes[m] / passes[REFERENCE]:.2f}",
                 f"{epoch_s[m]:.2f}", f"{epoch_s[m] / epoch_s[REFERENCE]:.2f}",
                 "–" if train_s.get(m) is None else f"{train_s[m]:.0f}",
                 f"{r['clean@0']['image_auroc']:.3f}",
                 *(f"{w['image_auroc']:.3f}" for w in worst),
                 f"{r['clean@0']['pixel_auroc']:.3f}",
                 *(f"{w['pixel_auroc']:.3f}" for w in worst),
                 f"{r[f'worst_case@{e:g}']['image_auroc'] - ref[f'worst_case@{e:g}']['image_auroc']:+.3f}",
                 f"{r[f'worst_case@{e:g}']['pixel_auroc'] - ref[f'worst_case@{e:g}']['pixel_auroc']:+.3f}"]
        print("| " + " | ".join(cells) + " |")
    flagged = {m: sorted({f for row in results[m].values() for f in row.get("flags", [])})
               for m in methods}
    print("\nflags: " + "; ".join(f"{m}: {', '.join(v) or 'none'}" for m, v in flagged.items()))


if __name__ == "__main__":
    sys.exit(main())
