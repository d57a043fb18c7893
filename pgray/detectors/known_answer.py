"""Detectors whose exact worst case is known in closed form, to check that the attack suite
reaches it (tests/unit/test_known_answer.py, benchmarks/known_answer.py).

`PixelLinearDetector`: every pixel p is a unit, u_p = w_p . x_p + b over its three channels,
and the image score is the mean of the top-k units (k = every unit: the plain mean, a linear
score of the image). Each pixel feeds one unit only, and the top-k mean never falls when a
unit rises, so whatever raises (lowers) every unit as far as its own pixels allow raises
(lowers) the score as far as it can go:
- linf, radius eps: every channel moves to clip(x + eps * sign(w)) (to raise; the opposite
  sign to lower). Exact, clipping included.
- patch, a square of a given side: inside it every channel goes to 1 where its weight is
  positive, 0 elsewhere (the best 0/1 filling), for every place the square can take; the
  worst place wins. On flat images with weights that do not vary over the image, every place
  gives the same answer, so an attack that tries a few random places can reach it.
- l2, radius r: a linear score (k = all) moves by r ||W|| / U, along W; the maximum (k = 1)
  rises by the largest u_p + r ||w_p|| (the whole budget on one pixel) and falls to the
  level t where the units above it, each lowered to t along its own w_p, use the budget up
  (sum over p of ((u_p - t)+ / ||w_p||)^2 = r^2, a water-filling). Both hold while no pixel
  leaves [0, 1]: `exact_adversarial` checks that and refuses otherwise. Other k have no
  closed form here.
Images are independent, so raising every normal image's score and lowering every anomalous
one's as far as possible is the image AUROC's minimum: `exact_worst_auroc`.

`known_answer_split` makes the images: greys with a little texture (anomalous ones lighter,
with a lighter square, their mask), or flat greys for the patch threat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from pgray.attacks.patch import patch_side
from pgray.detectors.base import PixelMapDetector
from pgray.errors import ConfigError

_BOUND_TOL = 1e-6  # how far past [0, 1] a closed-form optimum may sit (rounding)


class PixelLinearDetector(PixelMapDetector):
    """Units u_p = w_p . x_p + b, one per pixel; image score: the mean of the top-k units."""

    def __init__(self, weight: torch.Tensor, bias: float = 0.0, top_k: int | None = None
                 ) -> None:
        super().__init__()
        if weight.dim() != 3 or weight.shape[0] != 3 or weight.shape[1] != weight.shape[2]:
            raise ValueError(f"weight must be (3, S, S), got {tuple(weight.shape)}")
        self.img_size = int(weight.shape[-1])
        units = self.img_size ** 2
        self.top_k = units if top_k is None else int(top_k)
        if not 1 <= self.top_k <= units:
            raise ValueError(f"top_k must be in [1, {units}], got {top_k}")
        # a (frozen) parameter, not a buffer: torchattacks finds the device from parameters
        self.weight = nn.Parameter(weight.detach().float().clone(), requires_grad=False)
        self.bias = float(bias)

    def units(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.weight).sum(dim=1).flatten(1) + self.bias

    def image_scores(self, units: torch.Tensor) -> torch.Tensor:
        return units.topk(self.top_k, dim=1).values.mean(dim=1)

    def maps_and_scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        units = self.units(x)
        return units.reshape(-1, 1, self.img_size, self.img_size), self.image_scores(units)

    @property
    def pixel_norms(self) -> torch.Tensor:
        """||w_p|| per pixel, flattened (U,)."""
        return self.weight.norm(dim=0).flatten()


def _signs(labels: torch.Tensor) -> torch.Tensor:
    """+1 (raise the score) for normal images, -1 (lower it) for anomalous ones, (B,)."""
    return 1.0 - 2.0 * (labels.reshape(-1).float() > 0.5).float()


def exact_adversarial(detector: PixelLinearDetector, x: torch.Tensor, labels: torch.Tensor,
                      threat: str, eps: float) -> torch.Tensor:
    """The images that harm each image's detection most within the budget (`eps` in the
    threat's unit, as `AttackConfig.eps`: linf in 1/255, l2 on [0, 1] pixels, patch an area
    fraction): normal images' scores raised, anomalous ones' lowered, as far as they go."""
    signs = _signs(labels).to(x.device)
    if threat == "linf":
        step = (eps / 255.0) * torch.sign(detector.weight) * signs.view(-1, 1, 1, 1)
        return (x + step).clamp(0.0, 1.0)
    if threat == "patch":
        return _best_patch(detector, x, signs, patch_side(eps, *x.shape[-2:]))
    if threat == "l2":
        adv = _l2_optimum(detector, x, signs, float(eps))
        if adv.min() < -_BOUND_TOL or adv.max() > 1.0 + _BOUND_TOL:
            raise ValueError("the l2 optimum leaves [0, 1]: the closed form ignores clipping;"
                             " take a smaller radius or pixels further from 0 and 1")
        return adv
    raise ConfigError(f"threat: {threat!r} is not one of ['linf', 'l2', 'patch']")


def _best_patch(detector: PixelLinearDetector, x: torch.Tensor, signs: torch.Tensor,
                side: int) -> torch.Tensor:
    """Per image, the best 0/1 filling of the square at its worst place (every place tried)."""
    height, width = x.shape[-2:]
    fill = (torch.sign(detector.weight) * signs.view(-1, 1, 1, 1) > 0).float()
    best = x.clone()
    best_value = torch.full((x.shape[0],), -math.inf, device=x.device)
    for row in range(height - side + 1):
        for col in range(width - side + 1):
            adv = x.clone()
            square = (slice(None), slice(None), slice(row, row + side), slice(col, col + side))
            adv[square] = fill[square]
            value = detector.score(adv)[0] * signs
            better = value > best_value
            best[better] = adv[better]
            best_value = torch.where(better, value, best_value)
    return best


def _l2_optimum(detector: PixelLinearDetector, x: torch.Tensor, signs: torch.Tensor,
                radius: float) -> torch.Tensor:
    units_total = detector.img_size ** 2
    direction = detector.weight.unsqueeze(0) * signs.view(-1, 1, 1, 1)
    if detector.top_k == units_total:  # linear: the whole budget along W
        return x + radius * direction / detector.weight.norm()
    if detector.top_k != 1:
        raise ValueError(f"no closed form under l2 for the top-{detector.top_k} mean")
    norms = detector.pixel_norms.double()
    units = detector.units(x).double()
    moves = torch.zeros_like(units)  # how far each unit moves, in units of its own ||w_p||
    raise_ = signs > 0
    if raise_.any():
        best = (units[raise_] + radius * norms).argmax(dim=1)
        rows = moves[raise_]
        rows[torch.arange(len(best)), best] = radius
        moves[raise_] = rows
    if (~raise_).any():
        level = _water_level(units[~raise_], norms, radius)
        moves[~raise_] = (units[~raise_] - level.unsqueeze(1)).clamp(min=0) / norms
    per_pixel = (moves / norms).float().reshape(-1, 1, detector.img_size, detector.img_size)
    return x + direction * per_pixel


def _water_level(units: torch.Tensor, norms: torch.Tensor, radius: float) -> torch.Tensor:
    """Per image, the level t with sum(((u - t)+ / ||w||)^2) = radius^2 (float64 bisection):
    the lowest maximum an l2 budget can bring the units to."""
    high = units.max(dim=1).values
    low = high - radius * norms.max() - 1.0
    for _ in range(200):
        mid = (low + high) / 2
        used = (((units - mid.unsqueeze(1)).clamp(min=0) / norms) ** 2).sum(dim=1)
        low = torch.where(used > radius ** 2, mid, low)
        high = torch.where(used > radius ** 2, high, mid)
    return high


@torch.no_grad()
def exact_worst_auroc(detector: PixelLinearDetector, dataset: Dataset, threat: str,
                      eps: float) -> tuple[float, float]:
    """(clean image AUROC, the exact worst-case image AUROC) of the detector on the split."""
    from pgray.core.metrics import image_auroc

    x = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    labels = torch.tensor([s.label for s in dataset.samples])
    clean = detector.score(x)[0]
    worst = detector.score(exact_adversarial(detector, x, labels, threat, eps))[0]
    return image_auroc(clean.numpy(), labels.numpy()), image_auroc(worst.numpy(),
                                                                   labels.numpy())


@dataclass(frozen=True)
class KnownSample:
    label: int  # 0 normal, 1 anomalous


class KnownAnswerSplit(Dataset):
    """A test split in memory, with the items `pgray.core.scoring` reads."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, labels: list[int]) -> None:
        self.images, self.masks = images, masks
        self.samples = [KnownSample(int(y)) for y in labels]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index], "mask": self.masks[index],
                "label": torch.tensor(self.samples[index].label, dtype=torch.int64)}


