"""The method at the reference's scale on one device: DINOv2 ViT-S/14 at 224 on a generated
category, trained adversarially (PGD-10, eps 8/255), clean, and with a fast training attack,
each for a time budget, then all evaluated with the adaptive suite (short attacks, labelled).

    python benchmarks/gpu_method.py --device cuda --budget-s 110 --out DIR
    python benchmarks/gpu_method.py --smoke --out DIR     # tiny models on the CPU

The number of epochs is chosen from a timed 2-epoch run so that the training fits its budget:
the first epoch's extra (CUDA start, the loaders' fork, the first proxy) once, then warm
epochs (the cosine schedule then spans exactly those epochs). Writes DIR/method.json after every
model and DIR/method.md at the end.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import _timing as tm

MODELS = (("adversarial PGD-10", {"adversarial": True, "attack_method": "pgd"}),
          ("clean-trained", {"adversarial": False}),
          ("fast: nfgsm", {"adversarial": True, "attack_method": "nfgsm"}))


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--smoke", action="store_true", help="tiny models on the CPU, seconds")
    p.add_argument("--budget-s", type=float, nargs=3, default=[110.0, 55.0, 55.0],
                   metavar=("ADV", "CLEAN", "FAST"), help="training seconds per model")
    p.add_argument("--eps", type=float, nargs="+", default=[4.0, 8.0])
    p.add_argument("--suite-steps", type=int, default=20)
    p.add_argument("--protocol-steps", type=int, default=100)
    p.add_argument("--n-train", type=int, default=200)
    p.add_argument("--n-test", type=int, default=96)
    p.add_argument("--category", default="disc")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--json", type=Path, default=None, help="(gpu_check.sh) same as OUT/method.json")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="(gpu_check.sh --smoke)")
    args = p.parse_args(argv)
    if args.smoke or args.quick:
        args.smoke, args.device = True, "cpu"
        args.budget_s, args.n_train, args.n_test = [1.0, 1.0, 1.0], 12, 8
        args.suite_steps, args.protocol_steps = 2, 2
    return args


def experiment(args, root: Path, overrides: dict, epochs: int):
    from pgray.config import ExperimentConfig, tiny_model_config
    from pgray.config.base import to_dict

    model = to_dict(tiny_model_config(img_size=32)) if args.smoke else {}  # default: ViT-S/14
    loss = {"attention_layers": [1, 2], "attention_weights": [0.01, 0.05]} if args.smoke else {}
    return ExperimentConfig.from_dict({
        "data": {"dataset": "synthetic", "root": str(root), "category": args.category},
        "model": model, "loss": loss,
        "train": {"epochs": epochs, "batch_size": 16, "holdout_fraction": 0.1,
                  "proxy_every": max(1, epochs // 4), "select_metric": "proxy_score",
                  "attack": {"eps": 8.0, "steps": 10}, **overrides},
    })


def epochs_for(budget_s: float, first_epoch_s: float, warm_epoch_s: float) -> int:
    """Epochs that fit `budget_s`: the first epoch's excess over a warm one (CUDA start,
    the loaders' fork, the first proxy) is paid once, then warm epochs (at least 2)."""
    start_s = max(0.0, first_epoch_s - warm_epoch_s)
    return max(2, int((budget_s - start_s) / max(warm_epoch_s, 1e-3)))


def time_epochs(args, root: Path, overrides: dict, device) -> tuple[float, float]:
    """(first epoch s, warm epoch s) of a 2-epoch run, from the end of each epoch."""
    from pgray.core.fit import FitContext, fit

    ends: list[float] = []
    started = time.perf_counter()
    fit(experiment(args, root, overrides, 2),
        FitContext(device=device, progress=False,
                   report=lambda epoch, metrics, save: ends.append(time.perf_counter())))
    return ends[0] - started, ends[1] - ends[0]


