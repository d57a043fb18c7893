"""The same attacks through torchattacks 3.5.1 (PGD, APGD-CE or Square; PGDL2 and APGD with norm
L2 for the l2 threat): the detector is shown to it as a two-class classifier whose second
logit is the attack objective, normalised per image so that no attack's step depends on the
detector's scale or confidence (`TwoClassView`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from pgray.attacks.objectives import make_objective, positive_scale
from pgray.attacks.trajectory import (
    Best,
    eval_mode,
    frozen,
    input_gradient,
    outputs_fp32,
    prepare_inputs,
)
from pgray.config import AttackConfig
from pgray.core.device import autocast
from pgray.errors import ConfigError

# Where every image's second logit starts: two-class cross-entropy is softplus(logit), whose
# slope sigmoid(10) = 1 - 5e-5 is 1 for every purpose here, and stays near 1 unless an
# iterate loses ten gradient-lengths of objective.
MARGIN = 10.0
# Square is a classification attack: it stops working on an image once its margin turns
# negative. Class 0's logit sits this far above the normalised objective (which moves by a
# few units), so the margin never turns and Square spends every query raising the objective;
# float64 resolves changes of 1e-7 at this offset.
_NEVER_FOOLED = 1e9


class TwoClassView(nn.Module):
    """The detector seen as a two-class classifier for torchattacks: logits [0, h].

    h = MARGIN + (objective - objective at the clean image) / scale, per image, where scale
    is the norm of the objective's input gradient at the clean image (`positive_scale` where
    it is 0). A detector whose scores are multiplied by a constant and shifted gives the same
    h, so the same trajectory; h starts at MARGIN with a gradient of norm 1, so cross-entropy
    (softplus(h), even averaged over a batch, as PGDL2 does before dividing by the gradient's
    norm plus 1e-10) passes every image a gradient of the objective's direction and of a
    size that does not depend on how confident the detector is. APGD and Square compare loss
    values per image only, which an increasing map of the objective keeps.

    With `margin_offset` (Square, a black-box attack), class 0's logit is that constant, the
    logits are float64, and the scale is the spread of the clean objectives over the batch:
    no gradient is asked for, so a detector with masked gradients cannot distort it. (APGD's
    bookkeeping needs float32 logits; the gradient attacks get those.)

    The view is calibrated on the clean images `x0` and takes exactly those images' batch.
    """

    def __init__(self, model: nn.Module, labels: torch.Tensor, x0: torch.Tensor,
                 objective: str = "mask", precision: str = "fp32",
                 margin_offset: float | None = None,
                 image_labels: torch.Tensor | None = None) -> None:
        super().__init__()
        self.model = model
        self.precision = precision
        self.margin_offset = margin_offset
        self._objective = make_objective(labels.float(), objective, image_labels=image_labels)
        clean, scale = (self._gradient_calibration(x0) if margin_offset is None
                        else self._spread_calibration(x0))
        self.origin = clean.detach().double()
        self.scale = positive_scale(scale)

    def _gradient_calibration(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The clean objective and the norm of its input gradient, per image."""
        with torch.enable_grad():
            x = x0.detach().clone().requires_grad_(True)
            clean = self.objective(x)
            return clean, input_gradient(clean, x).flatten(1).norm(dim=1).double()

    def _spread_calibration(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The clean objective, and its spread over the batch as every image's scale."""
        with torch.no_grad():
            clean = self.objective(x0)
        return clean, clean.double().std(unbiased=False).expand(clean.shape[0])

    def objective(self, x: torch.Tensor) -> torch.Tensor:
        """The attack objective itself (B,), float32."""
        obj = self._objective(*outputs_fp32(self.model, x, autocast(x.device, self.precision)))
        # A detector without input gradients still gives torchattacks a graph (of zeros), so
        # the attack runs and the suite's zero-gradient check reports it.
        return obj + 0.0 * x.flatten(1).sum(dim=1)

    def normalised(self, x: torch.Tensor) -> torch.Tensor:
        """h (B,), float64: the objective in gradient-lengths from the clean image, + MARGIN."""
        if x.shape[0] != self.origin.shape[0]:
            raise RuntimeError(f"the view was calibrated on {self.origin.shape[0]} images and"
                               f" got {x.shape[0]}: its per-image scales would not match")
        return MARGIN + (self.objective(x).double() - self.origin) / self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.normalised(x)
        if self.margin_offset is None:
            return torch.stack([torch.zeros_like(h), h], dim=1).float()
        return torch.stack([torch.full_like(h, self.margin_offset), h], dim=1)


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the global RNG torchattacks draws from, without leaking the seed to the caller."""
    devices: list[int] = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _run_torchattacks(view: TwoClassView, x0: torch.Tensor, cfg: AttackConfig, seed: int):
    import torchattacks  # lazy: about 1.5 s to import

    target = torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device)
    norm = "L2" if cfg.threat == "l2" else "Linf"
    if cfg.method == "apgd":
        atk = torchattacks.APGD(
            view, norm=norm, eps=cfg.eps_unit, steps=cfg.steps, n_restarts=cfg.restarts,
            seed=seed, loss="ce",
        )
        atk.set_device(x0.device)
        # best_loss=True keeps, per image, the iterate and restart with the highest loss; the
        # default (classification) path would stop at the first sign change of the objective.
        _, adv = atk.perturb(x0, target, best_loss=True)
        return adv
    if cfg.method == "square":
        atk = torchattacks.Square(view, norm=norm, eps=cfg.eps_unit, n_queries=cfg.steps,
                                  n_restarts=1, seed=seed, loss="margin")
        atk.set_device(x0.device)
        atk.init_hyperparam(x0)
        # attack_single_run, not perturb: perturb keeps an image's result only when it is
        # misclassified, which the view never lets happen; the single run returns, per image,
        # the queried point with the smallest margin, i.e. the largest objective.
        _, adv = atk.attack_single_run(x0, target)
        return adv.float()
    if cfg.keep_best:
        raise ConfigError("keep_best: torchattacks' PGD returns its last iterate; use library pgray")
    # PGDL2: steps along the normalised gradient, projection onto the L2 ball, then [0, 1]
    pgd = torchattacks.PGDL2 if cfg.threat == "l2" else torchattacks.PGD
    atk = pgd(
        view, eps=cfg.eps_unit, alpha=cfg.alpha_unit, steps=cfg.steps,
        random_start=cfg.random_start,
    )
    atk.set_device(x0.device)
    best = Best(x0)
    for r in range(cfg.restarts):
        atk.random_start = cfg.random_start or r > 0  # same rule as pgray's restarts
        adv = atk(x0, target)
        if cfg.restarts == 1:
            return adv
        with torch.no_grad():
            best.update(adv, view.objective(adv))
    return best.x


def torchattacks_attack(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: AttackConfig,
    seed: int = 0,
    image_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """The same attack through torchattacks 3.5.1 (PGD, APGD-CE or Square) on `TwoClassView`.

    APGD always starts at random (its own rule) and returns its best iterate per image; Square
    queries the detector only (no gradient) and returns its best query per image.
    """
    cfg.validate()
    if cfg.eps == 0:
        return images.detach().clone()
    device, x0, labels = prepare_inputs(model, images, labels)
    offset = _NEVER_FOOLED if cfg.method == "square" else None
    with frozen(model), eval_mode(model), torch.enable_grad(), _seeded(seed, device):
        view = TwoClassView(model, labels, x0, cfg.objective, cfg.precision,
                            margin_offset=offset, image_labels=image_labels)
        adv = _run_torchattacks(view, x0, cfg, seed)
    return adv.detach().to(images.device)
