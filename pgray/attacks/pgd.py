"""L-infinity PGD on patch-logit anomaly detectors (docs/method.md, "Attack").

The attacked model maps images (B, 3, H, W) in [0, 1] to patch logits (B, N); the image-score
objective also needs `model.image_scores(logits) -> (B,)`. Attacks move the input only: the
weights are frozen once around the whole attack and the model runs in eval mode.

Default `attack` is the reference protocol: PGD, alpha = 2.5 * eps / steps, no random start,
last iterate, one projection onto the eps-ball intersected with [0, 1] per step. Stronger
variants (random start, restarts, best iterate, image-score objective, APGD) are opt-in and
recorded by `AttackConfig.describe()`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from pgray.attacks.objectives import Objective, make_objective
from pgray.config import AttackConfig
from pgray.core.device import autocast

StepCallback = Callable[[int], None]


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


def logits_fp32(
    model: nn.Module, x: torch.Tensor, cast: contextlib.AbstractContextManager
) -> torch.Tensor:
    with cast:
        out = model(x)
    return out.float()  # objective and its comparisons in fp32 even under bf16 autocast


CastFactory = Callable[[], contextlib.AbstractContextManager]


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
    x0: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, eps: float, gen: torch.Generator
) -> torch.Tensor:
    noise = torch.rand(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
    return torch.clamp(x0 + (2.0 * noise - 1.0) * eps, min=lo, max=hi)


def _pgd_run(
    model: nn.Module,
    start: torch.Tensor,
    bounds: tuple[torch.Tensor, torch.Tensor],
    alpha: float,
    steps: int,
    objective: Objective,
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
        obj = objective(logits_fp32(model, x, cast()))
        (grad,) = torch.autograd.grad(obj.sum(), x)
        with torch.no_grad():
            if best is not None:
                best.update(x, obj.detach())
            x.add_(grad.sign_(), alpha=alpha)
            x.clamp_(min=lo, max=hi)
        if on_step is not None:
            on_step(i)
    return x.detach(), best


def _final_objective(
    model: nn.Module, x: torch.Tensor, objective: Objective, cast: contextlib.AbstractContextManager
) -> torch.Tensor:
    with torch.no_grad():
        return objective(logits_fp32(model, x, cast))


def _pgd(
    model: nn.Module,
    x0: torch.Tensor,
    objective: Objective,
    cfg: AttackConfig,
    seed: int,
    on_step: StepCallback | None,
) -> torch.Tensor:
    eps, alpha = cfg.eps_unit, cfg.alpha_unit
    bounds = ((x0 - eps).clamp_(min=0.0), (x0 + eps).clamp_(max=1.0))
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
            start = _random_start(x0, *bounds, eps, gen)
        else:
            start = x0.clone()
        offset = r * cfg.steps
        step_cb = None if on_step is None else (lambda i, o=offset: on_step(o + i + 1))
        x, best = _pgd_run(
            model, start, bounds, alpha, cfg.steps, objective, cast, cfg.keep_best, step_cb
        )
        if overall is None:
            return x
        # The last iterate has not been scored yet: one extra forward per restart.
        final = _final_objective(model, x, objective, cast())
        if best is not None:
            best.update(x, final)
            x, final = best.x, best.obj
        overall.update(x, final)
    return overall.x


def prepare_inputs(
    model: nn.Module, images: torch.Tensor, patch_labels: torch.Tensor
) -> tuple[torch.device, torch.Tensor, torch.Tensor]:
    device = _model_device(model, images.device)
    x0 = images.detach().to(device=device, dtype=torch.float32)
    labels = patch_labels.detach().to(device=device, dtype=torch.float32)
    if labels.dim() != 2 or labels.shape[0] != x0.shape[0]:
        raise ValueError(
            f"patch labels must be (B, N) with B = {x0.shape[0]} images, got {tuple(labels.shape)}"
        )
    return device, x0, labels


def attack(
    model: nn.Module,
    images: torch.Tensor,
    patch_labels: torch.Tensor,
    cfg: AttackConfig,
    seed: int = 0,
    on_step: StepCallback | None = None,
) -> torch.Tensor:
    """Adversarial images (detached, float32, on the images' device) maximising the objective.

    images: (B, 3, H, W) in [0, 1]; patch_labels: (B, N) in {0, 1}. `on_step(k)` is called
    after each step with k = 1 .. restarts * steps. Weights are frozen and the model is in eval
    mode during the attack; both are restored afterwards.
    """
    cfg.validate()
    if cfg.eps == 0:
        return images.detach().clone()
    if cfg.library == "torchattacks":
        from pgray.attacks.torchattacks_adapter import torchattacks_attack

        return torchattacks_attack(model, images, patch_labels, cfg, seed=seed)
    _, x0, labels = prepare_inputs(model, images, patch_labels)
    with frozen(model), eval_mode(model), torch.enable_grad():
        objective = make_objective(model, labels, cfg.objective)
        adv = _pgd(model, x0, objective, cfg, seed, on_step)
    return adv.to(images.device)


