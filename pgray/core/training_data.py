"""The data one training run needs: train pairs and the held-out proxy set, and their loaders."""

from __future__ import annotations

import numpy as np
import torch

from pgray.config import ExperimentConfig
from pgray.errors import DatasetError


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
    """Train and held-out pseudo-anomaly datasets (held-out uses another seed)."""
    from pgray.data.dataset import ADDataset, discover_split
    from pgray.pseudo.dataset import PseudoAnomalyDataset
    from pgray.pseudo.generator import PseudoAnomalyGenerator

    samples = discover_split(cfg.data, "train")
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


def make_loader(dataset, batch_size: int, *, shuffle: bool, cfg: ExperimentConfig, rank: int,
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
