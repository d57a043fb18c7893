"""Cost of one adversarial training step against the floor of its passes; data feeding.

    .venv/bin/python benchmarks/train_step.py [--device cpu|cuda] [--quick]

Part 1, step vs floor. `pgray.core.step.train_step` (four-term PatchGuard step: PGD-k on the
normal batch and on the pseudo-anomaly batch, one forward of the concatenated 4B batch with
attention capture, loss, one backward, AdamW) is interleaved, in one process, with its passes
timed separately on the same model and batch:
  attack_x, attack_xt  k x (forward + input gradient), weights frozen once, eval mode
  fwd_bwd_4B           forward of the 4B batch with attention capture + PatchGuard loss + backward
  optimizer            AdamW step
floor = attack_x + attack_xt + fwd_bwd_4B (the passes; target step / floor <= 1.15);
floor+opt adds the optimizer step, which no step can skip either.

Part 2, data. The pseudo-anomaly generator's images/s on one core at 224 (one process, one
thread): generator alone, and whole dataset items (PNG decode + resize + generator). Then a
DataLoader with N workers feeds train_step on a synthetic 224 dataset: the time blocked in
next(loader) is compared with the step time (first batch, which includes worker start-up,
reported apart).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import _timing as tm
import numpy as np
import torch
from attack_step import floor_loop

from pgray.config import ExperimentConfig, ModelConfig, tiny_model_config
from pgray.config.base import to_dict
from pgray.core.device import autocast
from pgray.core.losses import patchguard_loss
from pgray.core.model import PatchGuard
from pgray.core.step import build_optimizer, train_step

STEP_COLUMNS = [
    ("model", "model", ""), ("precision", "prec", ""), ("batch", "B", ""),
    ("pgd_steps", "PGD-k", ""), ("variant", "variant", ""),
    ("ms", "ms (median)", ".1f"), ("ms_min", "ms (min)", ".1f"),
    ("vs_floor", "step/floor (paired)", ".3f"), ("vs_floor_min", "step/floor (min)", ".3f"),
    ("vs_floor_opt", "step/(floor+opt)", ".3f"),
]
LOADER_COLUMNS = [
    ("model", "model", ""), ("precision", "prec", ""), ("batch", "B", ""),
    ("pgd_steps", "PGD-k", ""), ("workers", "workers", ""), ("steps", "steps", ""),
    ("first_wait_ms", "1st batch wait ms", ".0f"), ("step_ms", "step ms (median)", ".1f"),
    ("wait_ms_median", "wait ms (median)", ".2f"), ("wait_ms_max", "wait ms (max)", ".2f"),
    ("wait_frac", "wait / step time", ".4f"), ("waits", "steps that waited > 1 ms", ""),
    ("transfer_ms", "transfer-only wait ms (median)", ".2f"),
    ("demand", "pairs/s needed", ".1f"), ("supply", "pairs/s supplied (est.)", ".1f"),
]
TARGET = 1.15


def model_config(name: str) -> ModelConfig:
    if name == "tiny":
        return tiny_model_config()
    if name == "tiny224":  # a fast step on 224 inputs: the hardest case for the data loader
        return tiny_model_config(img_size=224, patch_size=14)
    return ModelConfig()  # ViT-S/14 at 224


def experiment(name: str, batch: int, pgd_steps: int, root: str = "") -> ExperimentConfig:
    model = model_config(name)
    depth = int(model.backbone_kwargs.get("depth", 12))
    layers = [6, 9, 12] if depth == 12 else list(range(1, depth + 1))[-2:]
    weights = [0.005, 0.01, 0.05][-len(layers):]
    return ExperimentConfig.from_dict({
        "data": {"dataset": "synthetic", "root": root, "category": "disc"},
        "model": to_dict(model),
        "loss": {"attention_layers": layers, "attention_weights": weights},
        "train": {"batch_size": batch, "holdout_fraction": 0.0, "epochs": 1,
                  "attack": {"eps": 8.0, "steps": pgd_steps}},
    })


def random_batch(model: PatchGuard, batch: int, device: torch.device, seed: int = 0):
    """Normal images, pseudo-anomaly images and their patch labels (one 3 x 3 patch block)."""
    gen = torch.Generator().manual_seed(seed)
    size = model.cfg.img_size
    gh, gw = model.grid
    labels = torch.zeros(batch, gh, gw)
    for i in range(batch):
        y, x = torch.randint(0, max(1, gh - 3), (2,), generator=gen).tolist()
        labels[i, y : y + 3, x : x + 3] = 1.0
    return {
        "image": torch.rand(batch, 3, size, size, generator=gen).to(device),
        "pseudo_image": torch.rand(batch, 3, size, size, generator=gen).to(device),
        "pseudo_patch_labels": labels.flatten(1).to(device),
    }


def fwd_bwd(model: PatchGuard, images: torch.Tensor, labels: torch.Tensor,
            cfg: ExperimentConfig, precision: str) -> None:
    """One training forward of the concatenated batch with attention capture, loss, backward."""
    model.train()
    with model.capture_attention(cfg.loss.attention_layers) as maps, \
            autocast(images.device, precision):
        logits = model(images)
    maps = [m.float() for m in maps]
    loss, _ = patchguard_loss(logits.float(), labels, maps, cfg.loss, model.num_prefix_tokens)
    model.zero_grad(set_to_none=True)
    (loss * 4).backward()


def step_variants(model, batch, cfg: ExperimentConfig, optimizer, precision: str):
    device = batch["image"].device
    k = cfg.train.attack.steps
    x, xt, yt = batch["image"], batch["pseudo_image"], batch["pseudo_patch_labels"]
    y0 = torch.zeros_like(yt)
    images4 = torch.cat([x, x, xt, xt])  # the attacked copies cost the same as clean ones
    labels4 = torch.cat([y0, y0, yt, yt])
    return {
        "train_step": lambda: train_step(model, batch, cfg, optimizer, device=device,
                                         precision=precision),
        "attack_x": lambda: floor_loop(model, x, y0, k, precision),
        "attack_xt": lambda: floor_loop(model, xt, yt, k, precision),
        "fwd_bwd_4B": lambda: fwd_bwd(model, images4, labels4, cfg, precision),
        "optimizer": optimizer.step,
    }


def summed(samples: dict[str, tm.Samples], names: list[str]) -> tm.Samples:
    """Per-round sums of some variants' times (a floor made of separately timed passes)."""
    return tm.Samples([sum(t) for t in zip(*(samples[n].times for n in names))])


