"""bf16 autocast and torch.compile for the attack and the training step; bf16 attack strength.

    .venv/bin/python benchmarks/precision.py [--device cuda] [--quick] [--compile-modes default]
    .venv/bin/python benchmarks/precision.py --device cpu --cpu-check    # AUROC check only

Speed rows (CUDA): PGD on ViT-S/14 at 224 (batch 256) and one `pgray.core.step.train_step`
(batch 16, PGD-10), each as fp32 eager, bf16 eager and torch.compile'd at each precision, all
interleaved in one process; time per step and speed-up over fp32 eager (median of per-round
ratios). The first call of a compiled variant (compilation included) is reported apart. On
CPU these rows are skipped with a note unless --allow-cpu (a tiny model; slow, for testing).

AUROC check: a weaker low-precision attack would overstate robustness, so the same attack is
run in fp32 and in bf16 on one model and test subset, and the robust image/pixel AUROCs are
compared (target: within 0.01). The adversarial images of both are scored in fp32 (attack
strength alone); the bf16 run is also scored in bf16 (what evaluation with precision bf16
reports). The model is --checkpoint's, or a tiny PatchGuard adversarially trained for a few
epochs on pgray's synthetic data (generated into a temp dir). Several eps are used, since a
robust AUROC pinned near 0 or near the clean value says little.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import _timing as tm
import torch
from attack_step import make_batch
from train_step import experiment, random_batch

from pgray.attacks.objectives import mask_to_patch_labels
from pgray.attacks.pgd import attack
from pgray.config import AttackConfig, ExperimentConfig, ModelConfig, tiny_model_config
from pgray.config.base import to_dict
from pgray.core.model import PatchGuard
from pgray.core.step import build_optimizer, train_step

SPEED_COLUMNS = [
    ("task", "task", ""), ("model", "model", ""), ("batch", "batch", ""),
    ("variant", "variant", ""), ("first_call_s", "first call s", ".1f"),
    ("ms", "ms/step (median)", ".2f"), ("ms_min", "ms/step (min)", ".2f"),
    ("speedup", "speed-up vs fp32 eager", ".2f"),
    ("img_steps_s", "image-steps/s (attack), images/s (train)", ".1f"),
]
AUROC_COLUMNS = [
    ("eps", "eps/255", "g"), ("steps", "PGD steps", ""),
    ("clean_image", "clean img AUROC", ".4f"),
    ("fp32_image", "fp32 img", ".4f"), ("bf16_image", "bf16 img", ".4f"),
    ("d_image", "|diff| img", ".4f"), ("bf16s_image", "bf16 img (bf16 scoring)", ".4f"),
    ("clean_pixel", "clean px AUROC", ".4f"),
    ("fp32_pixel", "fp32 px", ".4f"), ("bf16_pixel", "bf16 px", ".4f"),
    ("d_pixel", "|diff| px", ".4f"), ("bf16s_pixel", "bf16 px (bf16 scoring)", ".4f"),
]
AUROC_TOL = 0.01


# -- speed -------------------------------------------------------------------------------------


def variant_names(args) -> list[tuple[str, str, str | None]]:
    """(label, precision, compile mode or None)."""
    out = [("fp32 eager", "fp32", None), ("bf16 eager", "bf16", None)]
    for mode in args.compile_modes:
        for precision in args.compile_precisions:
            out.append((f"{precision} compile[{mode}]", precision, mode))
    return out


def compiled_models(model: PatchGuard, modes: list[str],
                    captured: list[int] | tuple = ()) -> dict[str | None, Any]:
    """The eager model, and per mode a copy with the same weights whose blocks are compiled,
    the attention-captured ones (training) excepted (PatchGuard.compile_blocks)."""
    import copy

    models: dict[str | None, Any] = {None: model}
    for mode in modes:
        twin = copy.deepcopy(model)
        twin.compile_blocks(mode, skip_layers=captured)
        models[mode] = twin
    return models


def timed_rows(task: str, model_name: str, batch: int, fns: dict, per_call: float,
               rounds: int, device: torch.device) -> list[dict[str, Any]]:
    """First call of each variant (compilation), one more warm-up round, then interleaved."""
    first = {name: tm.timed(fn, device) for name, fn in fns.items()}
    samples = tm.interleaved(fns, device, rounds=rounds, warmup=1, per_call=per_call)
    base = samples["fp32 eager"]
    rows = []
    for name, s in samples.items():
        rows.append({
            "task": task, "model": model_name, "batch": batch, "variant": name,
            "first_call_s": first[name], "ms": 1e3 * s.median, "ms_min": 1e3 * s.best,
            "speedup": 1.0 / tm.ratio(s, base)[0], "times_s": s.times,
            "img_steps_s": batch / s.median,
        })
    return rows


def attack_rows(args, device: torch.device, name: str, batch: int,
                steps: int) -> list[dict[str, Any]]:
    model_cfg = ModelConfig() if name == "vit_s14" else tiny_model_config()
    torch.manual_seed(0)
    model = PatchGuard(model_cfg).to(device).eval()
    images, labels = make_batch(model, batch, device)
    models = compiled_models(model, args.compile_modes)
    fns = {}
    for label, precision, mode in variant_names(args):
        cfg = AttackConfig(eps=8.0, steps=steps, precision=precision)
        fns[label] = lambda m=models[mode], c=cfg: attack(m, images, labels, c)
    return timed_rows("attack", name, batch, fns, steps, args.rounds, device)


def train_rows(args, device: torch.device, name: str, batch: int,
               pgd_steps: int) -> list[dict[str, Any]]:
    cfg = experiment(name, batch, pgd_steps)
    torch.manual_seed(0)
    model = PatchGuard(cfg.model).to(device)
    optimizer, _ = build_optimizer(model, cfg)
    data = random_batch(model, batch, device)
    models = compiled_models(model, args.compile_modes, cfg.loss.attention_layers)
    optimizers = {mode: optimizer if mode is None else build_optimizer(m, cfg)[0]
                  for mode, m in models.items()}
    fns = {}
    for label, precision, mode in variant_names(args):
        fns[label] = lambda m=models[mode], p=precision, o=optimizers[mode]: train_step(
            m, data, cfg, o, device=device, precision=p)
    return timed_rows("train_step", name, batch, fns, 1, args.rounds, device)


def speed(args, device: torch.device, save: Any) -> list[dict[str, Any]]:
    """The attack rows, then the train-step rows; `save(rows)` after each, so a stage time
    limit loses only the rows not finished yet."""
    gpu = device.type == "cuda"
    steps = args.steps or (10 if gpu else 2)
    name = "vit_s14" if gpu else "tiny"  # ViT-S/14 at 224 on a GPU; tiny on CPU (tests)
    rows = attack_rows(args, device, name, args.batch or (256 if gpu else 16), steps)
    print("# done: attack rows", flush=True)
    save(rows)
    rows += train_rows(args, device, name, args.train_batch or (16 if gpu else 8), steps)
    print("# done: train_step rows", flush=True)
    save(rows)
    return rows


# -- bf16 attack strength ----------------------------------------------------------------------


def tiny_trained(device: torch.device, where: Path, epochs: int) -> tuple[PatchGuard,
                                                                          ExperimentConfig]:
    """A tiny PatchGuard adversarially trained for a few epochs on synthetic 'gear' data.

    'gear' because there the tiny model's pixel AUROC is high after a few epochs (about 0.87
    after 20 here); its image AUROC stays poor, so the pixel rows carry the check.
    """
    from torch.utils.data import DataLoader

    from pgray.core.step import train_epoch
    from pgray.core.training_data import build_datasets
    from pgray.data.synthetic import generate

    root = generate(where / "syn", size=64, n_train=64, n_test=48, categories=("gear",))
    cfg = ExperimentConfig.from_dict({
        "data": {"dataset": "synthetic", "root": str(root), "category": "gear"},
        "model": to_dict(tiny_model_config(img_size=32)),
        "loss": {"attention_layers": [1, 2], "attention_weights": [0.01, 0.05]},
        "train": {"batch_size": 16, "holdout_fraction": 0.0, "epochs": epochs, "lr": 1e-3,
                  "attack": {"eps": 8.0, "steps": 3}},
    })
    torch.manual_seed(0)
    model = PatchGuard(cfg.model).to(device)
    optimizer, scheduler = build_optimizer(model, cfg)
    train_ds, _ = build_datasets(cfg, model.patch_size)
    loader = DataLoader(train_ds, batch_size=16, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    for epoch in range(epochs):
        train_ds.set_epoch(epoch)
        train_epoch(model, loader, cfg, optimizer, device=device, precision="fp32", epoch=epoch)
        scheduler.step()
    return model.eval(), cfg


def test_batches(cfg: ExperimentConfig, limit: int | None, batch: int = 32) -> list[dict]:
    from torch.utils.data import DataLoader, Subset

    from pgray.data.dataset import load_split

    dataset = load_split(cfg.data, "test", cfg.model.img_size)
    if limit is not None and limit < len(dataset):  # spread over the split: both classes
        step = len(dataset) / limit
        dataset = Subset(dataset, [int(i * step) for i in range(limit)])
    return list(DataLoader(dataset, batch_size=batch, shuffle=False))


def scored(model: PatchGuard, batches, attack_cfg: AttackConfig | None, score_precision: str,
           device: torch.device) -> dict[str, float]:
    """Image and pixel AUROC of (attacked) test images, scored at `score_precision`."""
    from pgray.core.device import autocast
    from pgray.core.scoring import EvalOutputs

    scores, labels, maps, masks = [], [], [], []
    for i, batch in enumerate(batches):
        x, mask = batch["image"].to(device), batch["mask"].to(device)
        if attack_cfg is not None:
            x = attack(model, x, mask_to_patch_labels(mask, model.patch_size), attack_cfg,
                       seed=i)
        with torch.no_grad(), autocast(device, score_precision):
            logits = model(x).float()
        scores.append(model.image_scores(logits).cpu())
        maps.append(model.anomaly_maps(logits)[:, 0].cpu())
        labels.append(batch["label"])
        masks.append(mask[:, 0].cpu().to(torch.uint8))
    out = EvalOutputs(torch.cat(scores).numpy(), torch.cat(labels).numpy(),
                      torch.cat(maps).numpy(), torch.cat(masks).numpy()).metrics()
    return {"image": out["image_auroc"], "pixel": out["pixel_auroc"]}


def auroc_rows(model, batches, eps_list, steps: int, device) -> list[dict[str, Any]]:
    clean = scored(model, batches, None, "fp32", device)
    rows = []
    for eps in eps_list:
        base = AttackConfig(eps=eps, steps=steps, precision="fp32")
        fp32 = scored(model, batches, base, "fp32", device)
        low = dataclasses.replace(base, precision="bf16")
        bf16 = scored(model, batches, low, "fp32", device)
        bf16s = scored(model, batches, low, "bf16", device)
        row: dict[str, Any] = {"eps": eps, "steps": steps}
        for key in ("image", "pixel"):
            row |= {f"clean_{key}": clean[key], f"fp32_{key}": fp32[key],
                    f"bf16_{key}": bf16[key], f"bf16s_{key}": bf16s[key],
                    f"d_{key}": abs(bf16[key] - fp32[key])}
        rows.append(row)
        print(f"# done: AUROC eps {eps:g}", flush=True)
    return rows


def auroc_check(args, device: torch.device) -> tuple[list[dict[str, Any]], str]:
    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint:
            from pgray.core.checkpoint import load_checkpoint

            model, cfg, _ = load_checkpoint(args.checkpoint, map_location=device)
            model = model.to(device).eval()
            source = f"checkpoint {args.checkpoint} ({cfg.data.dataset}/{cfg.data.category})"
        else:
            started = time.perf_counter()
            model, cfg = tiny_trained(device, Path(tmp), args.train_epochs)
            source = (f"tiny PatchGuard (img 32, depth 2), {args.train_epochs} epochs of"
                      f" adversarial training on synthetic 'gear' in"
                      f" {time.perf_counter() - started:.0f} s")
        batches = test_batches(cfg, args.subset)
        n = sum(len(b["label"]) for b in batches)
        rows = auroc_rows(model, batches, args.eps, args.auroc_steps, device)
    return rows, f"{source}; {n} test images"


def auroc_verdict(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for row in rows:
        for key in ("image", "pixel"):
            d = row[f"d_{key}"]
            ok = "within" if d <= AUROC_TOL else "NOT within"
            note = ""
            if row[f"fp32_{key}"] < 0.05 or row[f"clean_{key}"] - row[f"fp32_{key}"] < 0.01:
                note = " (uninformative here: robust AUROC near 0 or near clean)"
            out.append(f"eps {row['eps']:g}: bf16 vs fp32 {key} AUROC |diff| = {d:.4f} {ok}"
                       f" {AUROC_TOL}{note}")
    return out


# -- driver ------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = tm.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--cpu-check", action="store_true",
                        help="on CPU: run the bf16-vs-fp32 AUROC check (CPU autocast bf16)")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="run the speed rows on CPU too (tiny model; for testing)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["speed", "auroc"])
    parser.add_argument("--compile-modes", nargs="*", default=["default"],
                        help="torch.compile modes to time (none: eager only)")
    parser.add_argument("--compile-precisions", nargs="+", default=["fp32", "bf16"],
                        choices=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=None, help="attack batch")
    parser.add_argument("--train-batch", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="PGD steps (attack and train)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="evaluate this pgray checkpoint (its dataset must be present)")
    parser.add_argument("--eps", type=float, nargs="+", default=None,
                        help="eps values (1/255) of the AUROC check (default 1 2 4 8)")
    parser.add_argument("--auroc-steps", type=int, default=10)
    parser.add_argument("--subset", type=int, default=None, help="test images (default all)")
    parser.add_argument("--train-epochs", type=int, default=None)
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 5)
    args.eps = args.eps or ([2.0, 8.0] if args.quick else [1.0, 2.0, 4.0, 8.0])
    args.train_epochs = args.train_epochs or (10 if args.quick else 20)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = tm.setup(args)
    print(tm.header("Precision and compilation: bf16 autocast, torch.compile", device))
    on_gpu = device.type == "cuda" or args.allow_cpu
    result: dict[str, Any] = {"device": tm.device_name(device), "speed": [], "auroc": []}
    # The AUROC check first: it is quick, and its rows survive a time limit hit while compiling.
    if "auroc" not in args.skip and (device.type == "cuda" or args.cpu_check):
        result["auroc"], source = auroc_check(args, device)
        print(f"\n## bf16 vs fp32 attack: robust AUROC ({source})")
        print(tm.table(result["auroc"], AUROC_COLUMNS))
        print("\n".join(auroc_verdict(result["auroc"])))
        tm.write_json(args.json, result)
    elif "auroc" not in args.skip:
        print("bf16-vs-fp32 AUROC check: pass --cpu-check to run it on the CPU")
    if "speed" not in args.skip:
        if on_gpu:
            def save(rows):
                result["speed"] = rows
                tm.write_json(args.json, result)

            result["speed"] = speed(args, device, save)
            print("\n## Speed")
            print(tm.table(result["speed"], SPEED_COLUMNS))
            tm.write_json(args.json, result)
        else:
            print("speed rows (bf16 autocast, torch.compile) need a GPU: run with --device cuda")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
