"""L-infinity PGD on anomaly detectors (docs/method.md, "Attack"); the entry point of every
attack (`attack`), which sends l2 to torchattacks and patch to `pgray.attacks.patch`.

The attacked model is a detector as `pgray.attacks.objectives.detector_outputs` sees it:
images (B, 3, H, W) in [0, 1] -> image scores (B,) and localization units (B, U). Attacks move
the input only: the weights are frozen once around the whole attack and the model runs in eval
mode.

Default `attack` is the reference protocol: PGD, alpha = 2.5 * eps / steps, no random start,
last iterate, one projection onto the eps-ball intersected with [0, 1] per step. Stronger
variants (random start, restarts, best iterate, the image-score objective and its smooth
surrogate, APGD and Square through torchattacks) are opt-in and recorded by
`AttackConfig.describe()`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pgray.attacks.patch import patch_pgd
from pgray.attacks.patch_search import patch_random_search
from pgray.attacks.torchattacks_adapter import torchattacks_attack
from pgray.attacks.trajectory import (
    Best,
    TrajectoryObjectives,
    eval_mode,
    frozen,
    judged_objective,
    pgd_trajectory,
    prepare_inputs,
)
from pgray.config import AttackConfig
from pgray.core.device import autocast

StepCallback = Callable[[int], None]


def _random_start(
    x0: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, radius: float, gen: torch.Generator
) -> torch.Tensor:
    noise = torch.rand(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
    return torch.clamp(x0 + (2.0 * noise - 1.0) * radius, min=lo, max=hi)


def _pgd(
    model: nn.Module,
    x0: torch.Tensor,
    objectives: TrajectoryObjectives,
    cfg: AttackConfig,
    seed: int,
    on_step: StepCallback | None,
) -> torch.Tensor:
    eps, alpha = cfg.eps_unit, cfg.alpha_unit
    if cfg.project:
        bounds = ((x0 - eps).clamp_(min=0.0), (x0 + eps).clamp_(max=1.0))
    else:  # N-FGSM: the perturbation may leave the eps-ball; images stay images
        bounds = (torch.zeros_like(x0), torch.ones_like(x0))
    cast = lambda: autocast(x0.device, cfg.precision)  # noqa: E731 - one context per use
    # Restarts need a different start each time: later restarts start at random even when the
    # first one follows the reference (no random start), otherwise they would repeat it.
    gen = None
    if cfg.random_start or cfg.restarts > 1:
        gen = torch.Generator(device=x0.device)
        gen.manual_seed(seed)
    overall = Best(x0) if (cfg.keep_best or cfg.restarts > 1) else None
    for r in range(cfg.restarts):
        if cfg.random_start or r > 0:
            start = _random_start(x0, *bounds, eps * cfg.start_scale, gen)
        else:
            start = x0.clone()
        offset = r * cfg.steps
        step_cb = None if on_step is None else (lambda i, o=offset: on_step(o + i + 1))
        x, best = pgd_trajectory(
            model, start, bounds, alpha, cfg.steps, objectives, cast, cfg.keep_best, step_cb
        )
        if overall is None:
            return x
        # The last iterate has not been judged yet: one extra forward per restart.
        final = judged_objective(model, x, objectives.judge, cast())
        if best is not None:
            best.update(x, final)
            x, final = best.x, best.obj
        overall.update(x, final)
    return overall.x


def attack(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: AttackConfig,
    seed: int = 0,
    on_step: StepCallback | None = None,
    image_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Adversarial images (detached, float32, on the images' device) maximising the objective.

    images: (B, 3, H, W) in [0, 1]; labels: the detector's unit labels (B, U) in {0, 1}
    (patch labels for PatchGuard); image_labels: (B,) 0 normal / 1 anomalous, the direction
    of a detection attack (without them, whether any unit is anomalous decides).
    `on_step(k)` is called after each step with
    k = 1 .. restarts * steps (pgray's PGD only). Weights are frozen and the model is in eval
    mode during the attack; both are restored afterwards.
    """
    cfg.validate()
    if cfg.eps == 0:
        return images.detach().clone()
    if cfg.library == "torchattacks":
        return torchattacks_attack(model, images, labels, cfg, seed=seed,
                                   image_labels=image_labels)
    if cfg.method == "random":  # the patch threat's black-box search: no gradient, no steps
        return patch_random_search(model, images, labels, cfg, seed=seed,
                                   image_labels=image_labels)
    _, x0, labels = prepare_inputs(model, images, labels)
    run = patch_pgd if cfg.threat == "patch" else _pgd
    with frozen(model), eval_mode(model), torch.enable_grad():
        objectives = TrajectoryObjectives.at_clean(model, x0, labels, cfg, image_labels)
        adv = run(model, x0, objectives, cfg, seed, on_step)
    return adv.to(images.device)
