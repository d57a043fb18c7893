"""Functions run by torch.multiprocessing in tests: two gloo ranks in plain processes (what a
Ray Train worker runs, without Ray's start-up)."""

from __future__ import annotations

from pathlib import Path

import torch


def two_rank_checks(rank: int, world: int, init_file: str, root: str, out: str) -> None:
    """Per-rank seeds, pseudo-anomalies, a checkpoint's per-rank generators and the proxy
    over a split of the held-out set; each rank writes what it saw to out/rank<r>.pt."""
    import torch.distributed as dist
    from helpers import tiny_experiment

    from pgray.core.checkpoint import read_checkpoint, save_checkpoint
    from pgray.core.fit import (
        FitContext,
        _proxy_metrics,
        _proxy_share,
        restore_state,
        training_state,
    )
    from pgray.core.model import PatchGuard
    from pgray.core.ranks import gather_to_rank0, rng_state, seed_rank
    from pgray.core.step import build_optimizer
    from pgray.core.training_data import build_datasets

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    cfg = tiny_experiment(Path(root))
    ctx = FitContext(rank=rank, world_size=world)
    seed_rank(cfg.train.seed, rank)
    first_draws = torch.rand(4)
    torch.manual_seed(0)  # the same weights on both ranks (DDP would broadcast rank 0's)
    model = PatchGuard(cfg.model)
    optimizer, scheduler = build_optimizer(model, cfg)
    train, holdout = build_datasets(cfg, model.patch_size, rank)
    share = _proxy_share(holdout, cfg, ctx)
    proxy = _proxy_metrics(model, share, cfg, ctx, "fp32")

    # a checkpoint where the next epoch starts, then the draws an uninterrupted run makes
    seed_rank(cfg.train.seed + 10, rank)
    states = gather_to_rank0(rng_state(), world)
    path = Path(out) / "checkpoint.pt"
    if rank == 0:
        save_checkpoint(path, model, cfg, extra=training_state(optimizer, scheduler, 1, states))
    uninterrupted = torch.rand(4)
    dist.barrier()
    torch.manual_seed(12345)  # a restarted worker: whatever its generator held
    restore_state(read_checkpoint(path), model, optimizer, scheduler, seed=cfg.train.seed,
                  rank=rank, world_size=world)
    resumed = torch.rand(4)
    torch.save({"first_draws": first_draws, "pseudo_mask": train[0]["pseudo_mask"],
                "proxy_batches": [i for i, _ in share], "proxy": proxy,
                "uninterrupted": uninterrupted, "resumed": resumed},
               Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()
