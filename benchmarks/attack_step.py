"""Cost of one PGD step: pgray's attack against the raw floor and torchattacks, same model/batch.

    .venv/bin/python benchmarks/attack_step.py [--device cpu|cuda] [--quick]

Per model (a tiny ViT, and ViT-S/14 at 224 built without pretrained weights: timing only) and
precision, three variants run interleaved in one process, each call doing `steps` PGD steps:
  pgray         pgray.attacks.attack (reference PGD: no random start, last iterate)
  floor         forward + torch.autograd.grad to the input in a loop, weights frozen once
                outside it, same objective: no PGD step can cost less
  torchattacks  torchattacks 3.5.1 PGD through pgray's adapter (same objective, same steps)
Targets: pgray / floor <= 1.10 and pgray / torchattacks <= 1.0 at the same precision.
image-steps/s = batch / (seconds per step). FLOPs per image-step are counted once with
torch's FlopCounterMode on one floor step (matmul/conv/attention FLOPs); on CUDA the achieved
fraction of --peak-tflops is printed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _timing as tm
import torch

from pgray.attacks.pgd import attack
from pgray.attacks.torchattacks_adapter import torchattacks_attack
from pgray.attacks.trajectory import frozen
from pgray.config import AttackConfig, ModelConfig, tiny_model_config
from pgray.core.model import PatchGuard

COLUMNS = [
    ("model", "model", ""),
    ("precision", "prec", ""),
    ("batch", "batch", ""),
    ("steps", "steps", ""),
    ("variant", "variant", ""),
    ("ms_step", "ms/step (median)", ".2f"),
    ("ms_step_min", "ms/step (min)", ".2f"),
    ("img_steps_s", "image-steps/s", ".1f"),
    ("vs_floor", "/floor (paired)", ".3f"),
    ("vs_floor_min", "/floor (min)", ".3f"),
    ("vs_torchattacks", "/torchattacks (paired)", ".3f"),
    ("tflops", "TFLOP/s", ".3f"),
    ("peak_frac", "of peak", ".3f"),
]
TARGETS = {"vs_floor": 1.10, "vs_torchattacks": 1.0}


@dataclasses.dataclass
class Case:
    name: str
    cfg: ModelConfig
    batch: int
    steps: int
    rounds: int


def model_configs() -> dict[str, ModelConfig]:
    return {"tiny": tiny_model_config(), "vit_s14": ModelConfig()}  # ModelConfig(): ViT-S/14 224


def cases(args: Any, device: torch.device) -> list[Case]:
    gpu = device.type == "cuda"
    sizes = {
        "tiny": (args.batch_tiny or (256 if gpu else 16), 10, 3 if args.quick else 15),
        "vit_s14": (args.batch_vits or (256 if gpu else 4), 10 if gpu else 2,
                    2 if args.quick else (7 if gpu else 11)),
    }
    if args.steps:
        sizes = {k: (b, args.steps, r) for k, (b, _, r) in sizes.items()}
    configs = model_configs()
    return [Case(name, configs[name], *sizes[name]) for name in args.models]


def make_batch(model: PatchGuard, batch: int, device: torch.device, seed: int = 0):
    """Random images and patch labels: the first half normal, the rest with one anomalous
    block of patches (the objective then has both normal and anomalous terms)."""
    gen = torch.Generator().manual_seed(seed)
    size = model.cfg.img_size
    images = torch.rand(batch, 3, size, size, generator=gen)
    gh, gw = model.grid
    labels = torch.zeros(batch, gh, gw)
    for i in range(batch // 2, batch):
        y, x = torch.randint(0, max(1, gh - 2), (2,), generator=gen).tolist()
        labels[i, y : y + 2, x : x + 2] = 1.0
    return images.to(device), labels.flatten(1).to(device)


def cast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)


def floor_step(model: torch.nn.Module, x: torch.Tensor, weights: torch.Tensor,
               precision: str) -> torch.Tensor:
    """The irreducible work of one step: forward, objective, gradient to the input."""
    with cast(x.device, precision):
        logits = model(x)
    obj = (logits.float() * weights).sum()
    return torch.autograd.grad(obj, x)[0]


def floor_loop(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
               steps: int, precision: str) -> torch.Tensor:
    """`steps` floor steps on one leaf input; eval mode and frozen weights set once, outside."""
    weights = objective_weights(labels)
    x = images.clone().requires_grad_(True)
    training = model.training
    model.eval()
    with frozen(model), torch.enable_grad():
        for _ in range(steps):
            grad = floor_step(model, x, weights, precision)
    model.train(training)
    return grad


def objective_weights(labels: torch.Tensor) -> torch.Tensor:
    """mean(normal logits) - mean(anomalous logits) as one weight per patch."""
    normal = 1.0 - labels
    return normal / (normal.sum(1, keepdim=True) + 1e-8) - labels / (labels.sum(1, keepdim=True)
                                                                     + 1e-8)


def variants(model, images, labels, steps: int, precision: str) -> dict[str, Callable[[], Any]]:
    cfg = AttackConfig(eps=8.0, steps=steps, precision=precision)
    lib = dataclasses.replace(cfg, library="torchattacks")
    return {
        "pgray": lambda: attack(model, images, labels, cfg),
        "floor": lambda: floor_loop(model, images, labels, steps, precision),
        "torchattacks": lambda: torchattacks_attack(model, images, labels, lib),
    }


def step_flops(model, images, labels, precision: str) -> int:
    """FLOPs of one floor step (forward + input gradient) for the whole batch.

    Counted with .backward() into x.grad: FlopCounterMode's module hooks do not support
    autograd.grad on a leaf; with frozen weights both compute the same input gradient.
    """
    weights = objective_weights(labels)

    def one_step() -> None:
        x = images.clone().requires_grad_(True)
        with frozen(model), torch.enable_grad(), cast(x.device, precision):
            logits = model(x)
            (logits.float() * weights).sum().backward()

    return tm.flops_per_call(one_step)


def measure(case: Case, precision: str, device: torch.device, peak_tflops: float | None):
    torch.manual_seed(0)
    model = PatchGuard(case.cfg).to(device).eval()
    images, labels = make_batch(model, case.batch, device)
    fns = variants(model, images, labels, case.steps, precision)
    samples = tm.interleaved(fns, device, rounds=case.rounds, warmup=1, per_call=case.steps)
    flops = step_flops(model, images, labels, precision)
    rows = []
    for name, s in samples.items():
        row = {
            "model": case.name, "precision": precision, "batch": case.batch,
            "steps": case.steps, "variant": name, "ms_step": 1e3 * s.median,
            "ms_step_min": 1e3 * s.best, "img_steps_s": case.batch / s.median,
            "tflops": flops / s.median / 1e12, "flops_per_image_step": flops / case.batch,
            "times_s": s.times,
        }
        if peak_tflops:
            row["peak_frac"] = row["tflops"] / peak_tflops
        if name != "floor":
            row["vs_floor"], row["vs_floor_min"] = tm.ratio(s, samples["floor"])
        if name == "pgray":
            row["vs_torchattacks"], row["vs_torchattacks_min"] = tm.ratio(
                s, samples["torchattacks"]
            )
        rows.append(row)
    return rows


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for row in rows:
        if row["variant"] != "pgray":
            continue
        for key, target in TARGETS.items():
            value = row[key]
            ok = "meets" if value <= target else "MISSES"
            out.append(f"{row['model']} {row['precision']}: pgray / {key[3:]} = {value:.3f}"
                       f" (median of paired rounds; {row[key + '_min']:.3f} from minimums) {ok} target <= {target}")
    return out


def summarize(folder: Path, peak: float) -> list[str]:
    """ViT-S/14 PGD throughput and fraction of peak from a gpu_check folder's JSON files."""
    import json

    lines = [f"peak assumed: {peak:g} TFLOP/s (dense bf16)"]
    att = json.loads((folder / "attack_step.json").read_text())
    flops = {}
    for r in att["rows"]:
        if r["model"] == "vit_s14" and r["variant"] == "pgray":
            flops[r["precision"]] = r["flops_per_image_step"]
            lines.append(_throughput_line(f"pgray PGD, {r['precision']} eager, batch"
                                          f" {r['batch']}", r["img_steps_s"], flops[r["precision"]],
                                          peak))
    prec_file = folder / "precision.json"
    if prec_file.exists() and flops:
        for r in json.loads(prec_file.read_text())["speed"]:
            if r["task"] == "attack" and r["model"] == "vit_s14":
                f = flops.get(r["variant"].split()[0], next(iter(flops.values())))
                lines.append(_throughput_line(f"pgray PGD, {r['variant']}, batch {r['batch']}",
                                              r["img_steps_s"], f, peak))
    return lines


