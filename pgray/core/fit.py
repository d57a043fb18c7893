"""The training loop of one category (`fit`), independent of where it runs.

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


def fit(cfg: ExperimentConfig, ctx: FitContext) -> dict[str, float]:
    """Train for cfg.train.epochs (resuming from ctx.resume_state); returns the last metrics."""
    from pgray.core.checkpoint import save_checkpoint
    from pgray.core.device import on_device, resolve_precision
    from pgray.core.model import PatchGuard
    from pgray.core.scoring import proxy_metrics
    from pgray.core.step import build_optimizer, train_epoch
    from pgray.core.training_data import (
        build_datasets,
        make_loader,
        per_worker_batch,
        proxy_batches,
    )

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
    train_loader = make_loader(train_ds, batch, shuffle=True, cfg=cfg, rank=ctx.rank,
                           world_size=ctx.world_size, device=device)
    # Proxy batches are generated once per run, on the rank that scores them.
    proxy = (proxy_batches(holdout_ds, on_device(cfg.eval.batch_size, device, cpu=32, cuda=256))
             if holdout_ds is not None and ctx.rank == 0 else None)

    checkpoint_every = on_device(cfg.train.checkpoint_every, device, cpu=1, cuda=10)
    best = SelectedWeights.resume(cfg.train.select_metric, ctx.resume_state)
    guard = CollapseGuard.resume(cfg.train.collapse_drop, ctx.resume_state)
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
        # where this run (re)started: 0, or the epoch of the checkpoint it resumed from
        metrics["resumed_from_epoch"] = float(start_epoch)
        metrics["epoch_time_s"] = time.perf_counter() - started
        # normal images per second over all workers (each step also trains their pseudo-anomalies)
        metrics["images_per_s"] = (metrics["steps"] * batch * ctx.world_size
                                   / max(metrics["epoch_time_s"], 1e-9))
        last = epoch + 1 == cfg.train.epochs
        # The first epoch always has a proxy: it starts the curve, and Tune fixes its table's
        # columns from the first result it sees.
        due = epoch == 0 or last or (epoch + 1) % cfg.train.proxy_every == 0
        if proxy is not None and due:
            metrics |= proxy_metrics(model, proxy, cfg, device=device, precision=precision)
            collapsed = guard.check(epoch, metrics)
            if ctx.rank == 0 and collapsed:
                print(f"warning: {guard.note}", file=sys.stderr, flush=True)
            best.offer(epoch, metrics, model, eligible=not collapsed)
        else:
            best.annotate(metrics)
        save = last or (epoch + 1) % checkpoint_every == 0
        saver = None
        if save:
            def saver(path, more=None, epoch=epoch):
                extra = (training_state(optimizer, scheduler, epoch + 1) | best.extra()
                         | guard.extra() | (more or {}))
                return save_checkpoint(path, model, cfg, extra=extra)
        ctx.report(epoch, metrics, saver)
    return metrics


SELECTED_PREFIX = "selected_"  # selected_<metric>: <metric> at the selected epoch


def scores_of(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics a sweep may rank trials by (the held-out proxy's and the loss)."""
    return {k: float(v) for k, v in metrics.items()
            if (k.startswith("proxy_") or k == "loss") and isinstance(v, int | float)}


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

    def offer(self, epoch: int, metrics: dict[str, float], model: torch.nn.Module,
              eligible: bool = True) -> None:
        """Keep this epoch's weights if they are the best so far (never an epoch the collapse
        guard flagged: its proxy can still look good through its clean half)."""
        if self.metric is None:
            return
        value = metrics.get(self.metric, float("nan"))
        # Ties go to the later epoch: more training at the same held-out score.
        if eligible and np.isfinite(value) and (self.kept is None
                                                or value >= self.kept["value"]):
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            self.kept = {"metric": self.metric, "value": float(value), "epoch": epoch + 1,
                         "state_dict": state, "scores": scores_of(metrics)}
        self.annotate(metrics)

    def annotate(self, metrics: dict[str, float]) -> None:
        """Write the selected epoch and what its weights (best.pt, the ones evaluated) scored
        into an epoch's metrics: a sweep ranks its trials by these, not by the last epoch's.
        Every epoch carries them, proxy epoch or not, so a trial stopped between proxy
        epochs still says what its best.pt scored."""
        if self.kept is None:
            return
        metrics["selected_epoch"] = float(self.kept["epoch"])
        scores = self.kept.get("scores") or {self.metric: self.kept["value"]}
        metrics |= {SELECTED_PREFIX + k: v for k, v in scores.items()}

    def extra(self) -> dict[str, Any]:
        return {} if self.kept is None else {"selected": self.kept}


class CollapseGuard:
    """Catastrophic overfitting, seen on the held-out proxy: the worst-case image AUROC (short
    protocol and detection attacks) falls `drop` below its best while the clean one holds (at
    most 0.02 below its value at that best). Single-step training attacks are known to do this
    (Wong et al. 2020): the model learns to mask its gradient, and robustness to stronger
    attacks vanishes within an epoch or two."""

    WORST, CLEAN = "proxy_worst_image_auroc", "proxy_clean_image_auroc"

    def __init__(self, drop: float, state: dict[str, Any] | None = None) -> None:
        self.drop = drop
        self.state = state  # {best, clean_at_best, epoch} of the best worst-case epoch so far
        self.note = ""

    @classmethod
    def resume(cls, drop: float, state: dict[str, Any] | None) -> CollapseGuard:
        return cls(drop, ((state or {}).get("extra") or {}).get("collapse_guard"))

    def check(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Whether this proxy epoch collapsed; writes robust_collapse (0/1) into metrics."""
        worst, clean = metrics.get(self.WORST), metrics.get(self.CLEAN)
        if worst is None or clean is None or not (np.isfinite(worst) and np.isfinite(clean)):
            return False
        best = self.state
        collapsed = (best is not None and worst < best["best"] - self.drop
                     and clean >= best["clean_at_best"] - 0.02)
        if best is None or worst > best["best"]:
            self.state = {"best": float(worst), "clean_at_best": float(clean),
                          "epoch": epoch + 1}
        metrics["robust_collapse"] = float(collapsed)
        if collapsed:
            self.note = (f"robust collapse at epoch {epoch + 1}: held-out worst-case image"
                         f" AUROC {worst:.3f}, down from {best['best']:.3f} at epoch"
                         f" {best['epoch']}, while clean is {clean:.3f} (catastrophic"
                         " overfitting; selection skips this epoch)")
        return collapsed

    def extra(self) -> dict[str, Any]:
        return {} if self.state is None else {"collapse_guard": self.state}


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
        # dropout after a resume on a GPU draws from the CUDA generators
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }


def restore_state(state: dict[str, Any], model, optimizer, scheduler) -> int:
    """Load weights and optimiser state from a checkpoint dict; returns the next epoch."""
    from pgray.core.checkpoint import load_into

    extra = load_into(model, state)
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    torch.set_rng_state(extra["torch_rng"])
    cuda = extra.get("cuda_rng") or []
    if cuda and torch.cuda.is_initialized() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    return int(extra["epochs_done"])
