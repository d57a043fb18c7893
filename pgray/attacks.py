"""L-infinity attacks on patch-logit anomaly detectors (METHOD.md section 4).

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

from pgray.config import AttackConfig
from pgray.errors import ConfigError

# Patch logits (B, N) float32 -> per-image objective (B,), maximised by the attack.
Objective = Callable[[torch.Tensor], torch.Tensor]
StepCallback = Callable[[int], None]

_COUNT_EPS = 1e-8  # the reference's guard for images without normal or anomalous patches


def _mask_weights(patch_labels: torch.Tensor) -> torch.Tensor:
    """Per-patch weights w with sum(logits * w) = mean(normal logits) - mean(anomalous logits).

    Folding both means into one weight tensor makes the objective a single multiply-sum in the
    attack loop instead of four reductions per step.
    """
    anomalous = patch_labels.float()
    normal = 1.0 - anomalous
    n_normal = normal.sum(dim=1, keepdim=True) + _COUNT_EPS
    n_anomalous = anomalous.sum(dim=1, keepdim=True) + _COUNT_EPS
    return normal / n_normal - anomalous / n_anomalous


def mask_objective(logits: torch.Tensor, patch_labels: torch.Tensor) -> torch.Tensor:
    """Mean logit of normal patches minus mean logit of anomalous patches, per image (B,).

    Maximising it raises normal patches and lowers anomalous ones: both hurt localization, and
    for a normal image (all labels 0) it raises every patch, which hurts detection.
    """
    _check_shapes(logits, patch_labels)
    return (logits.float() * _mask_weights(patch_labels)).sum(dim=1)


def _image_signs(patch_labels: torch.Tensor) -> torch.Tensor:
    """+1 for normal images (score pushed up), -1 for images with any anomalous patch."""
    anomalous = (patch_labels > 0.5).any(dim=1)
    return 1.0 - 2.0 * anomalous.float()


def image_score_objective(scores: torch.Tensor, patch_labels: torch.Tensor) -> torch.Tensor:
    """Image scores (B,) signed so that maximising them hurts detection."""
    return scores.float() * _image_signs(patch_labels)


def _check_shapes(logits: torch.Tensor, patch_labels: torch.Tensor) -> None:
    if logits.shape != patch_labels.shape:
        raise ValueError(
            f"patch labels {tuple(patch_labels.shape)} do not match the model's patch logits"
            f" {tuple(logits.shape)}"
        )


def make_objective(model: nn.Module, patch_labels: torch.Tensor, kind: str) -> Objective:
    """The objective as a closure over constants computed once (weights or signs)."""
    if kind == "mask":
        weights = _mask_weights(patch_labels)

        def mask(logits: torch.Tensor) -> torch.Tensor:
            _check_shapes(logits, weights)
            return (logits * weights).sum(dim=1)

        return mask
    if kind == "image_score":
        image_scores = getattr(model, "image_scores", None)
        if not callable(image_scores):
            raise ConfigError(
                f"objective: image_score needs a model with image_scores(logits);"
                f" {type(model).__name__} has none"
            )
        signs = _image_signs(patch_labels)

        def image_score(logits: torch.Tensor) -> torch.Tensor:
            _check_shapes(logits, patch_labels)
            return image_scores(logits).float() * signs

        return image_score
    raise ConfigError(f"objective: {kind!r} is not one of ['mask', 'image_score']")


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Turn off requires_grad on every parameter for the block, then restore each flag.

    Done once around the whole attack: toggling flags per step costs more than the step on a
    small model (STACK.md), and frozen weights make the backward stop at the input.
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


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' means bf16 where the accelerator supports it, fp32 elsewhere."""
    if precision != "auto":
        return precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else fallback


def _logits(
    model: nn.Module, x: torch.Tensor, cast: contextlib.AbstractContextManager
) -> torch.Tensor:
    with cast:
        out = model(x)
    return out.float()  # objective and its comparisons in fp32 even under bf16 autocast


CastFactory = Callable[[], contextlib.AbstractContextManager]