def measure_step(name: str, batch: int, pgd_steps: int, rounds: int, precision: str,
                 device: torch.device) -> list[dict[str, Any]]:
    cfg = experiment(name, batch, pgd_steps)
    torch.manual_seed(0)
    model = PatchGuard(cfg.model).to(device)
    optimizer, _ = build_optimizer(model, cfg)
    data = random_batch(model, batch, device)
    samples = tm.interleaved(step_variants(model, data, cfg, optimizer, precision), device,
                             rounds=rounds, warmup=1)
    samples["floor"] = summed(samples, ["attack_x", "attack_xt", "fwd_bwd_4B"])
    samples["floor+opt"] = summed(samples, ["attack_x", "attack_xt", "fwd_bwd_4B", "optimizer"])
    base = {"model": name, "precision": precision, "batch": batch, "pgd_steps": pgd_steps}
    rows = []
    for variant, s in samples.items():
        row = base | {"variant": variant, "ms": 1e3 * s.median, "ms_min": 1e3 * s.best,
                      "times_s": s.times}
        if variant == "train_step":
            row["vs_floor"], row["vs_floor_min"] = tm.ratio(s, samples["floor"])
            row["vs_floor_opt"] = tm.ratio(s, samples["floor+opt"])[0]
        rows.append(row)
    return rows


# -- data --------------------------------------------------------------------------------------


def make_dataset_root(size: int, n_train: int, where: Path) -> Path:
    from pgray.data.synthetic import generate

    return generate(where / f"syn{size}", size=size, n_train=n_train, n_test=2,
                    categories=("disc",))


def per_core_rates(root: Path, size: int, seconds: float) -> dict[str, float]:
    """Images/s of the generator alone and of whole dataset items, on one thread."""
    import cv2

    cv2.setNumThreads(1)  # in this process only: DataLoader workers are forked later
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _rates(root, size, seconds)
    finally:
        torch.set_num_threads(threads)


