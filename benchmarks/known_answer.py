"""Does the adaptive suite find the worst case where it is known? Detectors whose exact worst
case has a closed form (pgray.detectors.known_answer: a linear score, a top-k mean, a
maximum, a confident linear score) on generated grey images, under linf, l2 and patch.

    python benchmarks/known_answer.py [--size 32] [--per-class 32] [--suite-steps 100]

Prints, per case, the clean image AUROC, the exact worst-case AUROC, the suite's worst case
(as pgray.core.scoring.evaluate_suite computes it, over the suite's members for that threat)
and the gap, which must lie in [0, 0.01]: below 0 an attack left its budget, above 0.01 the
suite missed the worst case. Exits 1 if any gap does not. A few seconds on a CPU.
"""

from __future__ import annotations

import argparse
import sys
import time

TOLERANCE = 0.01


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=32, help="image side in pixels")
    p.add_argument("--per-class", type=int, default=32, help="normal and anomalous images each")
    p.add_argument("--suite-steps", type=int, default=100, help="steps of each member")
    p.add_argument("--suite-restarts", type=int, default=2)
    p.add_argument("--square-queries", type=int, default=1000)
    p.add_argument("--square-images", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def run_case(case, suite) -> dict:
    import torch

    from pgray.attacks.suite import members
    from pgray.config import AttackConfig
    from pgray.core.scoring import evaluate_suite
    from pgray.detectors.known_answer import exact_worst_auroc

    clean, exact = exact_worst_auroc(case.detector, case.split, case.threat, case.eps)
    started = time.perf_counter()
    suite_members = members(suite, AttackConfig(), case.eps, threat=case.threat)
    rows, _ = evaluate_suite(case.detector, case.split, suite_members,
                             batch_size=len(case.split), device=torch.device("cpu"),
                             subset_size=suite.square_images, progress=False)
    worst = rows[-1]
    return {"threat": case.threat, "eps": case.eps, "detector": case.name, "clean": clean,
            "exact": exact, "attained": worst["image_auroc"],
            "members": ",".join(m.name for m in suite_members),
            "time_s": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    import torch

    from pgray.config import SuiteConfig
    from pgray.detectors.known_answer import known_answer_cases

    torch.set_num_threads(args.threads)
    suite = SuiteConfig(steps=args.suite_steps, restarts=args.suite_restarts,
                        square_queries=args.square_queries, square_images=args.square_images)
    print(f"suite adaptive: {args.suite_steps} steps x {args.suite_restarts} restarts, Square"
          f" {args.square_queries} queries on {args.square_images} images;"
          f" {args.per_class} + {args.per_class} images of {args.size} px")
    print(f"{'threat':7s}{'eps':>7s}  {'detector':18s}{'clean':>7s}{'exact':>8s}"
          f"{'attained':>10s}{'gap':>8s}  {'ok':3s}{'time':>7s}  members")
    failed = 0
    for case in known_answer_cases(args.size, args.per_class, args.seed):
        r = run_case(case, suite)
        gap = r["attained"] - r["exact"]
        ok = -1e-9 <= gap <= TOLERANCE
        failed += not ok
        print(f"{r['threat']:7s}{r['eps']:7g}  {r['detector']:18s}{r['clean']:7.4f}"
              f"{r['exact']:8.4f}{r['attained']:10.4f}{gap:+8.4f}  {'ok' if ok else 'NO':3s}"
              f"{r['time_s']:6.1f}s  {r['members']}", flush=True)
    print(f"{'all' if not failed else failed} case(s) {'within' if not failed else 'outside'}"
          f" [0, {TOLERANCE}] of the exact worst case")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
