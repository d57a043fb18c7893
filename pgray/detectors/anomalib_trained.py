"""anomalib 2.7 baselines that train a network on normal images: Reverse Distillation, STFPM
and GeneralAD, behind pgray's detector interface with input gradients.

As in `pgray.detectors.anomalib_models`: anomalib's frozen encoder / teacher / ViT runs under
`torch.no_grad()` in its `forward`, so the adapters call the backbone directly and then
anomalib's own bottleneck, decoder, student, discriminator and anomaly-map modules. `fit`
trains the trainable part with anomalib's loss and optimizer settings for `epochs` passes over
the batches (a list or a DataLoader: something that can be iterated once per epoch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import get_args

import torch
from torch import nn

from pgray.detectors.anomalib_models import (
    AnomalibDetector,
    backbone_features,
    check_backbone,
    check_layers,
    check_positive,
    seeded,
)
from pgray.errors import ConfigError

Features = list[torch.Tensor]


def train_epochs(detector: AnomalibDetector, batches: Iterable[Mapping[str, torch.Tensor]],
                 optimizer: torch.optim.Optimizer, loss_of: Callable[[torch.Tensor], torch.Tensor],
                 epochs: int, after_epoch: Callable[[], object] | None = None) -> list[float]:
    """Plain training loop; returns the mean loss of each epoch. The detector ends in eval mode
    (its frozen parts never leave it)."""
    losses = []
    detector.train()
    try:
        for _ in range(epochs):
            total, count = 0.0, 0
            for x in detector.fit_images(batches):
                optimizer.zero_grad(set_to_none=True)
                loss = loss_of(x)
                loss.backward()
                optimizer.step()
                total, count = total + float(loss.detach()), count + 1
            losses.append(total / count)
            if after_epoch is not None:
                after_epoch()
    finally:
        detector.eval()
    return losses


class ReverseDistillation(AnomalibDetector):
    """Reverse Distillation (anomalib `ReverseDistillationModel`): a one-class bottleneck and
    a decoder learn to reconstruct a frozen encoder's layer1-3 features from normal images.

    Map: anomalib's (1 - cosine similarity of encoder and decoder features per layer,
    upsampled, summed ("add") or multiplied, blurred); image score: the maximum of the map, as
    anomalib. Training: anomalib's loss and optimizer (Adam, betas (0.5, 0.99)).
    """

    name = "reverse_distillation"

    def __init__(self, img_size: int = 256, backbone: str = "resnet18",
                 layers: Sequence[str] = ("layer1", "layer2", "layer3"),
                 anomaly_map_mode: str = "add", epochs: int = 1, lr: float = 0.005,
                 pre_trained: bool = False, seed: int | None = 0) -> None:
        super().__init__(img_size, dict(
            img_size=img_size, backbone=backbone, layers=list(layers),
            anomaly_map_mode=anomaly_map_mode, epochs=epochs, lr=lr, pre_trained=pre_trained,
            seed=seed))
        from anomalib.models.image.reverse_distillation.anomaly_map import (
            AnomalyMapGenerationMode,
        )
        from anomalib.models.image.reverse_distillation.torch_model import (
            ReverseDistillationModel,
        )

        check_backbone(backbone)
        if list(layers) != ["layer1", "layer2", "layer3"]:
            raise ConfigError(f"layers: the decoder mirrors the backbone's layer1-layer3, got"
                              f" {list(layers)}")
        if img_size % 32:
            raise ConfigError(f"img_size: must be a multiple of 32 (the bottleneck's stride),"
                              f" got {img_size}")
        modes = [m.value for m in AnomalyMapGenerationMode]
        if anomaly_map_mode not in modes:
            raise ConfigError(f"anomaly_map_mode: {anomaly_map_mode!r} is not one of {modes}")
        check_positive("epochs", epochs)
        check_positive("lr", lr)
        self.epochs, self.lr = epochs, lr
        try:
            with seeded(seed):
                self.model = ReverseDistillationModel(
                    backbone=backbone, input_size=self.full_size(), layers=list(layers),
                    anomaly_map_mode=AnomalyMapGenerationMode(anomaly_map_mode),
                    pre_trained=pre_trained)
        except ValueError as err:  # no decoder for this backbone
            raise ConfigError(f"backbone: {err}") from err
        check_layers(self.model.encoder, layers, backbone)
        self.freeze()
        self.train_losses: list[float] = []

    def frozen_parts(self) -> list[nn.Module]:
        return [self.model.encoder]

    def features(self, x: torch.Tensor) -> tuple[Features, Features]:
        encoded = list(backbone_features(self.model.encoder, self.prepare(x)).values())
        return encoded, self.model.decoder(self.model.bottleneck(encoded))

    def fit(self, batches: Iterable[Mapping[str, torch.Tensor]]) -> ReverseDistillation:
        """Train bottleneck and decoder; the encoder stays frozen (no gradient is needed
        through it here, so it runs without one)."""
        from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss

        loss = ReverseDistillationLoss()
        params = [*self.model.bottleneck.parameters(), *self.model.decoder.parameters()]
        optimizer = torch.optim.Adam(params, lr=self.lr, betas=(0.5, 0.99))

        def loss_of(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                encoded = list(backbone_features(self.model.encoder, self.prepare(x)).values())
            return loss(encoded, self.model.decoder(self.model.bottleneck(encoded)))

        self.train_losses = train_epochs(self, batches, optimizer, loss_of, self.epochs)
        return self

    def maps_and_scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.model.anomaly_map_generator(*self.features(x))
        return maps, maps.flatten(1).amax(dim=1)


def offline_stfpm_model(backbone: str, layers: Sequence[str], pre_trained: bool) -> nn.Module:
    """An anomalib `STFPMModel` whose teacher may have random weights.

    `STFPMModel.__init__` builds its teacher with pre_trained=True, a download that fails
    offline. The instance is made without it and given the same parts (teacher, student,
    map generator) under the same names, so anomalib's forward, loss and checkpoints all fit.
    """
    from anomalib.models.components import TimmFeatureExtractor
    from anomalib.models.image.stfpm.anomaly_map import AnomalyMapGenerator
    from anomalib.models.image.stfpm.torch_model import STFPMModel

    model = STFPMModel.__new__(STFPMModel)
    nn.Module.__init__(model)
    model.tiler = None
    model.backbone = backbone
    model.teacher_model = TimmFeatureExtractor(backbone=backbone, pre_trained=pre_trained,
                                               layers=list(layers)).eval()
    model.student_model = TimmFeatureExtractor(backbone=backbone, pre_trained=False,
                                               layers=list(layers), requires_grad=True)
    model.anomaly_map_generator = AnomalyMapGenerator()
    return model


class Stfpm(AnomalibDetector):
    """STFPM (anomalib `STFPMModel`): a randomly initialised student feature pyramid regresses
    a frozen teacher's normalised features on normal images.

    Map: anomalib's (product over layers of half the squared distance of the normalised
    features, upsampled); image score: the maximum of the map, as anomalib. Training:
    anomalib's loss and optimizer (SGD, momentum 0.9, weight decay 1e-3). Offline the teacher
    is random too (pre_trained=False): a fixed random feature pyramid the student learns.
    """

    name = "stfpm"

    def __init__(self, img_size: int = 256, backbone: str = "resnet18",
                 layers: Sequence[str] = ("layer1", "layer2", "layer3"), epochs: int = 1,
                 lr: float = 0.4, pre_trained: bool = False, seed: int | None = 0) -> None:
        super().__init__(img_size, dict(
            img_size=img_size, backbone=backbone, layers=list(layers), epochs=epochs, lr=lr,
            pre_trained=pre_trained, seed=seed))
        check_backbone(backbone)
        check_positive("epochs", epochs)
        check_positive("lr", lr)
        self.epochs, self.lr = epochs, lr
        with seeded(seed):
            self.model = offline_stfpm_model(backbone, layers, pre_trained)
        check_layers(self.model.teacher_model, layers, backbone)
        check_layers(self.model.student_model, layers, backbone)
        self.freeze()
        self.train_losses: list[float] = []

    def frozen_parts(self) -> list[nn.Module]:
        return [self.model.teacher_model]

    def features(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        x = self.prepare(x)
        return (backbone_features(self.model.teacher_model, x),
                backbone_features(self.model.student_model, x))

    def fit(self, batches: Iterable[Mapping[str, torch.Tensor]]) -> Stfpm:
        from anomalib.models.image.stfpm.loss import STFPMLoss

        loss = STFPMLoss()
        optimizer = torch.optim.SGD(self.model.student_model.parameters(), lr=self.lr,
                                    momentum=0.9, dampening=0.0, weight_decay=0.001)

        def loss_of(x: torch.Tensor) -> torch.Tensor:
            x = self.prepare(x)
            with torch.no_grad():
                teacher = backbone_features(self.model.teacher_model, x)
            return loss(teacher, backbone_features(self.model.student_model, x))

        self.train_losses = train_epochs(self, batches, optimizer, loss_of, self.epochs)
        return self

    def maps_and_scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        teacher, student = self.features(x)
        maps = self.model.anomaly_map_generator(teacher_features=teacher,
                                                student_features=student,
                                                image_size=self.full_size())
        return maps, maps.flatten(1).amax(dim=1)


class GeneralAD(AnomalibDetector):
    """GeneralAD (anomalib `GeneralADModel`): a small transformer discriminator scores a
    frozen ViT's patch features; it is trained to tell the normal features from synthetic
    fakes (features plus noise on random patches, or the other `fake_feature_type`s).

    Map: the patch logits, bilinearly upsampled (anomalib's); image score: the mean of the
    `top_k` largest patch logits, as anomalib computes it. Training: anomalib's loss and
    optimizer (AdamW, cosine schedule over `epochs` down to 0.2 lr). `layers` are 1-based
    transformer block indices.
    """

    name = "general_ad"

    def __init__(self, img_size: int = 224, backbone: str = "vit_small_patch14_dinov2.lvd142m",
                 layers: Sequence[int] = (12,), hidden_dim: int = 2048, dsc_heads: int = 4,
                 noise_std: float = 0.25, fake_feature_type: str = "random", top_k: int = 10,
                 epochs: int = 1, lr: float = 5e-4, weight_decay: float = 1e-5,
                 pre_trained: bool = False, seed: int | None = 0) -> None:
        super().__init__(img_size, dict(
            img_size=img_size, backbone=backbone, layers=list(layers), hidden_dim=hidden_dim,
            dsc_heads=dsc_heads, noise_std=noise_std, fake_feature_type=fake_feature_type,
            top_k=top_k, epochs=epochs, lr=lr, weight_decay=weight_decay,
            pre_trained=pre_trained, seed=seed))
        from anomalib.models.image.general_ad.torch_model import FakeFeatureType, GeneralADModel

        check_backbone(backbone)
        if not backbone.startswith(("vit", "eva")):
            raise ConfigError(f"backbone: GeneralAD takes a timm ViT or EVA, got {backbone!r}")
        fake_types = list(get_args(FakeFeatureType))
        if fake_feature_type not in fake_types:  # anomalib would silently train without them
            raise ConfigError(f"fake_feature_type: {fake_feature_type!r} is not one of"
                              f" {fake_types}")
        check_positive("epochs", epochs)
        check_positive("lr", lr)
        self.epochs, self.lr, self.weight_decay, self.seed = epochs, lr, weight_decay, seed
        try:
            with seeded(seed):
                self.model = GeneralADModel(
                    backbone=backbone, layers=list(layers), hidden_dim=hidden_dim,
                    dsc_heads=dsc_heads, noise_std=noise_std, image_size=self.full_size(),
                    fake_feature_type=fake_feature_type, top_k=top_k, pre_trained=pre_trained)
        except (ValueError, AssertionError) as err:  # layers, top_k, dsc_heads: the message
            raise ConfigError(f"general_ad options: {err}") from err  # names the option
        if img_size % self.model.patch_size:
            raise ConfigError(f"img_size: must be a multiple of {backbone}'s patch size"
                              f" {self.model.patch_size}, got {img_size}")
        self.freeze()
        self.train_losses: list[float] = []

    def frozen_parts(self) -> list[nn.Module]:
        return [self.model.feature_extractor]

    def fit(self, batches: Iterable[Mapping[str, torch.Tensor]]) -> GeneralAD:
        """Train the discriminator (anomalib's compute_loss draws the fakes from torch's RNG)."""
        params = self.model.discriminator.parameters()
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.epochs,
                                                              eta_min=0.2 * self.lr)

        def loss_of(x: torch.Tensor) -> torch.Tensor:
            return self.model.compute_loss(self.prepare(x))

        with seeded(self.seed):  # the same options and images train the same discriminator
            self.train_losses = train_epochs(self, batches, optimizer, loss_of, self.epochs,
                                             after_epoch=schedule.step)
        return self

    def maps_and_scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # anomalib's extract_features wraps this call in no_grad
        features = self.model.feature_extractor(self.prepare(x))
        scores, maps = self.model.score_features(features)
        return maps, scores
