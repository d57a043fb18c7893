"""The passes of one training step, counted by `step_passes` and observed in a real step."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_experiment

from pgray.config.passes import CLEAN, StepPasses, step_passes, step_passes_of
from pgray.core.step import train_step

BATCH = 2


def observed_forwards(cfg) -> float:
    """Images through the model in one real training step, per normal image (a forward hook
    on the discriminator, which every forward of the step ends in)."""
    from pgray.core.model import PatchGuard

    torch.manual_seed(0)
    model = PatchGuard(cfg.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    size, n = cfg.model.img_size, model.num_patches
    batch = {"image": torch.rand(BATCH, 3, size, size),
             "pseudo_image": torch.rand(BATCH, 3, size, size),
             "pseudo_patch_labels": (torch.rand(BATCH, n) > 0.7).float()}
    images = []
    hook = model.disc.register_forward_hook(
        lambda _module, args, _out: images.append(args[0].shape[0]))
    try:
        train_step(model, batch, cfg, optimizer, device=torch.device("cpu"))
    finally:
        hook.remove()
    return sum(images) / BATCH


@pytest.mark.parametrize("train", [
    {"attack_method": "pgd", "attack": {"steps": 1}},
    {"attack_method": "pgd", "attack": {"steps": 3}},
    {"attack_method": "nfgsm"},
    {"adversarial": False},
    {"attack_method": "pgd", "attack": {"steps": 2, "keep_best": True}},  # + judging forwards
    # issue 29's keys: the objective mix and TRADES add no pass (TRADES reads the clean and
    # attacked logits of the one update forward)
    {"attack": {"steps": 2, "objective": "image_score"}},
    {"attack": {"steps": 2}, "image_score_share": 0.5},
    {"attack": {"steps": 2}, "trades_beta": 1.0},
    {"attack": {"steps": 2, "objective": "image_score", "surrogate": "lse"}},
])
def test_counted_passes_are_the_forwards_of_a_real_step(tmp_path, train):
    cfg = tiny_experiment(tmp_path, train=train)
    counted = step_passes_of(cfg)
    assert observed_forwards(cfg) == counted.forwards
    if train.get("attack_method") == "pgd":
        assert counted.passes == 2 * cfg.train.attack.steps + 4


def test_passes_of_each_method():
    assert step_passes("pgd") == StepPasses(attack=20, judge=0, update=4)  # the reference
    assert step_passes("pgd").passes == 24
    assert step_passes("pgd", steps=1000).passes == 2004
    # the fast methods fix their own steps, whatever train.attack says
    assert step_passes("pgd2", steps=10).passes == 8
    assert step_passes("fgsm_rs").passes == step_passes("nfgsm").passes == 6
    assert step_passes(CLEAN) == StepPasses(attack=0, judge=0, update=2)
    # restarts judge each one's last iterate with one forward per attacked batch
    assert step_passes("pgd", steps=10, restarts=2).forwards == 40 + 4 + 4
    # an lse surrogate reads each attacked batch's clean units once (forward only)
    assert step_passes("pgd", surrogate=True) == StepPasses(attack=20, judge=2, update=4)
    assert step_passes("nfgsm", surrogate=True).passes == 6


def test_plan_costs_a_training_from_the_step_passes(tmp_path):
    from pgray.pipelines.plan.costs import step_image_steps, training_image_steps

    pgd10 = tiny_experiment(tmp_path, train={"attack": {"steps": 10}})
    assert step_image_steps(pgd10) == 20 + 4 * 1.5  # an update pass also grads the weights
    fast = tiny_experiment(tmp_path, train={"attack_method": "fgsm_rs",
                                            "max_steps_per_epoch": None, "epochs": 3})
    assert step_image_steps(fast) == 2 + 4 * 1.5
    # 12 images, a quarter held out: 9 trained per epoch
    assert training_image_steps(fast, 12) == pytest.approx(3 * 9 * 8.0)


def test_default_proxy_every_keeps_the_proxy_near_a_tenth_of_the_run():
    from pgray.config import ExperimentConfig
    from pgray.config.passes import (
        PROXY_SHARE,
        default_proxy_every,
        proxies_run,
        proxy_passes_per_pair,
    )

    reference = ExperimentConfig()  # PGD-10, proxy_steps 10, 4 repeats, holdout 0.1
    assert reference.train.proxy_every is None
    # 100 train normals, 11 held out x 4: 44 x 46 passes against 100 x 24 a epoch = 0.84
    assert proxy_passes_per_pair(reference) == 46.0
    assert default_proxy_every(reference, n_pairs=44, n_train=100) == 9
    assert default_proxy_every(reference) == 9  # from holdout_fraction alone
    every = default_proxy_every(reference, n_pairs=44, n_train=100)
    assert 44 * 46 / (100 * 24) / every <= PROXY_SHARE
    # the first and last epochs' proxies count: over 100 epochs every 9 would run 13 (11.0
    # epochs of proxy), every 10 runs 11 (9.3 epochs)
    hundred = ExperimentConfig.from_dict({"train": {"epochs": 100}})
    assert proxies_run(100, 9) == 13 and proxies_run(100, 10) == 11
    assert default_proxy_every(hundred, n_pairs=44, n_train=100) == 10
    # too short for any proxy between the first and the last
    short = ExperimentConfig.from_dict({"train": {"epochs": 24}})
    assert default_proxy_every(short, n_pairs=44, n_train=100) == 24
    assert proxies_run(24, 24) == 2
    clean = ExperimentConfig.from_dict({"train": {"adversarial": False, "epochs": 50}})
    assert default_proxy_every(clean, n_pairs=44, n_train=100) == 50  # capped at the epochs