def _rates(root: Path, size: int, seconds: float) -> dict[str, float]:
    from pgray.core.training_data import build_datasets

    cfg = experiment("vit_s14" if size == 224 else "tiny", 1, 1, str(root))
    dataset, _ = build_datasets(cfg, patch_size=14 if size % 14 == 0 else 8)
    items = [dataset.base[i] for i in dataset.indices[:8]]
    gen = dataset.generator
    rng = np.random.default_rng(0)

    def generator_only(i: int) -> None:
        item = items[i % len(items)]
        gen(item["image"], item["foreground"][0], rng)

    return {"generator": rate(generator_only, seconds),
            "dataset_item": rate(lambda i: dataset[i % len(dataset)], seconds)}


def rate(fn, seconds: float, chunk: int = 10) -> float:
    """Calls per second: median over chunks of `chunk` calls, for at least `seconds`."""
    for i in range(3):
        fn(i)
    times, start, n = [], time.perf_counter(), 0
    while time.perf_counter() - start < seconds or len(times) < 3:
        t0 = time.perf_counter()
        for _ in range(chunk):
            fn(n)
            n += 1
        times.append(time.perf_counter() - t0)
    return chunk / statistics.median(times)


class _FixedItems(torch.utils.data.Dataset):
    """Every index returns a copy of the same ready item: a loader whose items cost nothing,
    so the time blocked in next() is the transfer from the worker alone."""

    def __init__(self, item: dict[str, Any], length: int) -> None:
        self.item, self.length = item, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {k: v.clone() if torch.is_tensor(v) else v for k, v in self.item.items()}


def _loader(dataset, batch: int, workers: int, steps: int, device: torch.device):
    from torch.utils.data import DataLoader, RandomSampler

    sampler = RandomSampler(dataset, replacement=True, num_samples=(steps + 1) * batch,
                            generator=torch.Generator().manual_seed(0))
    return DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers,
                      pin_memory=device.type == "cuda", drop_last=True,
                      prefetch_factor=2 if workers else None)


def _feed(loader, work, device: torch.device) -> tuple[list[float], list[float]]:
    """Seconds blocked in next(loader) and seconds in work(batch), per batch."""
    waits, works = [], []
    it = iter(loader)
    while True:
        t0 = time.perf_counter()  # the device is idle here: tm.timed synced after the work
        data = next(it, None)
        if data is None:
            return waits, works
        waits.append(time.perf_counter() - t0)
        works.append(tm.timed(lambda d=data: work(d), device))


def loader_check(name: str, root: Path, batch: int, pgd_steps: int, workers: int, steps: int,
                 precision: str, device: torch.device) -> dict[str, Any]:
    """Feed train_step from a DataLoader; time blocked in next() vs time in the step.

    A second pass with free items (a copy of one real item) and a sleep as long as the median
    step gives the transfer cost of a batch: waits at that level are not the generator's.
    """
    from pgray.core.training_data import build_datasets

    cfg = experiment(name, batch, pgd_steps, str(root))
    torch.manual_seed(0)
    model = PatchGuard(cfg.model).to(device)
    optimizer, _ = build_optimizer(model, cfg)
    dataset, _ = build_datasets(cfg, model.patch_size)

    def step(data) -> None:
        train_step(model, data, cfg, optimizer, device=device, precision=precision)

    waits, runs = _feed(_loader(dataset, batch, workers, steps, device), step, device)
    step_s = statistics.median(runs[1:])
    free = _FixedItems(dataset[0], len(dataset))
    base, _ = _feed(_loader(free, batch, workers, steps, device),
                    lambda _d: time.sleep(step_s), device)
    rest, run = waits[1:], runs[1:]
    return {
        "model": name, "precision": precision, "batch": batch, "pgd_steps": pgd_steps,
        "workers": workers, "steps": steps, "first_wait_ms": 1e3 * waits[0],
        "step_ms": 1e3 * step_s, "wait_ms_median": 1e3 * statistics.median(rest),
        "wait_ms_max": 1e3 * max(rest), "wait_frac": sum(rest) / sum(run),
        "waits": sum(w > 1e-3 for w in rest),
        "transfer_ms": 1e3 * statistics.median(base[1:]),
    }


# -- driver ------------------------------------------------------------------------------------


