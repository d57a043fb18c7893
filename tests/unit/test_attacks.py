"""PGD and its torchattacks adapter on small real models with the PatchGuard interface."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pgray.attacks.objectives import (
    detector_outputs,
    image_score_objective,
    make_objective,
    mask_objective,
)
from pgray.attacks.pgd import attack
from pgray.attacks.torchattacks_adapter import TwoClassView, torchattacks_attack
from pgray.attacks.trajectory import frozen
from pgray.config import AttackConfig
from pgray.core.metrics import image_auroc
from pgray.errors import ConfigError

IMG = 32
CELL = 8
N_PATCHES = (IMG // CELL) ** 2


class TinyPatchNet(nn.Module):
    """Conv net: (B, 3, 32, 32) in [0, 1] -> (B, 16) logits, one per 8 x 8 cell."""

    def __init__(self, top_k: int = 3, dropout: float = 0.1) -> None:
        super().__init__()
        self.top_k = top_k
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.GELU(),
            nn.Dropout(dropout),  # makes train vs eval mode visible in the outputs
            nn.Conv2d(16, 32, CELL, stride=CELL),
            nn.GELU(),
            nn.Conv2d(32, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(1)

    def image_scores(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.topk(self.top_k, dim=1).values.mean(dim=1)


class TinyViTPatchNet(nn.Module):
    """A 2-block timm ViT at 32 px with patch 8 and a linear head on the patch tokens."""

    def __init__(self, top_k: int = 3) -> None:
        super().__init__()
        import timm

        self.top_k = top_k
        self.backbone = timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, img_size=IMG, patch_size=CELL, depth=2,
            embed_dim=64, num_heads=2, num_classes=0,
        )
        self.head = nn.Linear(64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.backbone.forward_features(x)[:, self.backbone.num_prefix_tokens :]
        return self.head(tokens).squeeze(-1)

    def image_scores(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.topk(self.top_k, dim=1).values.mean(dim=1)


def make_model(kind: str = "conv", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return (TinyPatchNet() if kind == "conv" else TinyViTPatchNet()).eval()


def make_batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noisy grey images; the second half gets one coloured square on a random cell."""
    g = torch.Generator().manual_seed(seed)
    x = 0.35 + 0.3 * torch.rand(n, 3, IMG, IMG, generator=g)
    patch_labels = torch.zeros(n, N_PATCHES)
    labels = torch.zeros(n)
    for i in range(n // 2, n):
        cell = int(torch.randint(0, N_PATCHES, (1,), generator=g))
        r, c = divmod(cell, IMG // CELL)
        x[i, :, r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL] = torch.rand(
            3, 1, 1, generator=g
        )
        patch_labels[i, cell] = 1.0
        labels[i] = 1.0
    return x, patch_labels, labels


def objective_of(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, kind: str = "mask"):
    with torch.no_grad():
        return make_objective(labels, kind)(*detector_outputs(model, x))


def cfg(**kw) -> AttackConfig:
    return AttackConfig(**({"eps": 8.0, "steps": 10} | kw))


@pytest.fixture(scope="module")
def conv() -> nn.Module:
    return make_model("conv")


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    """The conv net trained for 50 steps to find the pasted squares (clean AUROC near 1)."""
    model = make_model("conv")
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(50):
        x, y, _ = make_batch(32, seed=100 + step)
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return make_batch(8, seed=1)


# --- objectives -------------------------------------------------------------------------


def test_mask_objective_is_normal_mean_minus_anomalous_mean() -> None:
    logits = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[0, 0, 1, 1, 0, 0], [0.0] * 6, [1.0] * 6])
    got = mask_objective(logits, labels)
    expected = torch.stack([
        logits[0, [0, 1, 4, 5]].mean() - logits[0, [2, 3]].mean(),
        logits[1].mean(),  # no anomalous patch: only the normal mean
        -logits[2].mean(),
    ])
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_image_score_objective_pushes_normal_up_and_anomalous_down() -> None:
    scores = torch.tensor([1.5, 1.5, -2.0])
    labels = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert image_score_objective(scores, labels).tolist() == [1.5, -1.5, 2.0]


def test_image_score_objective_needs_image_scores() -> None:
    model = nn.Sequential(nn.Conv2d(3, 1, CELL, stride=CELL), nn.Flatten())
    x, y, _ = make_batch(2, seed=0)
    with pytest.raises(ConfigError, match="image_scores"):
        attack(model, x, y, cfg(objective="image_score"))


def test_patch_labels_that_do_not_fit_are_refused(conv, batch) -> None:
    x, _, _ = batch
    with pytest.raises(ValueError, match="unit labels"):
        attack(conv, x, torch.zeros(len(x), N_PATCHES + 1), cfg(steps=1))
    with pytest.raises(ValueError, match="unit labels"):
        attack(conv, x, torch.zeros(len(x) - 1, N_PATCHES), cfg(steps=1))


# --- the reference PGD ------------------------------------------------------------------


