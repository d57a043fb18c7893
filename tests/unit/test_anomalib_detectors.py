"""The anomalib adapters on tiny synthetic 32 px images with random-init backbones (resnet18; a
ViT cut after two blocks for GeneralAD): they fit, score, pass input gradients to every image
(anomalib's own forward does not), agree with anomalib's forward on clean images, lose AUROC to
pgray's PGD, and round-trip a state dict."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pgray.attacks.objectives import image_signs, mask_objective, unit_labels
from pgray.attacks.pgd import attack
from pgray.attacks.trajectory import frozen
from pgray.config import AttackConfig
from pgray.core.metrics import image_auroc
from pgray.detectors.anomalib_models import ANOMALIB_DETECTORS, build, imagenet_normalize
from pgray.errors import ConfigError

IMG = 32
NAMES = ("patchcore", "padim", "reverse_distillation", "stfpm", "general_ad")
TRAINED = ("reverse_distillation", "stfpm", "general_ad")
# Small enough for a busy 2-core CPU: two or three layers, a few epochs, a partial coreset.
OPTIONS = {
    "patchcore": {"coreset_ratio": 0.5},
    "padim": {"layers": ["layer1", "layer2"], "n_features": 32},
    "reverse_distillation": {"epochs": 3},
    "stfpm": {"epochs": 3, "lr": 0.05},
    # a random ViT with 8 px patches (16 patches at 32 px), cut after block 2
    "general_ad": {"backbone": "vit_small_patch8_224.dino", "layers": [2], "hidden_dim": 64,
                   "top_k": 3, "epochs": 10, "lr": 1e-3},
}
PGD = AttackConfig(eps=8.0, steps=5, objective="image_score", random_start=False)


def smooth_noise(n: int, seed: int) -> torch.Tensor:
    """Normal images: low-frequency colour noise in [0.3, 0.7]."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, IMG // 8, IMG // 8, generator=g)
    up = F.interpolate(low, size=(IMG, IMG), mode="bicubic", align_corners=False)
    return (0.3 + 0.4 * up).clamp(0.0, 1.0)