def plan(args, device: torch.device) -> dict[str, Any]:
    gpu = device.type == "cuda"
    q = args.quick
    return {
        # a quick CPU run (gpu_check.sh --smoke) times the tiny step only: a ViT-S step takes
        # seconds there and proves nothing about the script
        "step_cases": [("tiny", 64 if gpu else 8, 10, 3 if q else 9)]
        + ([] if q and not gpu else [("vit_s14", 16 if gpu else 2, 10 if gpu else 2,
                                      2 if q else (5 if gpu else 3))]),
        # On CPU a ViT-S step takes seconds: any loader keeps up, so only the fast tiny step
        # at 224 (the hardest case for the loader) is checked there.
        "loader_cases": [("tiny224", 64 if gpu else 8, 10 if gpu else 2)]
        + ([("vit_s14", 16, 10)] if gpu else []),
        "loader_steps": 4 if q else (30 if gpu else 8),
        "n_train": 64,  # items are drawn with replacement: any number of steps fits
        "seconds": 1.0 if q else 2.0,
    }


def parse_args(argv=None):
    parser = tm.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=None,
                        help="default: fp32 and bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--workers", type=int, nargs="+", default=None,
                        help="DataLoader workers to try (default: 1 on CPU, 4 and 8 on CUDA)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["step", "rates", "loader"])
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where to write the synthetic 224 dataset (default: a temp dir)")
    return parser.parse_args(argv)


def run_steps(p, precisions, device, save) -> list[dict[str, Any]]:
    rows = []
    for name, batch, k, rounds in p["step_cases"]:
        for precision in precisions:
            rows += measure_step(name, batch, k, rounds, precision, device)
            save(step=rows)
            print(f"# done: step {name} {precision}", flush=True)
    return rows


def run_data(p, args, precisions, device, where: Path, save) -> tuple[dict, list]:
    root = make_dataset_root(224, p["n_train"], where)
    rates = {} if "rates" in args.skip else per_core_rates(root, 224, p["seconds"])
    rows = []
    save(rates=rates)
    if "loader" not in args.skip:
        workers = args.workers or ([4, 8] if device.type == "cuda" else [1])
        for name, batch, k in p["loader_cases"]:
            for n in workers:
                row = loader_check(name, root, batch, k, n, p["loader_steps"], precisions[-1],
                                   device)
                row["demand"] = batch / (row["step_ms"] / 1e3)
                if rates:  # workers x one core's rate: an upper bound when cores are shared
                    row["supply"] = n * rates["dataset_item"]
                rows.append(row)
                save(loader=rows)
                print(f"# done: loader {name} workers={n}", flush=True)
    return rates, rows


def report(step_rows, rates, loader_rows) -> None:
    if step_rows:
        print("\n## Training step vs the floor of its passes")
        print(tm.table(step_rows, STEP_COLUMNS))
        for row in step_rows:
            if row["variant"] == "train_step":
                ok = "meets" if row["vs_floor"] <= TARGET else "MISSES"
                print(f"{row['model']} {row['precision']}: step / floor = {row['vs_floor']:.3f}"
                      f" (paired median; {row['vs_floor_min']:.3f} from minimums) {ok} target"
                      f" <= {TARGET}")
    if rates:
        print("\n## Pseudo-anomaly generation at 224, one process, one thread (per core)")
        print(f"generator alone: {rates['generator']:.1f} images/s;"
              f" dataset item (PNG decode + Lanczos resize + generator):"
              f" {rates['dataset_item']:.1f} pairs/s")
    if loader_rows:
        print("\n## DataLoader feeding train_step (synthetic 'disc' at 224)")
        print(tm.table(loader_rows, LOADER_COLUMNS))


def main(argv=None) -> int:
    args = parse_args(argv)
    device = tm.setup(args)
    precisions = args.precisions or (["fp32", "bf16"] if device.type == "cuda" else ["fp32"])
    p = plan(args, device)
    print(tm.header("Training step: pgray.core.step.train_step vs its floor; data feeding", device))
    # the rows so far, rewritten after every case: a stage cut at its limit keeps them
    result = {"device": tm.device_name(device), "tf32": tm.tf32_state(), "step": [],
              "rates": {}, "loader": []}

    def save(**part) -> None:
        result.update(part)
        tm.write_json(args.json, result)

    step_rows = [] if "step" in args.skip else run_steps(p, precisions, device, save)
    rates, loader_rows = {}, []
    if not {"rates", "loader"} <= set(args.skip):
        with tempfile.TemporaryDirectory() as tmp:
            where = args.data_dir or Path(tmp)
            rates, loader_rows = run_data(p, args, precisions, device, where, save)
    report(step_rows, rates, loader_rows)
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
