"""What certification costs: certified images per second on this CPU, and the GPU time the
paper's eight datasets would need (docs/method.md, "Certification").

    python benchmarks/certify_cost.py [--images 8] [--samples 1000] [--radii 0.1 0.25]
                                      [--eot 8] [--suite-steps 10] [--quick]

Measured here, in one process and interleaved (benchmarks/_timing.py), on a tiny PatchGuard
(random weights, 32 px, ViT depth 2) on generated images:
- the base detector's forward, and its image-step (a forward and an input gradient), per image;
- the certification pass (`certify_split`: `samples` noisy forwards per image, sorted, every
  radius' bounds): certified images per second, and its ratio to the base forward;
- one whole certify job (`certified_rows`: the pass, then at each radius the l2 suite on the
  smoothed detector, `eot` draws per step, every candidate judged by `samples` draws), at
  `--suite-steps` (the suite's default is 100 x 2 restarts; shorter here so that it finishes in
  minutes), beside what its passes predict from the two base rates (`CertifyWork`).

Then from the passes alone (nothing runs on a GPU): the certify jobs of benchmarks/paper.yaml
(ViT-S/14 at 224, the default suite and certification, the radii given) in GPU hours on one
H100, with the plan's rates (`pgray.pipelines.plan.speed`: the datasheet peak x a utilisation
that is assumed unless benchmarks/gpu_utilisation.json was measured; the certification pass
and the judging in fp32 at batch 1024, the attacks in bf16 at 256 noisy images per forward),
test images counted where the data is here and otherwise the plan's assumption per category.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import _timing
import torch

PAPER = Path(__file__).resolve().parent / "paper.yaml"
# the batches a certify job runs at on the CPU: SmoothedDetector's noisy images per forward
# (core.certify: 256 on the CPU), and the attacks' noisy images per step (32 // eot images x
# eot draws)
SAMPLE_BATCH, ATTACK_BATCH = 256, 32


def parse():
    p = _timing.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=8, help="test images the CPU run certifies")
    p.add_argument("--samples", type=int, default=1000, help="noise samples per image")
    p.add_argument("--radii", type=float, nargs="+", default=[0.1, 0.25])
    p.add_argument("--eot", type=int, default=8, help="noise draws per attack step")
    p.add_argument("--suite-steps", type=int, default=10,
                   help="steps of each l2 member in the measured job (default suite: 100)")
    p.add_argument("--square-queries", type=int, default=100,
                   help="Square's queries in the measured job (default suite: 1000)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--gpu", default="h100", choices=["h100", "h200"])
    return p.parse_args()


def tiny_split(n_images: int, folder: Path):
    """A tiny PatchGuard with random weights and `n_images` generated test images."""
    from pgray.config import DataConfig, tiny_model_config
    from pgray.core.model import PatchGuard
    from pgray.data.dataset import load_split
    from pgray.data.synthetic import generate

    torch.manual_seed(0)
    model = PatchGuard(tiny_model_config(depth=2)).eval()
    root = generate(folder, seed=0, size=32, n_train=1, n_test=n_images, categories=("disc",))
    return model, load_split(DataConfig(dataset="synthetic", root=str(root), category="disc"),
                             "test", model.img_size)


def measured_rates(args, model, split, device) -> dict[str, float]:
    """Seconds per image: base forward, base image-step, certification pass."""
    from pgray.attacks.objectives import detector_outputs
    from pgray.core.certification import certify_split
    from pgray.core.smoothing import SmoothedDetector

    x = torch.stack([split[i]["image"] for i in range(len(split))]).to(device)
    smoothed = SmoothedDetector(model, sigma=0.25, samples=args.samples, batch_size=SAMPLE_BATCH)
    # each at the batch it runs at in a certify job: noisy copies in batches of SAMPLE_BATCH,
    # attack steps on ATTACK_BATCH // eot images x eot draws
    noisy = x.repeat(SAMPLE_BATCH // len(x) + 1, 1, 1, 1)[:SAMPLE_BATCH]
    attacked = x.repeat(ATTACK_BATCH // len(x) + 1, 1, 1, 1)[:ATTACK_BATCH]

    def forward():
        with torch.no_grad():
            detector_outputs(model, noisy)

    def image_step():
        step = attacked.clone().requires_grad_(True)
        scores, _ = detector_outputs(model, step)
        scores.sum().backward()

    def certify():
        certify_split(smoothed, split, args.radii, confidence=0.999, device=device,
                      progress=False)

    n = len(split)
    times = _timing.interleaved({"forward": forward, "image_step": image_step,
                                 "certify": certify}, device, rounds=args.rounds,
                                per_call={"forward": SAMPLE_BATCH, "image_step": ATTACK_BATCH,
                                          "certify": n})
    return {k: v.median for k, v in times.items()}


def measured_job(args, model, split, device) -> tuple[float, object]:
    """Seconds per image of one certify job, and its passes (`CertifyWork`)."""
    from pgray.config import CertifyConfig, EvalConfig, SuiteConfig
    from pgray.core.certify import certified_rows, certify_work

    eval_cfg = EvalConfig(eps=[], batch_size=32, suite=SuiteConfig(
        steps=args.suite_steps, restarts=1, square_queries=args.square_queries),
        certify=CertifyConfig(radii=list(args.radii), samples=args.samples,
                              eot_samples=args.eot))
    started = time.perf_counter()
    certified_rows(model, split, eval_cfg, [], device=device, progress=False)
    wall = time.perf_counter() - started
    return wall / len(split), certify_work(eval_cfg, len(split))


def paper_categories() -> list[tuple[str, int, bool]]:
    """Per category of benchmarks/paper.yaml: (dataset, test images, counted here)."""
    from pgray.config.benchmark import BenchmarkConfig
    from pgray.pipelines.plan.data import count_images, here_root, plan_targets

    out = []
    for entry, category in plan_targets(BenchmarkConfig.from_yaml(PAPER).entries()):
        _, n_test, counted = count_images(entry.dataset, here_root(entry), category,
                                          dict(entry.options))
        out.append((entry.dataset, n_test, counted))
    return out


def gpu_seconds(args, n_images: int, speed) -> tuple[float, float, object]:
    """GPU seconds of one category's certify job on `n_images` test images (the default
    suite and certification, the radii given): in fp32 (certifying and judging) and in
    bf16 (the attacks), and its passes."""
    from pgray.config import CertifyConfig, EvalConfig
    from pgray.config.passes import FORWARD_PASS_COST
    from pgray.core.certify import certify_work

    work = certify_work(EvalConfig(eps=[], certify=CertifyConfig(radii=list(args.radii))),
                        n_images)
    sampling = (work.certify_forwards + work.judge_forwards) * FORWARD_PASS_COST
    attacks = work.attack_image_steps + work.query_forwards * FORWARD_PASS_COST
    return sampling / speed.rate(1024, "fp32"), attacks / speed.rate(256, "bf16"), work


def paper_rows(args, speed) -> list[dict]:
    """Per dataset: its categories' certify jobs summed."""
    rows: dict[str, dict] = {}
    for dataset, n_test, counted in paper_categories():
        fp32, bf16, work = gpu_seconds(args, n_test, speed)
        row = rows.setdefault(dataset, {"dataset": dataset, "categories": 0, "images": 0,
                                        "counted": "counted", "forwards": 0, "steps": 0,
                                        "fp32_s": 0.0, "bf16_s": 0.0})
        row["categories"] += 1
        row["images"] += n_test
        row["counted"] = row["counted"] if counted else "assumed"
        row["forwards"] += work.forwards
        row["steps"] += work.attack_image_steps
        row["fp32_s"] += fp32
        row["bf16_s"] += bf16
    for row in rows.values():
        row["hours"] = (row["fp32_s"] + row["bf16_s"]) / 3600
    return list(rows.values())


