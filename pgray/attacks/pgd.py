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

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from pgray.attacks.objectives import (
    Objective,
    detector_outputs,
    make_objective,
    unit_spread,
)
from pgray.config import AttackConfig
from pgray.core.device import autocast

StepCallback = Callable[[int], None]
CastFactory = Callable[[], contextlib.AbstractContextManager]


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Turn off requires_grad on every parameter for the block, then restore each flag.

    Done once around the whole attack: toggling flags per step costs more than the step on a
    small model (docs/stack.md), and frozen weights make the backward stop at the input.
    """
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the block; restores each submodule's own flag (mixed modes survive)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else fallback


def outputs_fp32(model: nn.Module, x: torch.Tensor, cast: contextlib.AbstractContextManager
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(image scores, units) under `cast`; objectives and comparisons run in fp32."""
    with cast:
        return detector_outputs(model, x)


def input_gradient(objective: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """d sum(objective) / dx. A detector whose output does not depend on x through autograd
    (its features run under no_grad) gives zeros: the attack then does nothing, and the
    suite's zero-gradient check says so instead of crashing."""
    if not objective.requires_grad:
        return torch.zeros_like(x)
    (grad,) = torch.autograd.grad(objective.sum(), x, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad


class Best:
    """Per-image best (objective, image) so far, updated without host syncs."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x.detach().clone()
        self.obj = torch.full((x.shape[0],), -torch.inf, device=x.device)

    def update(self, x: torch.Tensor, obj: torch.Tensor) -> None:
        better = obj > self.obj  # NaN objectives never replace a finite best
        # Written in place (elementwise, so aliasing the output with an input is safe).
        torch.where(better, obj, self.obj, out=self.obj)
        torch.where(better.view(-1, *([1] * (x.dim() - 1))), x.detach(), self.x, out=self.x)


def _random_start(
    x0: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, radius: float, gen: torch.Generator
) -> torch.Tensor:
    noise = torch.rand(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
    return torch.clamp(x0 + (2.0 * noise - 1.0) * radius, min=lo, max=hi)


class _Objectives:
    """What a trajectory steps along (`step`) and what it keeps its best iterate by (`judge`):
    the same function unless a surrogate stands in for the image score.

    Every step is a sign step, so its size never depends on the objective's scale; the lse
    surrogate's temperature is measured in the spread of each image's clean units, so its
    direction does not either (`pgray.attacks.objectives.unit_spread`)."""

    def __init__(self, labels: torch.Tensor, cfg: AttackConfig,
                 image_labels: torch.Tensor | None = None,
                 spread: torch.Tensor | None = None) -> None:
        self.judge = make_objective(labels, cfg.objective, image_labels=image_labels)
        self.step = self.judge if cfg.surrogate == "none" else make_objective(
            labels, cfg.objective, surrogate=cfg.surrogate, temperature=cfg.temperature,
            image_labels=image_labels, spread=spread)

    @classmethod
    def at_clean(cls, model: nn.Module, x0: torch.Tensor, labels: torch.Tensor,
                 cfg: AttackConfig, image_labels: torch.Tensor | None = None
                 ) -> _Objectives:
        """The objectives of an attack from `x0`: a surrogate measures its temperature there
        (one forward pass, only when there is a surrogate)."""
        spread = None
        if cfg.surrogate != "none":
            with torch.no_grad():
                _, units = outputs_fp32(model, x0, autocast(x0.device, cfg.precision))
            spread = unit_spread(units)
        return cls(labels, cfg, image_labels, spread)

    def both(self, scores: torch.Tensor, units: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        step = self.step(scores, units)
        return step, (step if self.step is self.judge else self.judge(scores, units))


def _pgd_run(
    model: nn.Module,
    start: torch.Tensor,
    bounds: tuple[torch.Tensor, torch.Tensor],
    alpha: float,
    steps: int,
    objectives: _Objectives,
    cast: CastFactory,
    keep_best: bool,
    on_step: Callable[[int], None] | None,
) -> tuple[torch.Tensor, Best | None]:
    """One PGD trajectory. Returns the last iterate and, with keep_best, the best iterate seen.

    The iterate is one leaf tensor updated in place: no per-step copies, no .item().
    Clamping to [max(x0-eps, 0), min(x0+eps, 1)] equals projecting onto the ball and then
    clamping to [0, 1] (min/max are exact), in one op.
    """
    lo, hi = bounds
    x = start.requires_grad_(True)
    best = Best(start) if keep_best else None
    for i in range(steps):
        step_obj, judged = objectives.both(*outputs_fp32(model, x, cast()))
        grad = input_gradient(step_obj, x)
        with torch.no_grad():
            if best is not None:
                best.update(x, judged.detach())
            x.add_(grad.sign_(), alpha=alpha)
            x.clamp_(min=lo, max=hi)
        if on_step is not None:
            on_step(i)
    return x.detach(), best


def judged_objective(model: nn.Module, x: torch.Tensor, judge: Objective,
                     cast: contextlib.AbstractContextManager) -> torch.Tensor:
    with torch.no_grad():
        return judge(*outputs_fp32(model, x, cast))


def _pgd(
    model: nn.Module,
    x0: torch.Tensor,
    objectives: _Objectives,
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
        x, best = _pgd_run(
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


def prepare_inputs(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.device, torch.Tensor, torch.Tensor]:
    device = _model_device(model, images.device)
    x0 = images.detach().to(device=device, dtype=torch.float32)
    labels = labels.detach().to(device=device, dtype=torch.float32)
    if labels.dim() != 2 or labels.shape[0] != x0.shape[0]:
        raise ValueError(
            f"unit labels must be (B, U) with B = {x0.shape[0]} images, got {tuple(labels.shape)}"
        )
    return device, x0, labels


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
        from pgray.attacks.torchattacks_adapter import torchattacks_attack

        return torchattacks_attack(model, images, labels, cfg, seed=seed,
                                   image_labels=image_labels)
    if cfg.method == "random":  # the patch threat's black-box search: no gradient, no steps
        from pgray.attacks.patch_search import patch_random_search

        return patch_random_search(model, images, labels, cfg, seed=seed,
                                   image_labels=image_labels)
    _, x0, labels = prepare_inputs(model, images, labels)
    run = _pgd
    if cfg.threat == "patch":
        from pgray.attacks.patch import patch_pgd as run
    with frozen(model), eval_mode(model), torch.enable_grad():
        objectives = _Objectives.at_clean(model, x0, labels, cfg, image_labels)
        adv = run(model, x0, objectives, cfg, seed, on_step)
    return adv.to(images.device)
