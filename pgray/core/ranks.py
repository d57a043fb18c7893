"""What differs between the data-parallel ranks of one training: their random streams, their
share of the held-out proxy, and what they send to rank 0 (plain torch.distributed, gloo or
NCCL; a run of one process needs none of it)."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch


def distributed(world_size: int) -> bool:
    """Whether this process is one of several ranks of an initialised process group."""
    import torch.distributed as dist

    return world_size > 1 and dist.is_available() and dist.is_initialized()


def seed_rank(seed: int, rank: int) -> None:
    """Seed this rank's torch generators with seed + rank: ranks draw their own dropout and
    other torch randomness (DDP copies rank 0's initial weights to every rank, so the model
    is the same whatever each rank drew when building it). Rank 0 draws what one process
    with the same seed draws."""
    torch.manual_seed(seed + rank)


def rng_state() -> dict[str, Any]:
    """This process's CPU generator and, where CUDA is up, its CUDA generators."""
    return {"torch": torch.get_rng_state(),
            # dropout after a resume on a GPU draws from the CUDA generators
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_initialized() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def gather_to_rank0(obj: Any, world_size: int) -> list[Any] | None:
    """Every rank's `obj`, in rank order, on rank 0 (None on the others); [obj] alone."""
    if not distributed(world_size):
        return [obj]
    import torch.distributed as dist

    out = [None] * world_size if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def restore_rank_rng(extra: dict[str, Any], *, seed: int, rank: int, world_size: int) -> None:
    """Restore this rank's own generators from a checkpoint's `rank_rng` (one state per rank,
    written by rank 0). A checkpoint from another world size (or from before per-rank
    states) cannot give each rank its stream back: ranks are then reseeded from (seed, rank,
    epochs done), and rank 0 says so."""
    states = extra.get("rank_rng")
    if states and len(states) == world_size:
        set_rng_state(states[rank])
        return
    if not states and world_size == 1 and "torch_rng" in extra:  # one-process checkpoints
        set_rng_state({"torch": extra["torch_rng"], "cuda": extra.get("cuda_rng") or []})
        return
    done = int(extra.get("epochs_done", 0))
    torch.manual_seed(int(np.random.SeedSequence([seed, rank, done]).generate_state(1)[0]))
    if rank == 0:
        saved = len(states) if states else "an unknown number of"
        print(f"note: the checkpoint holds random states of {saved} rank(s), this run has"
              f" {world_size}: each rank is reseeded from (train.seed, rank, epoch {done})",
              file=sys.stderr, flush=True)


def proxy_share(n_batches: int, rank: int, world_size: int) -> list[int]:
    """The proxy batches this rank scores: every world_size-th, from its rank on."""
    return list(range(rank, n_batches, world_size))