def main() -> int:
    args = parse()
    if args.quick:
        args.images, args.samples, args.rounds = 4, 100, 1
        args.suite_steps, args.square_queries, args.eot = 2, 10, 2
    device = _timing.setup(args)
    print(_timing.header("Certification cost", device))
    with tempfile.TemporaryDirectory() as tmp:
        model, split = tiny_split(args.images, Path(tmp))
        model = model.to(device)
        rates = measured_rates(args, model, split, device)
        job_s, work = measured_job(args, model, split, device)
    n = len(split)
    print(f"\n## Measured: tiny PatchGuard (32 px, depth 2), {n} images, {args.samples}"
          f" samples, radii {', '.join(f'{r:g}' for r in args.radii)}\n")
    print(f"base forward        {1e3 * rates['forward']:9.3f} ms per image (batch"
          f" {SAMPLE_BATCH})")
    print(f"base image-step     {1e3 * rates['image_step']:9.3f} ms per image (batch"
          f" {ATTACK_BATCH}; {rates['image_step'] / rates['forward']:.2f} x the forward)")
    print(f"certification pass  {1e3 * rates['certify']:9.1f} ms per image:"
          f" {1 / rates['certify']:.2f} certified images/s,"
          f" {rates['certify'] / rates['forward']:.0f} x the base forward"
          f" ({args.samples} samples)")
    predicted = (work.forwards * rates["forward"]
                 + work.attack_image_steps * rates["image_step"]) / n
    print(f"whole certify job   {job_s:9.2f} s per image: {1 / job_s:.3f} images/s with the"
          f" bracket (l2 suite at {args.suite_steps} steps x 1 restart, Square"
          f" {args.square_queries} queries, {args.eot} EOT draws);"
          f" {job_s / rates['forward']:,.0f} x the base forward")
    print(f"  its passes per image: {work.forwards / n:,.0f} forwards"
          f" ({work.certify_forwards / n:,.0f} certifying, {work.judge_forwards / n:,.0f}"
          f" judging, {work.query_forwards / n:,.0f} queries) and"
          f" {work.attack_image_steps / n:,.0f} attack image-steps; predicted from the base"
          f" rates {predicted:.2f} s per image (measured / predicted"
          f" {job_s / predicted:.2f})")

    from pgray.pipelines.plan.speed import VITS_GFLOP_PER_IMAGE_STEP, gpu_speed

    speed = gpu_speed(VITS_GFLOP_PER_IMAGE_STEP, args.gpu)
    rows = paper_rows(args, speed)
    total = sum(r["hours"] for r in rows)
    fp32_share = sum(r["fp32_s"] for r in rows) / max(3600 * total, 1e-9)
    print(f"\n## From the passes: benchmarks/paper.yaml's certify jobs on one {args.gpu}"
          f" (ViT-S/14 at 224, default suite 100 steps x 2 restarts and Square 1000 queries,"
          " 1000 samples, 8 EOT draws, radii"
          f" {', '.join(f'{r:g}' for r in args.radii)})\n")
    print(f"- {speed.describe(1024, 'fp32')}\n- {speed.describe(256, 'bf16')}\n")
    shown = [r | {"forwards": f"{r['forwards']:,}", "steps": f"{r['steps']:,}"} for r in rows]
    print(_timing.table(shown, [("dataset", "dataset", ""), ("categories", "categories", ""),
                               ("images", "test images", ""), ("counted", "", ""),
                               ("forwards", "forwards", ""),
                               ("steps", "attack image-steps", ""),
                               ("hours", "GPU hours", ".1f")]))
    print(f"\nall eight: {total:,.1f} GPU hours ({total / 24:.1f} GPU days) for the certify"
          f" jobs alone, {100 * fp32_share:.0f} % of it the fp32 forwards (certifying and"
          " judging); the base detector's l2 suite at each radius comes on top; assumed test"
          " images: the plan's MVTec-sized categories (pgray/pipelines/plan/data.py)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