def _fresh_cast(device: torch.device, precision: str) -> CastFactory:
    # One context object per use: autocast objects hold their entry state, so sharing one
    # across entries is fragile.
    return lambda: _autocast(device, precision)


class _Best:
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
) -> tuple[torch.Tensor, _Best | None]:
    """One PGD trajectory. Returns the last iterate and, with keep_best, the best iterate seen.

    The iterate is one leaf tensor updated in place: no per-step copies, no .item().
    Clamping to [max(x0-eps, 0), min(x0+eps, 1)] equals projecting onto the ball and then
    clamping to [0, 1] (min/max are exact), in one op.
    """
    lo, hi = bounds
    x = start.requires_grad_(True)
    best = _Best(start) if keep_best else None
    for i in range(steps):
        obj = objective(_logits(model, x, cast()))
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
        return objective(_logits(model, x, cast))


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
    cast = _fresh_cast(x0.device, cfg.precision)
    # Restarts need a different start each time: later restarts start at random even when the
    # first one follows the reference (no random start), otherwise they would repeat it.
    gen = None
    if cfg.random_start or cfg.restarts > 1:
        gen = torch.Generator(device=x0.device)
        gen.manual_seed(seed)
    overall = _Best(x0) if (cfg.keep_best or cfg.restarts > 1) else None
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


def _prepare(
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
        return torchattacks_attack(model, images, patch_labels, cfg, seed=seed)
    _, x0, labels = _prepare(model, images, patch_labels)
    with frozen(model), eval_mode(model), torch.enable_grad():
        objective = make_objective(model, labels, cfg.objective)
        adv = _pgd(model, x0, objective, cfg, seed, on_step)
    return adv.to(images.device)


class TwoClassView(nn.Module):
    """The detector seen as a two-class classifier for torchattacks: logits [0, objective].

    With target class 0, cross-entropy is softplus(objective), whose input gradient is
    sigmoid(objective) > 0 times the objective's gradient, image by image: the same sign, so
    the same PGD step. (In fp32, sigmoid underflows only for objectives below about -80.)
    """

    def __init__(
        self,
        model: nn.Module,
        patch_labels: torch.Tensor,
        objective: str = "mask",
        precision: str = "fp32",
    ) -> None:
        super().__init__()
        self.model = model
        self.precision = precision
        self._objective = make_objective(model, patch_labels.float(), objective)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        obj = self._objective(_logits(self.model, x, _autocast(x.device, self.precision)))
        return torch.stack([torch.zeros_like(obj), obj], dim=1)


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
    if cfg.method == "apgd":
        atk = torchattacks.APGD(
            view, norm="Linf", eps=cfg.eps_unit, steps=cfg.steps, n_restarts=cfg.restarts,
            seed=seed, loss="ce",
        )
        atk.set_device(x0.device)
        # best_loss=True keeps, per image, the iterate and restart with the highest loss; the
        # default (classification) path would stop at the first sign change of the objective.
        _, adv = atk.perturb(x0, target, best_loss=True)
        return adv
    if cfg.keep_best:
        raise ConfigError("keep_best: torchattacks' PGD returns its last iterate; use library pgray")
    atk = torchattacks.PGD(
        view, eps=cfg.eps_unit, alpha=cfg.alpha_unit, steps=cfg.steps,
        random_start=cfg.random_start,
    )
    atk.set_device(x0.device)
    best = _Best(x0)
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
    patch_labels: torch.Tensor,
    cfg: AttackConfig,
    seed: int = 0,
) -> torch.Tensor:
    """The same attack through torchattacks 3.5.1 (PGD or APGD-CE) on `TwoClassView`.

    APGD always starts at random (its own rule) and returns its best iterate per image.
    """
    cfg.validate()
    if cfg.eps == 0:
        return images.detach().clone()
    device, x0, labels = _prepare(model, images, patch_labels)
    view = TwoClassView(model, labels, cfg.objective, cfg.precision)
    with frozen(model), eval_mode(model), torch.enable_grad(), _seeded(seed, device):
        adv = _run_torchattacks(view, x0, cfg, seed)
    return adv.detach().to(images.device)
