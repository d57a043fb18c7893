"""The plan's arithmetic: image-steps of one training (steps, held-out proxy) and FLOPs per
image-step of a model, from the same code that trains (`pgray.config.passes.step_passes`)."""

from __future__ import annotations

from pgray.config.passes import FORWARD_PASS_COST, UPDATE_PASS_COST


def gflop_per_image_step(model_cfg) -> float:
    """FLOPs of one forward + input gradient of the config's model on one image."""
    import dataclasses

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pgray.core.model import PatchGuard

    model = PatchGuard(dataclasses.replace(model_cfg, pretrained=False, weights=None)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(1, 3, model_cfg.img_size, model_cfg.img_size, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return counter.get_total_flops() / 1e9




def step_image_steps(exp_cfg) -> float:
    """Image-steps of one training step per normal image, from the step's own pass count."""
    from pgray.config.passes import step_passes_of

    p = step_passes_of(exp_cfg)
    return p.attack + FORWARD_PASS_COST * p.judge + UPDATE_PASS_COST * p.update


def held_out(exp_cfg, n_train: int) -> int:
    """Normal train images kept out for the proxy (as core.training_data.split_holdout)."""
    fraction = exp_cfg.train.holdout_fraction
    return 0 if fraction <= 0 else min(n_train, max(2, round(n_train * fraction)))


def epoch_images(exp_cfg, n_train: int) -> int:
    """Normal images one epoch trains on (the held-out ones excluded)."""
    kept = n_train - held_out(exp_cfg, n_train)
    if exp_cfg.train.max_steps_per_epoch is not None:
        kept = min(kept, exp_cfg.train.max_steps_per_epoch * exp_cfg.train.batch_size)
    return kept


def training_image_steps(exp_cfg, n_train: int) -> float:
    """Image-steps of one whole training's steps (all epochs, the proxy not included)."""
    return exp_cfg.train.epochs * epoch_images(exp_cfg, n_train) * step_image_steps(exp_cfg)


def proxy_epochs(exp_cfg, n_train: int) -> int:
    """How many epochs run the held-out proxy (as core.fit: the first, the last, and every
    proxy_every-th, which defaults to about 10 % of the run)."""
    from pgray.config.passes import default_proxy_every, proxies_run

    n_pairs = held_out(exp_cfg, n_train) * exp_cfg.train.proxy_repeats
    if n_pairs == 0:
        return 0
    every = exp_cfg.train.proxy_every or default_proxy_every(
        exp_cfg, n_pairs=n_pairs, n_train=n_train - held_out(exp_cfg, n_train))
    return proxies_run(exp_cfg.train.epochs, every)


def proxy_image_steps_per_pair(exp_cfg) -> float:
    """One proxy over one held-out pair (a normal and its pseudo-anomaly): each image's clean
    forward, then the two short attacks (proxy_steps each) and their scoring forwards."""
    steps = exp_cfg.train.proxy_steps
    return 2 * (FORWARD_PASS_COST + 2 * (steps + FORWARD_PASS_COST))


def proxy_image_steps(exp_cfg, n_train: int) -> float:
    """Image-steps of every proxy of one training."""
    n_pairs = held_out(exp_cfg, n_train) * exp_cfg.train.proxy_repeats
    return proxy_epochs(exp_cfg, n_train) * n_pairs * proxy_image_steps_per_pair(exp_cfg)