def _throughput_line(what: str, rate: float, flops: float, peak: float) -> str:
    achieved = rate * flops / 1e12
    return (f"ViT-S/14 224, {what}: {rate:.0f} image-steps/s x {flops / 1e9:.1f} GFLOP ="
            f" {achieved:.1f} TFLOP/s = {achieved / peak:.1%} of peak")


def parse_args(argv=None):
    parser = tm.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(model_configs()),
                        default=list(model_configs()))
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=None,
                        help="default: fp32 and bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--batch-tiny", type=int, default=None)
    parser.add_argument("--batch-vits", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="PGD steps per timed call")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="device peak for the 'of peak' column (default on CUDA: 989,"
                        " H100/H200 dense bf16; fp32 rows are compared with the same number)")
    parser.add_argument("--summarize", type=Path, default=None, metavar="DIR",
                        help="only print the ViT-S throughput summary of a gpu_check folder")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.summarize:
        print("\n".join(summarize(args.summarize, args.peak_tflops or 989.0)))
        return 0
    device = tm.setup(args)
    precisions = args.precisions or (["fp32", "bf16"] if device.type == "cuda" else ["fp32"])
    peak = args.peak_tflops or (989.0 if device.type == "cuda" else None)
    print(tm.header("PGD step cost: pgray vs floor vs torchattacks", device))
    if peak:
        print(f"# peak assumed: {peak:g} TFLOP/s (dense bf16; pass --peak-tflops for another"
              " device); FLOPs from FlopCounterMode on one forward + input-gradient")
    rows = []
    for case in cases(args, device):
        for precision in precisions:
            rows += measure(case, precision, device, peak)
            # after every case: a stage cut at its time limit keeps the rows it had
            tm.write_json(args.json, {"device": tm.device_name(device), "peak_tflops": peak,
                                      "tf32": tm.tf32_state(), "rows": rows})
            print(f"# done: {case.name} {precision}", flush=True)
    print(tm.table(rows, COLUMNS))
    for line in verdicts(rows):
        print(line)
    vits = [r for r in rows if r["model"] == "vit_s14" and r["variant"] == "pgray"]
    for r in vits:
        print(f"ViT-S/14 224 {r['precision']}: {r['img_steps_s']:.1f} image-steps/s,"
              f" {r['flops_per_image_step'] / 1e9:.1f} GFLOP per image-step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
