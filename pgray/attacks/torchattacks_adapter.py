"""The same attacks through torchattacks 3.5.1 (PGD, APGD-CE, Square; PGDL2 and APGD with norm
L2 for the l2 threat): the detector is shown to
it as a two-class classifier whose second logit is the attack objective."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from pgray.attacks.objectives import make_objective
from pgray.attacks.pgd import Best, eval_mode, frozen, outputs_fp32, prepare_inputs
from pgray.config import AttackConfig
from pgray.core.device import autocast
from pgray.errors import ConfigError

# Square is a classification attack: it stops working on an image once its margin turns
# negative. Class 0's logit sits this far above any objective, so the margin never turns and
# Square spends every query raising the objective (float64 keeps the small gains visible).
_NEVER_FOOLED = 1e6


class TwoClassView(nn.Module):
    """The detector seen as a two-class classifier for torchattacks: logits [0, objective].

    With target class 0, cross-entropy is softplus(objective), whose input gradient is
    sigmoid(objective) > 0 times the objective's gradient, image by image: the same sign, so
    the same PGD step. (In fp32, sigmoid underflows only for objectives below about -80.)
    With `margin_offset`, class 0's logit is that constant instead (Square's margin).
    """

    def __init__(self, model: nn.Module, labels: torch.Tensor, objective: str = "mask",
                 precision: str = "fp32", margin_offset: float | None = None,
                 image_labels: torch.Tensor | None = None) -> None:
        super().__init__()
        self.model = model
        self.precision = precision
        self.margin_offset = margin_offset
        self._objective = make_objective(labels.float(), objective, image_labels=image_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        obj = self._objective(*outputs_fp32(self.model, x, autocast(x.device, self.precision)))
        # A detector without input gradients still gives torchattacks a graph (of zeros), so
        # the attack runs and the suite's zero-gradient check reports it.
        obj = obj + 0.0 * x.flatten(1).sum(dim=1)
        if self.margin_offset is None:
            return torch.stack([torch.zeros_like(obj), obj], dim=1)
        obj = obj.double()
        return torch.stack([torch.full_like(obj, self.margin_offset), obj], dim=1)


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
            best.update(adv, view(adv)[:, 1])
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
    view = TwoClassView(model, labels, cfg.objective, cfg.precision, margin_offset=offset,
                        image_labels=image_labels)
    with frozen(model), eval_mode(model), torch.enable_grad(), _seeded(seed, device):
        adv = _run_torchattacks(view, x0, cfg, seed)
    return adv.detach().to(images.device)
