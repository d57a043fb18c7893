"""The training loop of one category, independent of where it runs.

`fit` is called directly by `python -m pgray.train --workers 1` and from every Ray Train worker;
the caller supplies a `FitContext` with its device, rank, model wrapper (DDP) and report hook.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pgray.config import ExperimentConfig
from pgray.errors import DatasetError

# save(path, more_extra) writes a full training checkpoint; None on epochs without one
SaveFn = Callable[[Any, dict[str, Any]], Any]
ReportFn = Callable[[int, dict[str, float], SaveFn | None], None]


@dataclass
class FitContext:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world_size: int = 1
    prepare_model: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m
    # report(epoch, metrics, save): save(path, more_extra) writes the checkpoint on demand
    report: ReportFn = lambda epoch, metrics, save: None
    resume_state: dict[str, Any] | None = None
    progress: bool = True
    # called after each training step (fault injection in tests, custom monitoring)
    step_hook: Callable[[int, int], None] | None = None
    # extra per-epoch metrics computed from the model (e.g. a cross-rank parameter check)
    epoch_hook: Callable[[torch.nn.Module], dict[str, float]] | None = None


def split_holdout(samples: list, fraction: float, seed: int) -> tuple[list, list]:
    """Deterministically keep `fraction` of the normal train images out for the proxy metric."""
    normals = [s for s in samples if s.label == 0]
    if not normals:
        raise DatasetError("the train split has no normal images")
    n_hold = 0 if fraction <= 0 else max(2, int(round(len(normals) * fraction)))
    if n_hold >= len(normals):
        raise DatasetError(
            f"the train split has {len(normals)} normal images: too few to hold out {n_hold}"
            " for the proxy metric (lower train.holdout_fraction)"
        )
    order = np.random.default_rng(seed).permutation(len(normals))
    hold = sorted(order[:n_hold].tolist())
    keep = sorted(order[n_hold:].tolist())
    return [normals[i] for i in keep], [normals[i] for i in hold]


def discover(data_cfg, split: str) -> list:
    """Samples of one split of the configured category (DatasetError naming what is wrong)."""
    from pgray.data.dataset import resolve_root
    from pgray.data.registry import get_layout

    layout = get_layout(data_cfg.dataset)
    options = {"visa_split": data_cfg.visa_split, **data_cfg.options}
    return layout.discover(resolve_root(data_cfg), data_cfg.category, split, options)


def build_datasets(cfg: ExperimentConfig, patch_size: int, rank: int = 0):
    """Train and held-out pseudo-anomaly datasets (held-out uses another seed)."""
    from pgray.data.dataset import ADDataset
    from pgray.pseudo import PseudoAnomalyDataset, PseudoAnomalyGenerator

    samples = discover(cfg.data, "train")
    train_samples, hold_samples = split_holdout(
        samples, cfg.train.holdout_fraction, cfg.train.seed
    )
    size, rule = cfg.model.img_size, cfg.data.mask_resize
    generator = PseudoAnomalyGenerator(cfg.pseudo, img_size=size, patch_size=patch_size)
    train = PseudoAnomalyDataset(
        ADDataset(train_samples, img_size=size, mask_resize=rule), generator,
        seed=cfg.train.seed, rank=rank,
    )
    holdout = None
    if hold_samples:
        # Each held-out normal appears proxy_repeats times, each time with another anomaly.
        holdout = PseudoAnomalyDataset(
            ADDataset(hold_samples * cfg.train.proxy_repeats, img_size=size, mask_resize=rule),
            generator,
            seed=cfg.train.seed + 7_919,
        )
    return train, holdout


def _loader(dataset, batch_size: int, *, shuffle: bool, cfg: ExperimentConfig, rank: int,
            world_size: int, device: torch.device):
    from torch.utils.data import DataLoader, DistributedSampler

    sampler = None
    if world_size > 1 and shuffle:
        sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=cfg.train.seed
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=cfg.train.loader_workers,
        pin_memory=device.type == "cuda",
        drop_last=False,
        generator=torch.Generator().manual_seed(cfg.train.seed),
    )


def per_worker_batch(global_batch: int, world_size: int) -> int:
    return max(1, -(-global_batch // world_size))


def fit(cfg: ExperimentConfig, ctx: FitContext) -> dict[str, float]:
    """Train for cfg.train.epochs (resuming from ctx.resume_state); returns the last metrics."""
    from pgray.checkpoint import save_checkpoint
    from pgray.engine import build_optimizer, proxy_metrics, resolve_precision, train_epoch
    from pgray.model import PatchGuard

    torch.manual_seed(cfg.train.seed)
    device = ctx.device
    precision = resolve_precision(cfg.train.precision, device)
    model = PatchGuard(cfg.model).to(device)
    optimizer, scheduler = build_optimizer(model, cfg)
    start_epoch = 0
    if ctx.resume_state is not None:
        start_epoch = restore_state(ctx.resume_state, model, optimizer, scheduler)
    forward_model = ctx.prepare_model(model)

    train_ds, holdout_ds = build_datasets(cfg, model.patch_size, ctx.rank)
    batch = per_worker_batch(cfg.train.batch_size, ctx.world_size)
    train_loader = _loader(train_ds, batch, shuffle=True, cfg=cfg, rank=ctx.rank,
                           world_size=ctx.world_size, device=device)
    holdout_loader = None
    if holdout_ds is not None:
        holdout_loader = _loader(holdout_ds, cfg.eval.batch_size, shuffle=False, cfg=cfg,
                                 rank=0, world_size=1, device=device)

    best = SelectedWeights.resume(cfg.train.select_metric, ctx.resume_state)
    metrics: dict[str, float] = {}
    for epoch in range(start_epoch, cfg.train.epochs):
        started = time.perf_counter()
        if hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch)
        train_ds.set_epoch(epoch)
        metrics = train_epoch(
            model, _progress(train_loader, epoch, cfg, ctx), cfg, optimizer, device=device,
            precision=precision, forward_model=forward_model, epoch=epoch, rank=ctx.rank,
            on_step=_step_hook(ctx, epoch),
        )
        scheduler.step()
        if ctx.epoch_hook is not None:
            metrics |= ctx.epoch_hook(model)
        metrics["lr"] = scheduler.get_last_lr()[0]
        metrics["epoch"] = float(epoch + 1)
        metrics["epoch_time_s"] = time.perf_counter() - started
        # normal images per second over all workers (each step also trains their pseudo-anomalies)
        metrics["images_per_s"] = (metrics["steps"] * batch * ctx.world_size
                                   / max(metrics["epoch_time_s"], 1e-9))
        last = epoch + 1 == cfg.train.epochs
        if holdout_loader is not None and ctx.rank == 0 and (
            last or (epoch + 1) % cfg.train.proxy_every == 0
        ):
            metrics |= proxy_metrics(model, holdout_loader, cfg, device=device,
                                     precision=precision)
            best.offer(epoch, metrics, model)
        save = last or (epoch + 1) % cfg.train.checkpoint_every == 0
        saver = None
        if save:
            def saver(path, more=None, epoch=epoch):
                extra = training_state(optimizer, scheduler, epoch + 1) | best.extra() | (
                    more or {})
                return save_checkpoint(path, model, cfg, extra=extra)
        ctx.report(epoch, metrics, saver)
    return metrics


class SelectedWeights:
    """The weights of the proxy epoch where `metric` peaked, kept (on the CPU) so every
    checkpoint carries them and a resumed run keeps selecting against the same best."""

    def __init__(self, metric: str | None, kept: dict[str, Any] | None = None) -> None:
        self.metric = metric
        self.kept = kept

    @classmethod
    def resume(cls, metric: str | None, state: dict[str, Any] | None) -> SelectedWeights:
        kept = ((state or {}).get("extra") or {}).get("selected")
        return cls(metric, kept if kept and kept.get("metric") == metric else None)

    def offer(self, epoch: int, metrics: dict[str, float], model: torch.nn.Module) -> None:
        if self.metric is None:
            return
        value = metrics.get(self.metric, float("nan"))
        # Ties go to the later epoch: more training at the same held-out score.
        if np.isfinite(value) and (self.kept is None or value >= self.kept["value"]):
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            self.kept = {"metric": self.metric, "value": float(value), "epoch": epoch + 1,
                         "state_dict": state}
        if self.kept is not None:
            metrics["selected_epoch"] = float(self.kept["epoch"])

    def extra(self) -> dict[str, Any]:
        return {} if self.kept is None else {"selected": self.kept}


def _step_hook(ctx: FitContext, epoch: int):
    if ctx.step_hook is None:
        return None
    return lambda step, _out: ctx.step_hook(epoch, step)


def _progress(loader, epoch: int, cfg: ExperimentConfig, ctx: FitContext):
    if not ctx.progress or ctx.rank != 0:
        return loader
    from tqdm import tqdm

    return tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", leave=False,
                file=sys.stderr, dynamic_ncols=True)


def training_state(optimizer, scheduler, epochs_done: int) -> dict[str, Any]:
    return {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epochs_done": epochs_done,
        "torch_rng": torch.get_rng_state(),
    }


def restore_state(state: dict[str, Any], model, optimizer, scheduler) -> int:
    """Load weights and optimiser state from a checkpoint dict; returns the next epoch."""
    from pgray.checkpoint import check_compatible

    check_compatible(state, model)
    model.load_state_dict(state["state_dict"])
    extra = state["extra"]
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    torch.set_rng_state(extra["torch_rng"])
    return int(extra["epochs_done"])
