"""The data one training run needs: train pairs and the held-out proxy set, and their loaders."""

from __future__ import annotations

import numpy as np
import torch

from pgray.config import ExperimentConfig
from pgray.errors import DatasetError

PROXY_SEED = 7_919  # the held-out proxy's anomalies: the same for every trial of a study


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


def build_datasets(cfg: ExperimentConfig, patch_size: int, rank: int = 0):
    """Train pairs (the trial's own `pseudo` config) and the held-out proxy set.

    The proxy's anomalies come from `train.proxy_pseudo` (the reference config when unset)
    with a fixed seed, never from the trial's `pseudo`: every trial of a study is then scored
    on the same held-out images, whatever pseudo-anomalies it trains on.
    """
    from pgray.config import PseudoConfig
    from pgray.data.dataset import ADDataset, decode_cache_dir, discover_split
    from pgray.pseudo.dataset import PseudoAnomalyDataset
    from pgray.pseudo.generator import PseudoAnomalyGenerator

    samples = discover_split(cfg.data, "train")
    # The split is fixed too: trials that differ in train.seed hold out the same images.
    train_samples, hold_samples = split_holdout(samples, cfg.train.holdout_fraction, PROXY_SEED)
    size, rule, cache = cfg.model.img_size, cfg.data.mask_resize, decode_cache_dir(cfg.data)
    train = PseudoAnomalyDataset(
        ADDataset(train_samples, img_size=size, mask_resize=rule, cache_dir=cache),
        PseudoAnomalyGenerator(cfg.pseudo, img_size=size, patch_size=patch_size),
        seed=cfg.train.seed, rank=rank,
    )
    holdout = None
    if hold_samples:
        proxy_generator = PseudoAnomalyGenerator(cfg.train.proxy_pseudo or PseudoConfig(),
                                                 img_size=size, patch_size=patch_size)
        # Each held-out normal appears proxy_repeats times, each time with another anomaly.
        holdout = PseudoAnomalyDataset(
            ADDataset(hold_samples * cfg.train.proxy_repeats, img_size=size, mask_resize=rule,
                      cache_dir=cache),
            proxy_generator, seed=PROXY_SEED,
        )
    return train, holdout


# The proxy set is cut into at least this many batches (when it has the pairs), whatever the
# world size: ranks score whole batches (each batch's attacks are seeded by its index), so up
# to this many ranks share the proxy, and every world size scores it exactly alike.
PROXY_SPLIT = 4


def proxy_batch_size(n_pairs: int, largest: int) -> int:
    """Held-out pairs per proxy batch: at most `largest` (the eval batch for the device)."""
    return max(1, min(largest, -(-n_pairs // PROXY_SPLIT)))


def proxy_batches(holdout, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """The held-out proxy set as evaluation batches, generated once per run and reused at
    every proxy epoch (normals with empty masks, their pseudo-anomalies with theirs)."""
    return [batch for _, batch in proxy_batch_share(holdout, batch_size)]


def proxy_batch_share(holdout, batch_size: int, rank: int = 0,
                      world_size: int = 1) -> list[tuple[int, dict[str, torch.Tensor]]]:
    """This rank's share of the proxy batches, with each batch's index in the whole set (the
    items of a batch depend only on their indices, so a share is generated alone)."""
    from torch.utils.data import DataLoader

    from pgray.core.ranks import proxy_share
    from pgray.core.scoring import pseudo_eval_batches

    n = len(holdout)
    mine = proxy_share(-(-n // batch_size), rank, world_size)
    sampler = [list(range(i * batch_size, min((i + 1) * batch_size, n))) for i in mine]
    loader = DataLoader(holdout, batch_sampler=sampler, num_workers=0)
    return list(zip(mine, pseudo_eval_batches(loader)))


def make_loader(dataset, batch_size: int, *, shuffle: bool, cfg: ExperimentConfig, rank: int,
            world_size: int, device: torch.device, reserved_cpus: float | None = None):
    """The training loader, built once per run. Its workers persist across epochs (no
    re-forking, and each keeps its memory-mapped decode cache open); a dataset with
    `set_epoch` gets each index together with the epoch (EpochSampler), since persistent
    workers keep the dataset object they started with. Without train.loader_workers, their
    number follows the CPUs a scheduler reserved for this process (`reserved_cpus`)."""
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

    from pgray.core.device import loader_workers
    from pgray.pseudo.dataset import EpochSampler

    if world_size > 1 and shuffle:
        sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=cfg.train.seed
        )
    elif shuffle:
        # Its own generator: the order does not depend on how many workers draw seeds.
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(cfg.train.seed))
    else:
        sampler = SequentialSampler(dataset)
    if hasattr(dataset, "set_epoch"):
        sampler = EpochSampler(sampler)
    workers = cfg.train.loader_workers
    if workers is None:
        workers = loader_workers(device, reserved_cpus)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
        drop_last=False,
        generator=torch.Generator().manual_seed(cfg.train.seed),
    )


def per_worker_batch(global_batch: int, world_size: int) -> int:
    """train.batch_size is the global batch: each worker takes its share, rounded up."""
    return max(1, -(-global_batch // world_size))


# A per-GPU batch below this leaves most of the device idle (a ViT-S step at a few images is
# launch-bound): training then warns at its start.
SMALL_GPU_BATCH = 8


def batch_params(global_batch: int, workers: int) -> dict[str, int]:
    """The batch as a run logs it: configured global, per worker, and the global one the
    workers really step with (per worker x workers, above the configured one when it does
    not divide)."""
    each = per_worker_batch(global_batch, workers)
    return {"global": global_batch, "per_worker": each, "workers": workers,
            "effective_global": each * workers}


def describe_batch(global_batch: int, workers: int, device_type: str) -> list[str]:
    """The start-of-training batch line, and a warning when GPUs get too few images each."""
    b = batch_params(global_batch, workers)
    lines = [f"batch: global {b['global']} = {b['per_worker']} per worker x {workers}"
             f" worker(s)" + ("" if b["effective_global"] == b["global"]
                             else f" (effective global {b['effective_global']})")]
    if device_type == "cuda" and b["per_worker"] < SMALL_GPU_BATCH:
        lines.append(f"warning: {b['per_worker']} images per GPU (< {SMALL_GPU_BATCH}) leaves"
                     " the GPU mostly idle: raise train.batch_size or use fewer workers")
    return lines