def known_answer_split(n_normal: int, n_anomalous: int, size: int = 32, *, flat: bool = False,
                       seed: int = 0) -> KnownAnswerSplit:
    """Grey images, normal ones darker (grey 0.35-0.50) than anomalous ones (0.42-0.57), so
    that the two overlap a little clean and more under attack. Textured (flat=False): +-0.05
    noise per pixel, and each anomalous image a square of a quarter of its side 0.1 lighter,
    which is its mask. Flat: one grey per image (its whole area the anomalous mask), so a
    patch harms every place alike. Every pixel stays in [0.3, 0.72]: small budgets never
    clip."""
    gen = torch.Generator().manual_seed(seed)
    labels = [0] * n_normal + [1] * n_anomalous
    n = len(labels)
    anomalous = torch.tensor(labels, dtype=torch.bool)
    grey = 0.35 + 0.15 * torch.rand(n, generator=gen) + 0.07 * anomalous.float()
    images = grey.view(n, 1, 1, 1).expand(n, 3, size, size).clone()
    masks = torch.zeros(n, 1, size, size)
    if flat:
        masks[anomalous] = 1.0
        return KnownAnswerSplit(images, masks, labels)
    images += 0.05 * (2 * torch.rand(n, 3, size, size, generator=gen) - 1)
    side = max(1, size // 4)
    for i in torch.nonzero(anomalous).flatten().tolist():
        r, c = (int(v) for v in torch.randint(0, size - side + 1, (2,), generator=gen))
        images[i, :, r:r + side, c:c + side] += 0.1
        masks[i, :, r:r + side, c:c + side] = 1.0
    return KnownAnswerSplit(images, masks, labels)


def pixel_weights(size: int = 32, *, uniform: bool = False, seed: int = 0) -> torch.Tensor:
    """(3, size, size) positive weights: 0.5-1.5 per pixel and channel, or one value per
    channel over the whole image (`uniform`, which makes every patch place alike)."""
    gen = torch.Generator().manual_seed(seed)
    if uniform:
        return (0.5 + torch.rand(3, 1, 1, generator=gen)).expand(3, size, size).clone()
    return 0.5 + torch.rand(3, size, size, generator=gen)


@dataclass(frozen=True)
class KnownAnswerCase:
    """One check: a detector, a split, a threat and budget; the exact answer is computed."""

    name: str
    threat: str
    eps: float
    detector: PixelLinearDetector
    split: KnownAnswerSplit


def known_answer_cases(size: int = 32, n_per_class: int = 20, seed: int = 0
                       ) -> list[KnownAnswerCase]:
    """The checks of every threat: a linear score, and a non-linear one (a top-k mean under
    linf and patch, the maximum under l2), and a confident linear one under l2, at budgets where the exact worst case lies well
    below the clean AUROC and above 0. (Under a patch, the top-64 mean of a flat image can
    only rise: a 2 x 2 square reaches 4 of its 64 top units, and lowering them leaves 64
    others as high.)"""
    textured = known_answer_split(n_per_class, n_per_class, size, seed=seed)
    flat = known_answer_split(n_per_class, n_per_class, size, flat=True, seed=seed)
    varied = pixel_weights(size, seed=seed)
    uniform = pixel_weights(size, uniform=True, seed=seed)

    def case(name, threat, eps, top_k, weights, split, bias=0.0):
        return KnownAnswerCase(name, threat, eps,
                               PixelLinearDetector(weights, bias=bias, top_k=top_k), split)

    return [
        case("linear", "linf", 8.0, None, varied, textured),
        case("top-4 mean", "linf", 8.0, 4, varied, textured),
        case("linear", "l2", 1.0, None, varied, textured),
        # every score 40 lower: a detector sure that every image is normal, same ranking
        case("linear, bias -40", "l2", 1.0, None, varied, textured, bias=-40.0),
        case("maximum", "l2", 0.1, 1, varied, textured),
        case("linear", "patch", 0.1, None, uniform, flat),
        case("top-64 mean", "patch", 0.005, 64, uniform, flat),
    ]