def with_squares(x: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Anomalous images: a white 8 x 8 square at a random place; the mask is the square."""
    g = torch.Generator().manual_seed(seed)
    x, masks = x.clone(), torch.zeros(x.shape[0], 1, IMG, IMG)
    side = IMG // 4
    for i in range(x.shape[0]):
        r, c = torch.randint(0, IMG - side, (2,), generator=g).tolist()
        x[i, :, r:r + side, c:c + side] = 1.0
        masks[i, :, r:r + side, c:c + side] = 1.0
    return x, masks


@pytest.fixture(scope="module")
def data() -> dict[str, torch.Tensor]:
    train = smooth_noise(8, seed=0)
    anomalous, masks = with_squares(smooth_noise(4, seed=2), seed=3)
    return {
        "train": train,
        "x": torch.cat([smooth_noise(4, seed=1), anomalous]),
        "masks": torch.cat([torch.zeros_like(masks), masks]),
        "y": torch.tensor([0] * 4 + [1] * 4),
    }


def batches(images: torch.Tensor, size: int = 4) -> list[dict[str, torch.Tensor]]:
    return [{"image": images[i:i + size]} for i in range(0, images.shape[0], size)]


@pytest.fixture(scope="module")
def fitted(data) -> dict[str, nn.Module]:
    """Each adapter fitted once on the 8 normal images (about 4 s in all)."""
    return {name: build(name, img_size=IMG, **OPTIONS[name]).fit(batches(data["train"]))
            for name in NAMES}


def input_gradient(det: nn.Module, x: torch.Tensor, labels: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """d (sum of image scores, or of the mask objective) / dx."""
    x = x.clone().requires_grad_(True)
    scores, units = det.score(x)
    objective = scores if labels is None else mask_objective(units, labels)
    (grad,) = torch.autograd.grad(objective.sum(), x)
    return grad


class AnomalibForward(nn.Module):
    """A detector that scores through anomalib's own forward: what attacking the unadapted
    baseline looks like."""

    def __init__(self, det: nn.Module) -> None:
        super().__init__()
        self.det = det

    def score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.det.model(imagenet_normalize(x))
        return out.pred_score.reshape(-1), out.anomaly_map.flatten(1)


@pytest.mark.parametrize("name", NAMES)
def test_fit_gives_scores_and_maps_at_img_size(fitted, data, name):
    det = fitted[name]
    with torch.no_grad():
        scores, units = det.score(data["x"])
    maps = det.anomaly_maps(units)
    assert scores.shape == (8,) and maps.shape == (8, 1, IMG, IMG)
    assert torch.isfinite(scores).all() and torch.isfinite(maps).all()
    if name != "general_ad":  # distances; GeneralAD's maps are logits
        assert (maps >= 0).all()
    assert det.unit_labels(data["masks"]).shape == units.shape


@pytest.mark.parametrize("name", TRAINED)
def test_training_lowers_the_loss(fitted, name):
    losses = fitted[name].train_losses
    assert len(losses) == OPTIONS[name]["epochs"] and losses[-1] < losses[0], losses


@pytest.mark.parametrize("name", NAMES)
def test_input_gradient_reaches_every_image(fitted, data, name):
    det = fitted[name]
    labels = unit_labels(det, data["masks"])
    for grad in (input_gradient(det, data["x"]), input_gradient(det, data["x"], labels)):
        per_image = grad.abs().flatten(1).sum(dim=1)
        assert torch.isfinite(grad).all()
        assert (per_image > 1e-3).all(), per_image


@pytest.mark.parametrize("name", NAMES)
def test_matches_anomalib_forward_on_clean_images(fitted, data, name):
    det = fitted[name]
    with torch.no_grad():
        scores, units = det.score(data["x"])
        theirs, their_maps = AnomalibForward(det).score(data["x"])
    torch.testing.assert_close(scores, theirs, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(units, their_maps, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["patchcore", "padim", "reverse_distillation", "general_ad"])
def test_attack_through_anomalib_forward_does_nothing(fitted, data, name):
    """Why the adapters exist: anomalib's forward runs the backbone under no_grad, PGD through
    it gets a zero gradient and returns the clean images; through the adapter it moves them."""
    det, x = fitted[name], data["x"]
    labels = unit_labels(det, data["masks"])
    with frozen(det):
        scores, _ = AnomalibForward(det).score(x.clone().requires_grad_(True))
    assert not scores.requires_grad
    assert torch.equal(attack(AnomalibForward(det), x, labels, PGD), x)
    assert (attack(det, x, labels, PGD) - x).abs().amax() > 7.9 / 255


@pytest.mark.parametrize("name", NAMES)
def test_pgd_lowers_image_auroc(fitted, data, name):
    det, x, y = fitted[name], data["x"], data["y"]
    labels = unit_labels(det, data["masks"])
    adv = attack(det, x, labels, PGD)
    assert (adv - x).abs().amax() <= 8.0 / 255 + 1e-6
    with torch.no_grad():
        clean, _ = det.score(x)
        attacked, _ = det.score(adv)
    assert image_auroc(attacked, y) <= image_auroc(clean, y)
    # every image moved the way the attack wants: normal scores up, anomalous ones down
    signs = image_signs(labels)
    assert (attacked * signs > clean * signs).all(), (clean, attacked)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(fitted, data, name):
    """Saved and rebuilt from its options with another seed: the state dict carries the
    memory bank / Gaussian / trained weights and the random backbone itself."""
    det = fitted[name]
    buffer = io.BytesIO()
    torch.save(det.state_dict(), buffer)
    buffer.seek(0)
    rebuilt = build(name, **{**det.options, "seed": 1})
    rebuilt.load_state_dict(torch.load(buffer, weights_only=True))
    rebuilt.eval()
    with torch.no_grad():
        expected, expected_units = det.score(data["x"])
        scores, units = rebuilt.score(data["x"])
    assert torch.equal(scores, expected) and torch.equal(units, expected_units)


def test_same_options_build_the_same_detector():
    a, b = (build("padim", img_size=IMG, layers=["layer1"], n_features=16) for _ in range(2))
    for (key, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), key


def test_train_mode_keeps_the_frozen_backbone_in_eval(fitted, data):
    det = fitted["padim"]
    with torch.no_grad():
        before, _ = det.score(data["x"])
        det.train()
        try:
            after, _ = det.score(data["x"])
        finally:
            det.eval()
    assert torch.equal(before, after)  # batch statistics would have changed the features


def test_imagenet_normalisation():
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (mean + std * torch.tensor([0.0, 1.0, -1.0]).view(1, 3, 1, 1)).expand(1, 3, 4, 4)
    expected = torch.tensor([0.0, 1.0, -1.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    torch.testing.assert_close(imagenet_normalize(x), expected)


def test_registry_lists_and_builds():
    assert set(ANOMALIB_DETECTORS) == set(NAMES)
    assert all(isinstance(desc, str) and desc for _, desc in ANOMALIB_DETECTORS.values())
    det = build("patchcore", img_size=IMG, num_neighbors=1)
    assert det.name == "patchcore" and det.img_size == IMG and det.options["num_neighbors"] == 1
    with pytest.raises(ConfigError, match="'efficient_ad' is not one of"):
        build("efficient_ad")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['sigma'\]"):
        build("padim", sigma=2)


@pytest.mark.parametrize("name, options, option", [
    ("patchcore", {"layers": ["layer2", "layer9"]}, "layers"),
    ("patchcore", {"coreset_ratio": 0.0}, "coreset_ratio"),
    ("padim", {"layers": ["layer1"], "n_features": 1000}, "n_features"),
    ("stfpm", {"backbone": "no_such_net"}, "backbone"),
    ("reverse_distillation", {"img_size": 48}, "img_size"),
    ("reverse_distillation", {"anomaly_map_mode": "max"}, "anomaly_map_mode"),
    ("reverse_distillation", {"layers": ["layer2", "layer3"]}, "layers"),
    ("general_ad", {"backbone": "resnet18"}, "backbone"),
    ("general_ad", {**OPTIONS["general_ad"], "fake_feature_type": "blur"}, "fake_feature_type"),
    ("general_ad", {**OPTIONS["general_ad"], "img_size": 36}, "img_size"),
    ("general_ad", {**OPTIONS["general_ad"], "layers": [13]}, "general_ad options"),
])
def test_bad_options_name_the_option(name, options, option):
    with pytest.raises(ConfigError, match=f"^{option}:"):
        build(name, **{"img_size": IMG, **options})


@pytest.mark.parametrize("name", ["patchcore", "padim"])
def test_unfitted_detector_refuses_to_score(name, data):
    det = build(name, img_size=IMG, layers=["layer2"], **({"n_features": 16}
                                                          if name == "padim" else {}))
    with pytest.raises(RuntimeError, match=r"call fit\(\) first"):
        det.score(data["x"])


def test_epochs_need_batches_that_iterate_again(data):
    det = build("stfpm", img_size=IMG, layers=["layer1"], epochs=2)
    once = (batch for batch in batches(data["train"]))
    with pytest.raises(ValueError, match="can be iterated again"):
        det.fit(once)
