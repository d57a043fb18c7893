"""A robust number must not depend on the scale of a detector's scores: a tiny PatchGuard and
the same checkpoint with its discriminator head's final weight and bias multiplied by 25 (the
same ranking of every image and pixel, logits 25 times larger: a more confident detector)
must get the same clean and worst-case AUROCs from `python -m pgray.evaluate`.

    python benchmarks/scaled_head.py [--factor 25] [--epochs 6] [--keep DIR]

Trains the model (32 px, clean, a few epochs on a generated category), writes the scaled copy,
evaluates both with the adaptive suite at linf eps 8/255 and L2 eps 1.0 (`--eps 8 --l2-eps
1.0`; the suite kept small with --suite-steps, --square-queries and --steps, see --help), and
prints clean and worst-case AD (image AUROC) and AL (pixel AUROC) per threat for both and
their differences. Exits 1 if a difference exceeds --tolerance (0.05). Each evaluation runs
the repository's own pgray in a subprocess. A few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METRICS = {"AD": "image_auroc", "AL": "pixel_auroc"}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--factor", type=float, default=25.0, help="multiplies the head's weight"
                   " and bias")
    p.add_argument("--category", default="disc")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--n-train", type=int, default=32)
    p.add_argument("--n-test", type=int, default=24)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--suite-steps", type=int, default=50)
    p.add_argument("--square-queries", type=int, default=300)
    p.add_argument("--steps", type=int, default=100, help="steps of the paper protocol")
    p.add_argument("--tolerance", type=float, default=0.05)
    p.add_argument("--keep", type=Path, default=None,
                   help="folder to keep data, checkpoints and metrics in (default: temporary)")
    return p.parse_args(argv)


def experiment(args, root: Path):
    from pgray.config import ExperimentConfig, tiny_model_config
    from pgray.config.base import to_dict

    return ExperimentConfig.from_dict({
        "data": {"dataset": "synthetic", "root": str(root), "category": args.category},
        "model": to_dict(tiny_model_config(img_size=args.size)),
        "loss": {"attention_layers": [1, 2], "attention_weights": [0.01, 0.05]},
        "train": {"epochs": args.epochs, "batch_size": 8, "adversarial": False,
                  "holdout_fraction": 0.0, "seed": args.seed},
    })


def train(args, work: Path) -> Path:
    from pgray.core.fit import FitContext, fit
    from pgray.data.synthetic import generate

    root = generate(work / "data", seed=args.seed, size=args.size, n_train=args.n_train,
                    n_test=args.n_test, categories=(args.category,))
    path = work / "model.pt"

    def report(epoch, metrics, save):
        if save is not None:
            save(path)

    fit(experiment(args, root), FitContext(report=report, progress=False))
    return path


def scaled_copy(checkpoint: Path, factor: float, out: Path) -> Path:
    """The checkpoint with the discriminator head's final Linear (`disc.head`) times factor."""
    import torch

    from pgray.core.checkpoint import load_checkpoint, save_checkpoint

    model, cfg, extra = load_checkpoint(checkpoint)
    with torch.no_grad():
        model.disc.head.weight.mul_(factor)
        model.disc.head.bias.mul_(factor)
    return save_checkpoint(out, model, cfg, extra)


def evaluate(args, checkpoint: Path, out: Path) -> list[dict]:
    command = [sys.executable, "-m", "pgray.evaluate", "--checkpoint", str(checkpoint),
               "--eps", "8", "--l2-eps", "1.0", "--suite", "adaptive",
               "--suite-steps", str(args.suite_steps),
               "--square-queries", str(args.square_queries), "--steps", str(args.steps),
               "--n-panels", "0", "--out", str(out), "--quiet"]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    subprocess.run(command, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    return json.loads((out / "metrics.json").read_text())["results"]


def figures(rows: list[dict]) -> dict[tuple[str, str], float]:
    """{(threat or 'clean', AD | AL): value} of the clean row and each worst-case row."""
    out = {}
    for row in rows:
        if row.get("attack") == "clean":
            name = "clean"
        elif row.get("attack") == "worst_case":
            name = f"{row['threat']} worst"
        else:
            continue
        for short, key in METRICS.items():
            out[(name, short)] = row[key]
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    import pgray

    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        base = train(args, work)
        scaled = scaled_copy(base, args.factor, work / f"model_x{args.factor:g}.pt")
        print(f"pgray {Path(pgray.__file__).parent}; trained {args.epochs} epochs in"
              f" {time.perf_counter() - started:.0f} s", flush=True)
        results = {}
        for name, path in (("model", base), (f"x{args.factor:g}", scaled)):
            began = time.perf_counter()
            results[name] = figures(evaluate(args, path, work / f"eval_{name}"))
            print(f"evaluated {name} in {time.perf_counter() - began:.0f} s", flush=True)
    names = list(results)
    print(f"\n{'':14s}{names[0]:>8s}{names[1]:>8s}{'diff':>8s}")
    worst = 0.0
    for key, value in results[names[0]].items():
        other = results[names[1]][key]
        worst = max(worst, abs(other - value))
        print(f"{key[0] + ' ' + key[1]:14s}{value:8.3f}{other:8.3f}{other - value:+8.3f}")
    ok = worst <= args.tolerance
    print(f"largest difference {worst:.3f}: {'within' if ok else 'beyond'} {args.tolerance}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