def train(args, root: Path, overrides: dict, budget: float, device, work: Path):
    """Time a first and a warm epoch, then train as many epochs as the budget holds."""
    from pgray.core.checkpoint import load_checkpoint, write_selected
    from pgray.core.fit import FitContext, fit

    first_s, warm_s = time_epochs(args, root, overrides, device)
    epochs = epochs_for(budget, first_s, warm_s)
    path = work / "checkpoint.pt"
    cfg = experiment(args, root, overrides, epochs)

    def report(epoch, metrics, save):
        if save is not None:
            save(path)

    started = time.perf_counter()
    fit(cfg, FitContext(device=device, report=report, progress=False))
    train_s = time.perf_counter() - started
    selected = write_selected(path, work / "best.pt")
    model, _, extra = load_checkpoint(selected or path, map_location=str(device))
    return model, {"epochs": epochs, "first_epoch_s": first_s, "warm_epoch_s": warm_s,
                   "train_s": train_s,
                   "selected_epoch": (extra.get("selected") or {}).get("epoch", epochs)}


def evaluate(args, model, root: Path, device) -> list[dict]:
    from pgray.config import AttackConfig, EvalConfig, SuiteConfig
    from pgray.core.robustness import evaluate_robustness
    from pgray.data.dataset import load_split

    test = load_split(experiment(args, root, {}, 1).data, "test", model.img_size)
    eval_cfg = EvalConfig(eps=list(args.eps),
                          attack=AttackConfig(steps=args.protocol_steps, precision="auto"),
                          suite=SuiteConfig(steps=args.suite_steps, restarts=1,
                                            square_queries=10 * args.suite_steps,
                                            square_images=32, check_steps=args.suite_steps))
    rows, _ = evaluate_robustness(model, test, eval_cfg, device=device,
                                  identity={"checkpoint_sha256": ""}, progress=False)
    return rows


def table(results: list[dict], args) -> str:
    head = ["model", "epochs", "train s", "AD clean", *(f"AD protocol/worst eps{e:g}"
            for e in args.eps), "AL clean", *(f"AL protocol/worst eps{e:g}" for e in args.eps),
            "flags"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in results:
        at = {(x["attack"], x["eps"]): x for x in r["rows"]}
        clean = at[("clean", 0.0)]

        def pair(metric, eps, at=at):
            return f"{at[('protocol', eps)][metric]:.3f} / {at[('worst_case', eps)][metric]:.3f}"

        flags = sorted({f for x in r["rows"] for f in x["flags"]})
        lines.append(" | ".join([
            f"| {r['model']}", str(r["epochs"]), f"{r['train_s']:.0f}",
            f"{clean['image_auroc']:.3f}", *(pair("image_auroc", e) for e in args.eps),
            f"{clean['pixel_auroc']:.3f}", *(pair("pixel_auroc", e) for e in args.eps),
            ", ".join(flags) or "none"]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse(argv)
    device = tm.setup(args)
    from pgray.data.synthetic import generate
    from pgray.io import write_json, write_text

    size = 32 if args.smoke else 224
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp) / "data", seed=0, size=size, n_train=args.n_train,
                        n_test=args.n_test, categories=(args.category,))
        for (name, overrides), budget in zip(MODELS, args.budget_s):
            work = Path(tmp) / name.replace(" ", "_").replace(":", "")
            work.mkdir()
            model, info = train(args, root, overrides, budget, device, work)
            rows = evaluate(args, model, root, device)
            results.append({"model": name, **info, "rows": rows})
            write_json(args.out / "method.json", {"device": tm.device_name(device),
                                                  "results": results})
            print(f"# done: {name} ({info['epochs']} epochs, {info['train_s']:.0f} s)",
                  flush=True)
    text = (f"# The method at {size} px on {tm.device_name(device)}\n\nsynthetic/{args.category},"
            f" {args.n_train} train / {args.n_test} test images; short attacks: protocol PGD-"
            f"{args.protocol_steps} and the adaptive suite at {args.suite_steps} steps (the paper"
            " protocol is PGD-1000); worst case = the robust number\n\n" + table(results, args))
    write_text(args.out / "method.md", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
