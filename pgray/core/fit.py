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
from pgray.core.ranks import gather_to_rank0, rng_state

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
    # CPUs a scheduler reserved for this worker (Ray Train's resources_per_worker): the
    # training loader's default number of workers follows them
    reserved_cpus: float | None = None


def fit(cfg: ExperimentConfig, ctx: FitContext) -> dict[str, float]:
    """Train for cfg.train.epochs (resuming from ctx.resume_state); returns the last metrics."""
    from pgray.config.passes import default_proxy_every, proxy_due
    from pgray.core.checkpoint import save_checkpoint
    from pgray.core.device import enable_tf32, on_device, resolve_precision
    from pgray.core.model import PatchGuard
    from pgray.core.ranks import seed_rank
    from pgray.core.step import build_optimizer, train_epoch
    from pgray.core.training_data import (
        build_datasets,
        describe_batch,
        make_loader,
        per_worker_batch,
    )

    seed_rank(cfg.train.seed, ctx.rank)
    device = ctx.device
    enable_tf32(device)
    precision = resolve_precision(cfg.train.precision, device)
    model = PatchGuard(cfg.model).to(device)
    optimizer, scheduler = build_optimizer(model, cfg)
    start_epoch = 0
    if ctx.resume_state is not None:
        start_epoch = restore_state(ctx.resume_state, model, optimizer, scheduler,
                                    seed=cfg.train.seed, rank=ctx.rank,
                                    world_size=ctx.world_size)
    forward_model = ctx.prepare_model(model)

    train_ds, holdout_ds = build_datasets(cfg, model.patch_size, ctx.rank)
    batch = per_worker_batch(cfg.train.batch_size, ctx.world_size)
    train_loader = make_loader(train_ds, batch, shuffle=True, cfg=cfg, rank=ctx.rank,
                           world_size=ctx.world_size, device=device,
                           reserved_cpus=ctx.reserved_cpus)
    # Proxy batches are generated once per run; each rank scores its share of them.
    proxy = _proxy_share(holdout_ds, cfg, ctx)
    proxy_every = cfg.train.proxy_every or default_proxy_every(
        cfg, n_pairs=len(holdout_ds) if holdout_ds is not None else 0, n_train=len(train_ds))
    if ctx.rank == 0:
        for line in describe_batch(cfg.train.batch_size, ctx.world_size, device.type):
            print(line, file=sys.stderr, flush=True)
        if holdout_ds is not None:
            why = "" if cfg.train.proxy_every else " (about 10 % of training; train.proxy_every)"
            also = ", the first and last too" if proxy_every > 1 else ""
            print(f"proxy: every {proxy_every} epoch(s){also}{why}", file=sys.stderr,
                  flush=True)

    checkpoint_every = on_device(cfg.train.checkpoint_every, device, cpu=1, cuda=10)
    best = SelectedWeights.resume(cfg.train.select_metric, ctx.resume_state)
    guard = CollapseGuard.resume(cfg.train.collapse_drop, ctx.resume_state)
    metrics: dict[str, float] = {}
    for epoch in range(start_epoch, cfg.train.epochs):
        started, began_at = time.perf_counter(), time.time()
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
        metrics["epoch_began_at"] = began_at  # wall clock: trial_times' start-up
        # normal images per second over all workers (each step also trains their pseudo-anomalies)
        metrics["images_per_s"] = (metrics["steps"] * batch * ctx.world_size
                                   / max(metrics["epoch_time_s"], 1e-9))
        last = epoch + 1 == cfg.train.epochs
        due = proxy_due(epoch, cfg.train.epochs, proxy_every)
        proxy_started = time.perf_counter()
        scored = (_proxy_metrics(model, proxy, cfg, ctx, precision)
                  if proxy is not None and due else None)
        if scored is not None:  # on rank 0: the other ranks' shares are gathered there
            metrics |= scored
            metrics["proxy_time_s"] = time.perf_counter() - proxy_started
            collapsed = guard.check(epoch, metrics)
            if ctx.rank == 0 and collapsed:
                print(f"warning: {guard.note}", file=sys.stderr, flush=True)
            best.offer(epoch, metrics, model, eligible=not collapsed)
        else:
            best.annotate(metrics)
        save = last or (epoch + 1) % checkpoint_every == 0
        saver = None
        if save:
            # every rank's generators, taken where the next epoch starts (a collective:
            # every rank saves at the same epochs)
            rank_rng = gather_to_rank0(rng_state(), ctx.world_size)

            def saver(path, more=None, epoch=epoch, rank_rng=rank_rng):
                extra = (training_state(optimizer, scheduler, epoch + 1, rank_rng)
                         | best.extra() | guard.extra() | (more or {}))
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


def training_state(optimizer, scheduler, epochs_done: int,
                   rank_rng: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """What a resume needs besides the weights. `rank_rng`: each rank's generators in rank
    order (this process's alone when not given); torch_rng and cuda_rng keep rank 0's, as
    checkpoints before per-rank states had them."""
    from pgray.core.ranks import rng_state

    rank_rng = rank_rng or [rng_state()]
    return {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epochs_done": epochs_done,
        "rank_rng": rank_rng,
        "torch_rng": rank_rng[0]["torch"],
        "cuda_rng": rank_rng[0]["cuda"],
    }


def restore_state(state: dict[str, Any], model, optimizer, scheduler, *, seed: int = 0,
                  rank: int = 0, world_size: int = 1) -> int:
    """Load weights, optimiser state and this rank's generators from a checkpoint dict;
    returns the next epoch."""
    from pgray.core.checkpoint import load_into
    from pgray.core.ranks import restore_rank_rng

    extra = load_into(model, state)
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    restore_rank_rng(extra, seed=seed, rank=rank, world_size=world_size)
    return int(extra["epochs_done"])


def _proxy_share(holdout_ds, cfg: ExperimentConfig, ctx: FitContext):
    """This rank's (index, batch) share of the proxy set; ranks without a process group
    (world_size > 1 in name only) leave it all to rank 0, as one process would."""
    from pgray.core.device import on_device
    from pgray.core.ranks import distributed
    from pgray.core.training_data import proxy_batch_share, proxy_batch_size

    shared = distributed(ctx.world_size)
    if holdout_ds is None or (not shared and ctx.rank != 0):
        return None
    largest = on_device(cfg.eval.batch_size, ctx.device, cpu=32, cuda=256)
    size = proxy_batch_size(len(holdout_ds), largest)
    if shared:
        return proxy_batch_share(holdout_ds, size, ctx.rank, ctx.world_size)
    return proxy_batch_share(holdout_ds, size)


def _proxy_metrics(model, share, cfg: ExperimentConfig, ctx: FitContext,
                   precision: str) -> dict[str, float] | None:
    """The proxy metrics (on rank 0; None on the others). Across ranks, each scores its
    share and rank 0 computes the metrics on everyone's per-image outputs: the numbers of
    one process scoring every batch."""
    from pgray.core import proxy
    from pgray.core.ranks import distributed, gather_to_rank0

    if not distributed(ctx.world_size):
        return proxy.proxy_metrics(model, [b for _, b in share], cfg, device=ctx.device,
                                   precision=precision)
    mine = proxy.proxy_outputs(model, share, cfg, device=ctx.device, precision=precision)
    gathered = gather_to_rank0(mine, ctx.world_size)
    if gathered is None:
        return None
    return proxy.proxy_metrics_of({name: [pair for parts in gathered for pair in parts[name]]
                                   for name in proxy.PROXY_PARTS})