def test_one_step_is_the_reference_update(conv, batch) -> None:
    """x1 = clip(x0 + 2.5 * eps * sign(grad), x0 +- eps) clamped to [0, 1], steps = 1."""
    x, y, _ = batch
    x = x.clone()
    x[0, 0, :4] = 0.0  # pixels at the [0, 1] border exercise the clamp
    x[1, 1, :4] = 1.0
    eps = 8 / 255
    x_req = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(mask_objective(conv(x_req), y).sum(), x_req)
    moved = x + 2.5 * eps * grad.sign()
    expected = torch.min(torch.max(moved, x - eps), x + eps).clamp(0, 1)
    torch.testing.assert_close(attack(conv, x, y, cfg(steps=1)), expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("kind", ["conv", "vit"])
def test_pgd_matches_torchattacks_pgd(kind: str) -> None:
    model = make_model(kind)
    x, y, _ = make_batch(4, seed=2)
    c = cfg(steps=5)
    ours = attack(model, x, y, c)
    theirs = torchattacks_attack(model, x, y, c)
    assert (ours - x).abs().max() > 0.5 * c.eps_unit  # the attack moved the images
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    # attack() delegates to the adapter when asked for the library
    delegated = attack(model, x, y, dataclasses.replace(c, library="torchattacks"))
    torch.testing.assert_close(delegated, theirs, rtol=0, atol=0)


def test_two_class_view_gradient_is_the_objective_gradient_over_its_clean_norm(
    conv, batch
) -> None:
    x, y, _ = batch
    view = TwoClassView(conv, y, x)
    x1 = x.clone().requires_grad_(True)
    logits = view(x1)
    torch.testing.assert_close(logits[:, 1], torch.full((len(x),), 10.0))
    ce = F.cross_entropy(logits, torch.zeros(len(x), dtype=torch.long))
    (g_ce,) = torch.autograd.grad(ce, x1)
    x2 = x.clone().requires_grad_(True)
    obj = mask_objective(conv(x2), y)
    (g_obj,) = torch.autograd.grad(obj.sum(), x2)
    # d softplus(h) / dx = sigmoid(10) / |grad at clean| * do/dx, averaged over the batch
    norms = g_obj.flatten(1).norm(dim=1)
    scale = (torch.sigmoid(torch.tensor(10.0)) / norms / len(x)).view(-1, 1, 1, 1)
    torch.testing.assert_close(g_ce / scale, g_obj, rtol=1e-4,
                               atol=1e-5 * float(g_obj.abs().max()))
    assert torch.equal(g_ce.sign(), g_obj.sign())


@pytest.mark.parametrize("objective", ["mask", "image_score"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_attack_raises_objective_within_eps_ball(trained, batch, objective, precision) -> None:
    # The trained model: an untrained one's logits barely depend on the input, below bf16's
    # resolution, so its bf16 gradients are noise.
    conv = trained
    x, y, _ = batch
    c = cfg(objective=objective, precision=precision)
    adv = attack(conv, x, y, c)
    assert adv.dtype == torch.float32 and not adv.requires_grad
    assert (adv - x).abs().max() <= c.eps_unit + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    before = objective_of(conv, x, y, objective)
    after = objective_of(conv, adv, y, objective)
    assert (after > before).all(), (before, after)


def test_eps_zero_returns_the_input(conv, batch) -> None:
    x, y, _ = batch
    for library in ("pgray", "torchattacks"):
        assert torch.equal(attack(conv, x, y, cfg(eps=0.0, library=library)), x)


def test_works_inside_no_grad_and_leaves_the_model_as_it_was(batch) -> None:
    x, y, _ = batch
    model = make_model("conv")
    model.train()
    model.body[0].eval()  # a mixed mode must survive
    model.body[3].weight.requires_grad_(False)
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        adv1 = attack(model, x, y, cfg())
    adv2 = attack(model, x, y, cfg())
    # dropout is on in train mode: equal results show the attack ran in eval mode
    assert torch.equal(adv1, adv2)
    assert not torch.equal(adv1, x)
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k


def test_frozen_restores_flags_after_an_error() -> None:
    model = make_model("conv")
    model.body[0].bias.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(RuntimeError), frozen(model):
        assert not any(p.requires_grad for p in model.parameters())
        raise RuntimeError("boom")
    assert [p.requires_grad for p in model.parameters()] == flags


def test_on_step_counts_every_step_of_every_restart(conv, batch) -> None:
    x, y, _ = batch
    seen: list[int] = []
    attack(conv, x, y, cfg(steps=4, restarts=3), on_step=seen.append)
    assert seen == list(range(1, 13))


# --- stronger variants ------------------------------------------------------------------


def test_random_start_is_seeded_and_stays_in_the_ball(conv, batch) -> None:
    x, y, _ = batch
    c = cfg(random_start=True, steps=3)
    a, b, other = (attack(conv, x, y, c, seed=s) for s in (5, 5, 6))
    assert torch.equal(a, b)
    assert not torch.equal(a, other)
    assert not torch.equal(a, attack(conv, x, y, cfg(steps=3)))
    for adv in (a, other):
        assert (adv - x).abs().max() <= c.eps_unit + 1e-6
        assert adv.min() >= 0 and adv.max() <= 1


def test_keep_best_and_restarts_never_end_worse_than_plain_pgd(trained, batch) -> None:
    conv = trained  # nonlinear enough for the sign of the gradient to change along the way
    x, y, _ = batch
    # A step as large as eps makes PGD oscillate, so the last iterate is often not the best.
    base = cfg(steps=8, alpha=8.0)
    plain = objective_of(conv, attack(conv, x, y, base), y)
    variants = {
        "keep_best": cfg(steps=8, alpha=8.0, keep_best=True),
        "restarts": cfg(steps=8, alpha=8.0, restarts=3),
        "both": cfg(steps=8, alpha=8.0, restarts=3, keep_best=True),
    }
    for name, c in variants.items():
        adv = attack(conv, x, y, c)
        assert (adv - x).abs().max() <= c.eps_unit + 1e-6, name
        better = objective_of(conv, adv, y)
        assert (better >= plain - 1e-6).all(), (name, plain, better)


class BowlPatchNet(nn.Module):
    """Patch logit -(cell mean - target)^2: PGD with a large step oscillates around the top."""

    def __init__(self, target: float) -> None:
        super().__init__()
        self.target = target
        self.scale = nn.Parameter(torch.ones(()))  # a weight to freeze, like a real model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cells = F.avg_pool2d(x.mean(dim=1, keepdim=True), CELL).flatten(1)
        return -self.scale * (cells - self.target) ** 2


def test_keep_best_returns_the_best_iterate_not_the_last() -> None:
    eps = 8 / 255
    model = BowlPatchNet(target=0.5 + 0.5 * eps)
    x = torch.full((2, 3, IMG, IMG), 0.5)
    y = torch.zeros(2, N_PATCHES)
    # alpha = 0.625 eps: 0.5 -> 0.5 + 0.625 eps (closest to the top) -> 0.5 -> ... -> 0.5
    c = cfg(steps=4, alpha=5.0)
    plain = attack(model, x, y, c)
    best = attack(model, x, y, dataclasses.replace(c, keep_best=True))
    torch.testing.assert_close(plain, x, rtol=0, atol=1e-6)
    torch.testing.assert_close(best, x + 0.625 * eps, rtol=0, atol=1e-6)
    # Random restarts end farther from the top here; the per-image choice keeps the first run.
    restarted = attack(model, x, y, dataclasses.replace(c, restarts=4))
    torch.testing.assert_close(restarted, plain, rtol=0, atol=0)
    both = attack(model, x, y, dataclasses.replace(c, restarts=4, keep_best=True))
    assert (objective_of(model, both, y) >= objective_of(model, best, y)).all()


def test_attack_lowers_image_auroc_of_a_trained_detector(trained) -> None:
    model = trained
    x, y, labels = make_batch(64, seed=7)
    with torch.no_grad():
        clean = image_auroc(model.image_scores(model(x)), labels)
        scores = {
            objective: model.image_scores(
                model(attack(model, x, y, cfg(eps=16.0, objective=objective)))
            )
            for objective in ("mask", "image_score")
        }
    assert clean > 0.97
    # Measured: 1.0 clean, 0.89 under the mask objective, 0.60 under the image-score one
    # (the mask objective spreads its effort over all patches, the image score is top-k).
    assert image_auroc(scores["mask"], labels) < clean - 0.05
    assert image_auroc(scores["image_score"], labels) < clean - 0.2


# --- torchattacks adapter ---------------------------------------------------------------


def test_apgd_is_seeded_in_the_ball_and_raises_the_objective(conv, batch) -> None:
    x, y, _ = batch
    c = cfg(method="apgd", library="torchattacks", steps=10, restarts=2)
    rng_before = torch.random.get_rng_state()
    a = attack(conv, x, y, c, seed=3)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # caller's RNG untouched
    assert torch.equal(a, attack(conv, x, y, c, seed=3))
    assert (a - x).abs().max() <= c.eps_unit + 1e-6
    assert a.min() >= 0 and a.max() <= 1
    assert (objective_of(conv, a, y) > objective_of(conv, x, y)).all()


def test_torchattacks_restarts_never_end_worse_and_keep_best_is_refused(conv, batch) -> None:
    x, y, _ = batch
    base = cfg(library="torchattacks", steps=6, alpha=8.0)
    plain = objective_of(conv, torchattacks_attack(conv, x, y, base), y)
    restarted = torchattacks_attack(conv, x, y, dataclasses.replace(base, restarts=3))
    assert (objective_of(conv, restarted, y) >= plain - 1e-6).all()
    with pytest.raises(ConfigError, match="keep_best"):
        torchattacks_attack(conv, x, y, dataclasses.replace(base, keep_best=True))


def test_apgd_through_pgray_library_is_a_config_error(conv, batch) -> None:
    x, y, _ = batch
    with pytest.raises(ConfigError, match="apgd"):
        attack(conv, x, y, cfg(method="apgd"))
