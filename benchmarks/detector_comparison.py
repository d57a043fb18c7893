"""PatchGuard against the anomalib baselines under the same attacks: the paper's comparison
table, on generated data, through pgray's own benchmark pipeline.

    python benchmarks/detector_comparison.py --keep DIR [--eps 2 8] [--baselines patchcore ...]
        [--l2-eps ...] [--patch-eps ...] [--certify R ...] [--threat-detectors ...]
        [robustness_synthetic.py options: --size --n-train --n-test --epochs --depth --set ...]

PatchGuard is trained twice on a generated category as benchmarks/robustness_synthetic.py
trains it (adversarially, and clean as the twin `patchguard_clean`), reused when DIR already
holds them (a robustness_synthetic.py or fast_training.py --keep folder). Then one benchmark
(`pgray.pipelines.benchmark.run_benchmark`, in-process) fits every baseline on the same train
split with a random-init backbone (labelled so in every row: nothing can be downloaded here)
and evaluates all detectors clean, under the paper protocol and under the adaptive suite at
each eps; with --certify, the --threat-detectors again with `certify:` (the certified bracket
per radius). Prints the benchmark's results.md comparison table and one row per detector and eps;
everything lands in DIR/benchmark (Parquet, Markdown, rows.json) and the MLflow store of DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import robustness_synthetic as rs  # noqa: E402 - the shared setup of the evidence runs

# GeneralAD's default backbone (DINOv2 ViT-S/14) has no patch grid at the small image sizes
# of a CPU run: a ViT-S with 8 px patches, cut after block 4, with a discriminator trained
# for 20 epochs. The other baselines keep their own defaults (ResNet-18 backbones).
FIT = {"general_ad": {"backbone": "vit_small_patch8_224.dino", "layers": [4],
                      "options": {"epochs": 20, "hidden_dim": 256}}}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keep", type=Path, required=True, help="folder for data, models, results")
    p.add_argument("--baselines", nargs="+", default=None,
                   help="fitted detectors to compare (default: every one the registry lists)")
    p.add_argument("--eps", type=float, nargs="+", default=[2.0, 8.0])
    p.add_argument("--protocol-steps", type=int, default=100)
    p.add_argument("--suite-steps", type=int, default=50, help="steps of each adaptive member")
    p.add_argument("--suite-restarts", type=int, default=1)
    p.add_argument("--square-queries", type=int, default=500)
    p.add_argument("--square-images", type=int, default=0, help="0: every test image")
    p.add_argument("--l2-eps", type=float, nargs="*", default=[],
                   help="L2 budgets (norm on [0, 1] pixels) for --threat-detectors")
    p.add_argument("--patch-eps", type=float, nargs="*", default=[],
                   help="patch budgets (fraction of the image) for --threat-detectors")
    p.add_argument("--threat-detectors", nargs="+",
                   default=["patchguard", "patchguard_clean", "padim"],
                   help="the detectors the l2 and patch threats are run on (a second"
                        " benchmark over the same folder: the linf jobs are not run again)")
    p.add_argument("--certify", type=float, nargs="*", default=[], metavar="R",
                   help="L2 radii to certify --threat-detectors at (a benchmark with"
                        " `certify:` over the same folder; docs/method.md, \"Certification\")")
    p.add_argument("--certify-samples", type=int, default=None,
                   help="noise samples per image (default: CertifyConfig's, 1000)")
    p.add_argument("--certify-eot", type=int, default=None,
                   help="noise draws per attack step on the smoothed detector (default 8)")
    args, rest = p.parse_known_args()
    if args.baselines is None:
        from pgray.detectors.registry import all_specs

        args.baselines = [name for name, spec in all_specs().items() if spec.fitted]
    args.rs = rs.parse(rest)  # robustness_synthetic's own options (epochs, size, ...)
    return args


def patchguards(args) -> tuple[Path, dict[str, float | None]]:
    """The data root, and the training seconds of each PatchGuard (None when reused)."""
    keep = args.keep
    root = rs.kept_data(args.rs, keep)
    train_s: dict[str, float | None] = {}
    for name in ("adversarial", "clean-trained"):
        if rs.kept_model(keep / name) is not None:
            train_s[name] = None
            continue
        print(f"training PatchGuard {name} ({args.rs.epochs} epochs)...", file=sys.stderr,
              flush=True)
        started = time.perf_counter()
        rs.train(rs.experiment(args.rs, root, adversarial=name == "adversarial"), keep / name)
        train_s[name] = time.perf_counter() - started
    return root, train_s


def benchmark_config(args, root: Path):
    from pgray.config.base import from_dict
    from pgray.config.benchmark import BenchmarkConfig

    keep = args.keep
    detectors = [{"name": "patchguard_clean", "checkpoint": str(rs.kept_model(keep / "clean-trained"))}]
    detectors += [{"name": name, "fit": {"img_size": args.rs.size} | FIT.get(name, {}),
                   "checkpoint": str(keep / "baselines" / f"{name}.pt")}
                  for name in args.baselines]
    return from_dict(BenchmarkConfig, {
        "name": "detector-comparison", "eps": list(args.eps), "steps": [args.protocol_steps],
        "suite": {"steps": args.suite_steps, "restarts": args.suite_restarts,
                  "square_queries": args.square_queries, "square_images": args.square_images},
        "n_panels": 0, "batch_size": 48, "train_missing": True,
        "datasets": [{"dataset": "synthetic", "root": str(root),
                      "categories": [args.rs.category],
                      "checkpoint": str(rs.kept_model(keep / "adversarial")),
                      "detectors": detectors}]})


def threat_config(args, root: Path):
    """The comparison again for --threat-detectors only, with the l2 and patch budgets."""
    import dataclasses

    cfg = benchmark_config(args, root)
    threats = ([{"threat": "l2", "eps": list(args.l2_eps)}] if args.l2_eps else []) + (
        [{"threat": "patch", "eps": list(args.patch_eps)}] if args.patch_eps else [])
    from pgray.config.base import from_dict
    from pgray.config.experiment import ThreatConfig

    entry = cfg.datasets[0]
    entry = dataclasses.replace(
        entry, patchguard="patchguard" in args.threat_detectors,
        detectors=[d for d in entry.detectors if d.name in args.threat_detectors])
    return dataclasses.replace(cfg, datasets=[entry], threats=[
        from_dict(ThreatConfig, t, "threats") for t in threats])


def certify_config(args, root: Path):
    """The comparison again for --threat-detectors only, certified at --certify (with the
    l2 suite at each radius on the base detectors)."""
    import dataclasses

    from pgray.config import CertifyConfig
    from pgray.config.base import from_dict

    cfg = benchmark_config(args, root)
    entry = cfg.datasets[0]
    entry = dataclasses.replace(
        entry, patchguard="patchguard" in args.threat_detectors,
        detectors=[d for d in entry.detectors if d.name in args.threat_detectors])
    flags = {"samples": args.certify_samples, "eot_samples": args.certify_eot}
    certify = {"radii": list(args.certify)} | {k: v for k, v in flags.items() if v is not None}
    return dataclasses.replace(cfg, datasets=[entry],
                               certify=from_dict(CertifyConfig, certify, "certify"))


def summary(rows: list[dict]) -> str:
    """One line per detector and eps: clean, protocol and worst-case AD and AL, and flags."""
    lines = ["| detector | backbone | eps | AD clean | AD protocol | AD worst | AL clean |"
             " AL protocol | AL worst | flags |", "|---" * 10 + "|"]
    by = {(r["detector"], r["attack"], r["eps"]): r for r in rows}
    for det in dict.fromkeys(r["detector"] for r in rows):
        clean = next(r for r in rows if r["detector"] == det and r["attack"] == "clean")
        for eps in sorted({r["eps"] for r in rows if r["detector"] == det and r["eps"] > 0}):
            p, w = by.get((det, "protocol", eps)), by.get((det, "worst_case", eps))
            if p is None or w is None:
                continue
            flags = sorted(set(p.get("flags", [])) | set(w.get("flags", [])))
            lines.append(
                f"| {det} | {clean.get('backbone_weights', '-')} | {eps:g} |"
                f" {clean['image_auroc']:.3f} | {p['image_auroc']:.3f} | {w['image_auroc']:.3f} |"
                f" {clean['pixel_auroc']:.3f} | {p['pixel_auroc']:.3f} | {w['pixel_auroc']:.3f} |"
                f" {', '.join(flags)} |")
    return "\n".join(lines)


def main() -> int:
    args = parse()
    import torch

    torch.set_num_threads(args.rs.threads)
    args.keep.mkdir(parents=True, exist_ok=True)
    # the comparison's runs go to a store of its own, not the working directory's
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{args.keep.resolve() / 'mlflow.db'}")
    started = time.perf_counter()
    root, train_s = patchguards(args)
    trained_s = time.perf_counter() - started
    from pgray.pipelines.benchmark import run_benchmark

    result = run_benchmark(benchmark_config(args, root), args.keep / "benchmark",
                           progress=True, sequential=True)
    threats = None
    if args.l2_eps or args.patch_eps:
        threats = run_benchmark(threat_config(args, root), args.keep / "benchmark",
                                progress=True, sequential=True)
    certified, certify_s = None, None
    if args.certify:
        certify_started = time.perf_counter()
        certified = run_benchmark(certify_config(args, root), args.keep / "benchmark",
                                  progress=True, sequential=True)
        certify_s = time.perf_counter() - certify_started
    wall = time.perf_counter() - started
    (args.keep / "benchmark" / "rows.json").write_text(
        json.dumps({"rows": result.rows, "train_s": train_s}, default=str, indent=1))
    trained = rs.experiment(args.rs, root, adversarial=True).train  # with the --set overrides
    print(f"\nsynthetic/{args.rs.category}, {args.rs.size} px, {args.rs.n_train} train /"
          f" {args.rs.n_test} test images; PatchGuard ViT depth {args.rs.depth} width"
          f" {args.rs.embed_dim}, {args.rs.epochs} epochs of {trained.attack_method}"
          f"{f'-{trained.attack.steps}' if trained.attack_method == 'pgd' else ''} at training"
          f" eps {trained.attack.eps:g}/255; protocol PGD-{args.protocol_steps};"
          f" suite members {args.suite_steps} steps x {args.suite_restarts} restart(s), Square"
          f" {args.square_queries} queries\n")
    print(summary(result.rows))
    print(f"\n{result.table_text}")
    if threats is not None:
        print(f"\nThreats beyond linf ({', '.join(args.threat_detectors)}):\n")
        print(threats.table_text)
        (args.keep / "benchmark" / "rows.json").write_text(json.dumps(
            {"rows": result.rows + [r for r in threats.rows if r.get("threat") in ("l2",
                                                                                 "patch")],
             "train_s": train_s}, default=str, indent=1))
    if certified is not None:
        rows = [r for r in certified.rows if r.get("attack") == "certified"]
        print(f"\nCertified ({', '.join(args.threat_detectors)}; {certify_s:.0f} s for the"
              f" certifying benchmark, {certified.ran} jobs run):\n")
        print("\n".join(ln for ln in certified.table_text.split("\n### ")
                        if "certified" in ln.split("\n")[0]).strip())
        for r in rows:
            print(f"{r['detector']} radius {r['radius']:g}: certify job {r['wall_s']:.0f} s"
                  f" (its sampling pass and this radius' attacks {r['time_s']:.0f} s)")
    print(f"\nPatchGuard training {trained_s:.0f} s, fits + evaluation {wall - trained_s:.0f} s,"
          f" {wall:.0f} s in all; {result.trained} baselines fitted; tables in"
          f" {result.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
