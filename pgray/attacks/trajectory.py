"""One trajectory of sign steps, and what every attack of pgray shares: frozen weights, eval
mode, the detector's outputs in fp32, input gradients, each image's best iterate so far.

The entry point `pgray.attacks.pgd.attack` and the threats' attacks (`attacks.pgd`'s L-infinity
PGD, `attacks.patch`, `attacks.patch_search`, `attacks.torchattacks_adapter`) build on this
module; it imports none of them.
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


class TrajectoryObjectives:
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
                 ) -> TrajectoryObjectives:
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


def pgd_trajectory(
    model: nn.Module,
    start: torch.Tensor,
    bounds: tuple[torch.Tensor, torch.Tensor],
    alpha: float,
    steps: int,
    objectives: TrajectoryObjectives,
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
