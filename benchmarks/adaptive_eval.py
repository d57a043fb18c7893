"""How much does the paper protocol overstate robustness? Every model given is evaluated with
the adaptive suite at several eps; the table shows AD (image AUROC), AL (pixel AUROC) and AUPRO
under each member and the per-image worst case, and the plot AUROC against eps.

    python benchmarks/adaptive_eval.py --keep DIR            # the two models of
        # benchmarks/robustness_synthetic.py --keep DIR (adversarial, clean-trained)
    python benchmarks/adaptive_eval.py --checkpoint NAME=PATH [--checkpoint ...]

Defaults: eps 1, 2, 4 and 8/255; the protocol PGD-100 (as robustness_synthetic.py measures
it); suite members at 100 steps x 2 restarts; Square with 1000 queries on every test image.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import robustness_synthetic as rs  # noqa: E402 - where the --keep folders come from


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keep", type=Path, help="a robustness_synthetic.py --keep folder")
    p.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                   help="a pgray checkpoint to evaluate under NAME (repeatable)")
    p.add_argument("--eps", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    p.add_argument("--protocol-steps", type=int, default=100)
    p.add_argument("--steps", type=int, default=100, help="steps of each adaptive member")
    p.add_argument("--restarts", type=int, default=2)
    p.add_argument("--square-queries", type=int, default=1000)
    p.add_argument("--square-images", type=int, default=0, help="0: every test image")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path("runs/adaptive_eval"))
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def models(args) -> dict[str, Path]:
    found: dict[str, Path] = {}
    if args.keep:
        for name in ("adversarial", "clean-trained"):
            path = rs.kept_model(args.keep / name)
            if path is not None:
                found[name] = path
    for spec in args.checkpoint:
        name, sep, path = spec.partition("=")
        if not sep:
            raise SystemExit(f"--checkpoint {spec!r}: expected NAME=PATH")
        found[name] = Path(path)
    if not found:
        raise SystemExit("nothing to evaluate: give --keep DIR or --checkpoint NAME=PATH")
    return found


def evaluate(path: Path, args) -> tuple[list[dict], dict]:
    """The rows of `evaluate_robustness`, and each row's outputs by (attack, eps), which keep
    the bootstrap replicates the paired differences read."""
    import torch

    from pgray.attacks.checks import reliability_flags
    from pgray.config import AttackConfig, EvalConfig, SuiteConfig
    from pgray.core.checkpoint import load_checkpoint
    from pgray.core.robustness import check_rows, clean_rows, suite_rows
    from pgray.data.dataset import load_split
    from pgray.io import file_sha256

    model, cfg, _ = load_checkpoint(path)
    test = load_split(cfg.data, "test", cfg.model.img_size)
    eval_cfg = EvalConfig(
        eps=list(args.eps), attack=AttackConfig(steps=args.protocol_steps),
        suite=SuiteConfig(steps=args.steps, restarts=args.restarts,
                          square_queries=args.square_queries, square_images=args.square_images),
        batch_size=args.batch_size)
    identity = {"dataset": cfg.data.dataset, "category": cfg.data.category,
                "checkpoint_sha256": file_sha256(path)}
    cpu = torch.device("cpu")
    rows, outputs = clean_rows(model, test, batch_size=args.batch_size, device=cpu)
    for eps in sorted(e for e in args.eps if e > 0):
        more, outs = suite_rows(model, test, eval_cfg, eps, device=cpu)
        rows += more
        outputs |= outs
    rows += check_rows(model, test, eval_cfg, device=cpu)
    kept = {(r["attack"], r["eps"]): outputs[r["setting"]] for r in rows
            if r["setting"] in outputs}
    return reliability_flags([identity | r for r in rows]), kept


def _difference(a: dict, out_a, b: dict, out_b, metric: str) -> str:
    """`+0.120* [+0.050, +0.190]`: a - b, its paired bootstrap interval, `*` when the interval
    excludes 0."""
    from pgray.core.intervals import paired_rows

    d = paired_rows(a, out_a, b, out_b, metric)
    if d is None:
        return f"{a[metric] - b[metric]:+.3f}"
    return f"{d.diff:+.3f}{'*' if d.significant else ''} [{d.low:+.3f}, {d.high:+.3f}]"


def table(results: dict[str, list[dict]]) -> str:
    members = ["protocol", "det_topk", "det_lse", "loc_mask", "apgd_det", "apgd_loc",
               "square_det", "worst_case"]
    lines = ["| model | eps | metric | clean | " + " | ".join(members) + " | flags |",
             "|---" * (len(members) + 5) + "|"]
    for name, rows in results.items():
        clean = next(r for r in rows if r["attack"] == "clean")
        for eps in sorted({r["eps"] for r in rows if r["attack"] == "worst_case"}):
            at = {r["attack"]: r for r in rows if r["eps"] == eps}
            flags = sorted({f for r in at.values() for f in r["flags"]})
            for metric, label in (("image_auroc", "AD"), ("pixel_auroc", "AL"),
                                  ("aupro", "AUPRO")):
                cells = [f"{at[m][metric]:.3f}" if m in at else "–" for m in members]
                lines.append(f"| {name} | {eps:g} | {label} | {clean[metric]:.3f} | "
                             + " | ".join(cells) + f" | {', '.join(flags)} |")
    return "\n".join(lines)


def summary(results: dict[str, list[dict]], outputs: dict[str, dict]) -> str:
    """Protocol minus worst case (the overstatement), and the adversarial model's gain over the
    clean-trained one under the worst case, per eps; each difference with its paired bootstrap
    interval (the same test images resampled for both numbers), `*` when it excludes 0."""
    lines = ["| model | eps | AD protocol | AD worst | overstated by | AL protocol | AL worst |"
             " overstated by |", "|---|---|---|---|---|---|---|---|"]
    worst: dict[tuple[str, float], dict] = {}
    for name, rows in results.items():
        for eps in sorted({r["eps"] for r in rows if r["attack"] == "worst_case"}):
            at = {r["attack"]: r for r in rows if r["eps"] == eps}
            p, w = at["protocol"], at["worst_case"]
            op, ow = outputs[name][("protocol", eps)], outputs[name][("worst_case", eps)]
            worst[(name, eps)] = w
            lines.append(f"| {name} | {eps:g} | {p['image_auroc']:.3f} | {w['image_auroc']:.3f} |"
                         f" {_difference(p, op, w, ow, 'image_auroc')} |"
                         f" {p['pixel_auroc']:.3f} | {w['pixel_auroc']:.3f} |"
                         f" {_difference(p, op, w, ow, 'pixel_auroc')} |")
    if {"adversarial", "clean-trained"} <= set(results):
        lines += ["", "| eps | worst-case AD adversarial - clean-trained | AL | AUPRO |",
                  "|---|---|---|---|"]
        for eps in sorted({e for _, e in worst}):
            a, c = worst[("adversarial", eps)], worst[("clean-trained", eps)]
            oa = outputs["adversarial"][("worst_case", eps)]
            oc = outputs["clean-trained"][("worst_case", eps)]
            lines.append(f"| {eps:g} | " + " | ".join(
                _difference(a, oa, c, oc, m) for m in ("image_auroc", "pixel_auroc", "aupro"))
                + " |")
    lines += ["", "Differences: a - b [paired bootstrap 95 % interval]; `*`: the interval"
              " excludes 0 (docs/method.md, \"Uncertainty\")."]
    return "\n".join(lines)


def plot(results: dict[str, list[dict]], out: Path) -> Path:
    from pgray.tracking.plots import robustness_curve

    series = {}
    for name, rows in results.items():
        clean = next(r for r in rows if r["attack"] == "clean")["image_auroc"]
        for attack in ("protocol", "worst_case"):
            pts = sorted((r["eps"], r["image_auroc"]) for r in rows if r["attack"] == attack)
            series[f"{name} {attack}"] = ([0.0] + [e for e, _ in pts], [clean] + [a for _, a in pts])
    return robustness_curve(out / "auroc_vs_eps.png", series, "eps (1/255)", "image AUROC",
                            "paper protocol (dashed) vs worst case of the adaptive suite")


def main() -> int:
    args = parse()
    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results, outputs = {}, {}
    for name, path in models(args).items():
        started = time.perf_counter()
        print(f"evaluating {name} ({path})", file=sys.stderr, flush=True)
        results[name], outputs[name] = evaluate(path, args)
        print(f"  {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    (args.out / "rows.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"\nsuite: members at {args.steps} steps x {args.restarts} restarts, Square"
          f" {args.square_queries} queries; protocol PGD-{args.protocol_steps}\n")
    print(table(results))
    print()
    print(summary(results, outputs))
    print(f"\nplot: {plot(results, args.out)}; rows: {args.out / 'rows.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
