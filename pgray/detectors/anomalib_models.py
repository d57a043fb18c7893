"""anomalib 2.7 baselines behind pgray's detector interface, with input gradients.

anomalib's PatchCore, PaDiM, Reverse Distillation and GeneralAD run their frozen backbone
under `torch.no_grad()` (in `TimmFeatureExtractor.forward` or the model's own): an attack
through anomalib's own `forward` gets no input gradient and would report robustness that is
only gradient masking (STFPM's forward keeps the student's half of the gradient only). The
adapters here build anomalib's torch models (random weights unless `pre_trained=True`), keep
anomalib's modules and fitted state, and re-run the scoring path with gradients: the backbone
is called directly, then anomalib's own pooling, embedding and anomaly-map modules. These are
the "adapted" baselines of the benchmark.

Inputs are images in [0, 1]; the adapters apply ImageNet normalisation themselves, as
anomalib's pre-processor would. Everything fitted (memory bank, Gaussian statistics, trained
weights, and the backbone weights themselves) lives in `state_dict()`, so a fitted detector is
rebuilt from `build(name, **detector.options)` plus `load_state_dict`, without downloads.

The trained baselines (Reverse Distillation, STFPM, GeneralAD) are in
`pgray.detectors.anomalib_trained`.
anomalib is imported inside constructors only: importing it takes seconds.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pgray.detectors.base import PixelMapDetector
from pgray.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] images to the normalised input anomalib's backbones were trained on."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def backbone_features(extractor: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The feature maps of an anomalib `TimmFeatureExtractor`, by layer name, with gradients.

    Its `forward` wraps a frozen backbone in `torch.no_grad()`; the timm model underneath
    (`extractor.feature_extractor`) computes the same maps and keeps the graph to x.
    """
    features = extractor.feature_extractor(x)
    if isinstance(features, dict):
        return features
    return dict(zip(extractor.layers, features, strict=True))


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Random weights (and PaDiM's feature subset) from `seed`, without touching the caller's
    RNG: the same options build the same detector."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def check_backbone(backbone: str) -> None:
    import timm

    if not timm.is_model(backbone):
        raise ConfigError(f"backbone: {backbone!r} is not a timm model")


def check_layers(extractor: nn.Module, layers: Sequence[str], backbone: str) -> None:
    """anomalib drops unknown layer names with a log warning only; here they are an error."""
    missing = [layer for layer in layers if layer not in extractor.layers]
    if missing:
        raise ConfigError(f"layers: {missing} are not feature layers of {backbone}")


def check_positive(name: str, value: float, upper: float | None = None) -> None:
    if not value > 0 or (upper is not None and value > upper):
        bound = f" and <= {upper}" if upper is not None else ""
        raise ConfigError(f"{name}: must be > 0{bound}, got {value}")


class AnomalibDetector(PixelMapDetector):
    """Plumbing shared by the adapters: options, input preparation, fit batches, and frozen
    parts (pretrained backbones, teachers) that stay in eval mode whatever `train()` says."""

    name = ""

    def __init__(self, img_size: int, options: Mapping[str, Any]) -> None:
        super().__init__()
        if not isinstance(img_size, int) or img_size < 32:
            raise ConfigError(f"img_size: must be an int >= 32, got {img_size!r}")
        self.img_size = img_size
        # the constructor arguments: build(self.name, **self.options) rebuilds this detector
        self.options = dict(options)

    def frozen_parts(self) -> list[nn.Module]:
        """The whole anomalib model by default (memory banks and Gaussians train nothing);
        trained detectors name their frozen teacher or encoder instead."""
        return [self.model]

    def freeze(self) -> None:
        """No parameter gradients for the frozen parts: attacks and fits never need them."""
        for module in self.frozen_parts():
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> AnomalibDetector:
        super().train(mode)
        for module in self.frozen_parts():
            module.eval()
        return self

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images at any size to normalised backbone input at img_size."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(x.shape)}")
        if x.shape[-2:] != (self.img_size, self.img_size):
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear",
                              align_corners=False)
        return imagenet_normalize(x)

    def fit_images(self, batches: Iterable[Mapping[str, torch.Tensor]]) -> Iterator[torch.Tensor]:
        """The "image" tensors of the batches, as float on the detector's device."""
        device = next(self.parameters()).device
        seen = 0
        for batch in batches:
            images = batch["image"].to(device=device, dtype=torch.float32)
            seen += images.shape[0]
            yield images
        if seen == 0:
            raise ValueError(f"{self.name}.fit got no images: pass a non-empty list of batches or"
                             " a DataLoader (epochs > 1 need one that can be iterated again)")

    def full_size(self) -> tuple[int, int]:
        return (self.img_size, self.img_size)


class PatchCore(AnomalibDetector):
    """PatchCore (anomalib `PatchcoreModel`): distance of each patch embedding to its nearest
    neighbour in a memory bank of normal patches.

    Map: the nearest-neighbour distances, upsampled (nearest) and blurred by anomalib's map
    generator. Image score: anomalib's, i.e. the paper's reweighted maximum: the largest patch
    distance times 1 - softmax weight of its neighbour among that neighbour's `num_neighbors`
    nearest bank entries (num_neighbors=1: the plain maximum of the patch distances).
    The nearest entry is searched without gradients (anomalib's chunked search) and its
    distance then recomputed with them: the same gradient as through the min, at a fraction of
    the memory.
    """

    name = "patchcore"

    def __init__(self, img_size: int = 256, backbone: str = "resnet18",
                 layers: Sequence[str] = ("layer2", "layer3"), coreset_ratio: float = 0.1,
                 num_neighbors: int = 9, pre_trained: bool = False, seed: int | None = 0) -> None:
        super().__init__(img_size, dict(
            img_size=img_size, backbone=backbone, layers=list(layers),
            coreset_ratio=coreset_ratio, num_neighbors=num_neighbors, pre_trained=pre_trained,
            seed=seed))
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel

        check_backbone(backbone)
        check_positive("coreset_ratio", coreset_ratio, upper=1.0)
        check_positive("num_neighbors", num_neighbors)
        self.coreset_ratio = coreset_ratio
        self.seed = seed
        with seeded(seed):
            self.model = PatchcoreModel(layers=list(layers), backbone=backbone,
                                        pre_trained=pre_trained, num_neighbors=num_neighbors)
        check_layers(self.model.feature_extractor, layers, backbone)
        self.freeze()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) locally aware patch embeddings, as anomalib's forward builds them."""
        features = backbone_features(self.model.feature_extractor, self.prepare(x))
        pooled = {layer: self.model.feature_pooler(f) for layer, f in features.items()}
        return self.model.generate_embedding(pooled)

    @torch.no_grad()
    def fit(self, batches: Iterable[Mapping[str, torch.Tensor]]) -> PatchCore:
        """Memory bank: the patch embeddings of the normal images, coreset-subsampled
        (k-center greedy, anomalib's sampler) to `coreset_ratio` of them. The sampler's
        random projection draws from numpy's global RNG: refits may pick other patches."""
        from anomalib.models.components import KCenterGreedy

        bank = torch.cat([self.model.reshape_embedding(self.embed(x))
                          for x in self.fit_images(batches)])
        if self.coreset_ratio < 1.0:
            if int(bank.shape[0] * self.coreset_ratio) < 1:
                raise ConfigError(f"coreset_ratio: {self.coreset_ratio} of {bank.shape[0]}"
                                  " patches keeps none")
            with seeded(self.seed):
                bank = KCenterGreedy(embedding=bank, sampling_ratio=self.coreset_ratio
                                     ).sample_coreset()
        self.model.memory_bank = bank.contiguous()
        return self

    def bank(self) -> torch.Tensor:
        bank = self.model.memory_bank
        if bank.numel() == 0:
            raise RuntimeError("patchcore: the memory bank is empty, call fit() first")
        return bank

    def maps_and_scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.embed(x)
        b, _, h, w = embedding.shape
        flat = self.model.reshape_embedding(embedding)
        bank = self.bank()
        with torch.no_grad():
            _, nearest = self.model.nearest_neighbors(flat, n_neighbors=1)
        patch = distance(flat, bank[nearest]).reshape(b, h * w)
        scores = self.image_scores(patch, nearest.reshape(b, h * w), flat.reshape(b, h * w, -1))
        maps = self.model.anomaly_map_generator(patch.reshape(b, 1, h, w), self.full_size())
        return maps, scores

    def image_scores(self, patch: torch.Tensor, nearest: torch.Tensor, embedding: torch.Tensor
                     ) -> torch.Tensor:
        """The paper's reweighting (anomalib's compute_anomaly_score), differentiable."""
        if self.model.num_neighbors == 1:
            return patch.amax(dim=1)
        bank = self.bank()
        rows = torch.arange(patch.shape[0], device=patch.device)
        top = patch.argmax(dim=1)
        score, feature = patch[rows, top], embedding[rows, top]
        with torch.no_grad():  # the neighbourhood of the matched bank entry: indices only
            k = min(self.model.num_neighbors, bank.shape[0])
            _, support = self.model.nearest_neighbors(bank[nearest[rows, top]], n_neighbors=k)
            support = support.reshape(patch.shape[0], k)  # k = 1 comes back as (B,)
        dists = distance(feature.unsqueeze(1), bank[support])
        weights = 1.0 - F.softmax(dists, dim=1)[:, 0]
        return weights * score


def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distance over the last dim. The clamp keeps the gradient finite where a
    patch equals its bank entry (sqrt'(0) is infinite and would turn PGD's sign into NaN)."""
    return (a - b).pow(2).sum(dim=-1).clamp_min(1e-12).sqrt()


class Padim(AnomalibDetector):
    """PaDiM (anomalib `PadimModel`): Mahalanobis distance of each position's embedding (a
    random subset of `n_features` backbone channels) to a Gaussian fitted per position on the
    normal images. Map: anomalib's (bilinear upsampling, then Gaussian blur); image score: the
    maximum of the map, as anomalib computes it."""

    name = "padim"

    def __init__(self, img_size: int = 256, backbone: str = "resnet18",
                 layers: Sequence[str] = ("layer1", "layer2", "layer3"),
                 n_features: int | None = None, pre_trained: bool = False,
                 seed: int | None = 0) -> None:
        super().__init__(img_size, dict(
            img_size=img_size, backbone=backbone, layers=list(layers), n_features=n_features,
            pre_trained=pre_trained, seed=seed))
        from anomalib.models.image.padim.torch_model import PadimModel

        check_backbone(backbone)
        try:
            with seeded(seed):
                self.model = PadimModel(backbone=backbone, layers=list(layers),
                                        pre_trained=pre_trained, n_features=n_features)
        except ValueError as err:  # anomalib's n_features checks
            raise ConfigError(f"n_features: {err}") from err
        check_layers(self.model.feature_extractor, layers, backbone)
        self.freeze()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        features = backbone_features(self.model.feature_extractor, self.prepare(x))
        return self.model.generate_embedding(features)

    @torch.no_grad()
    def fit(self, batches: Iterable[Mapping[str, torch.Tensor]]) -> Padim:
        """Per-position mean and inverse covariance (anomalib's MultiVariateGaussian, buffers
        of the state dict)."""
        embeddings = torch.cat([self.embed(x) for x in self.fit_images(batches)])
        self.model.gaussian.fit(embeddings)
        return self

    def maps_and_scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gaussian = self.model.gaussian
        if gaussian.mean.numel() == 0:
            raise RuntimeError("padim: no Gaussian fitted, call fit() first")
        maps = self.model.anomaly_map_generator(
            embedding=self.embed(x), mean=gaussian.mean, inv_covariance=gaussian.inv_covariance,
            image_size=self.full_size())
        return maps, maps.flatten(1).amax(dim=1)


def _lazy(module: str, cls: str) -> Callable[..., AnomalibDetector]:
    """A factory that imports its module on first use (the registry stays cheap to import)
    and names unknown options instead of failing with a TypeError."""

    def factory(**options: Any) -> AnomalibDetector:
        detector_cls = getattr(importlib.import_module(module), cls)
        known = inspect.signature(detector_cls).parameters
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(f"{detector_cls.name}: unknown option(s) {unknown}; options are"
                              f" {list(known)}")
        return detector_cls(**options)

    factory.__name__ = cls
    return factory


_TRAINED = "pgray.detectors.anomalib_trained"
ANOMALIB_DETECTORS: dict[str, tuple[Callable[..., AnomalibDetector], str]] = {
    "patchcore": (_lazy(__name__, "PatchCore"),
                  "PatchCore: nearest-neighbour distance to a coreset memory bank of patches"),
    "padim": (_lazy(__name__, "Padim"),
              "PaDiM: Mahalanobis distance to per-position Gaussians of patch embeddings"),
    "reverse_distillation": (_lazy(_TRAINED, "ReverseDistillation"),
                             "Reverse Distillation: a decoder reconstructs frozen encoder"
                             " features; cosine distance"),
    "stfpm": (_lazy(_TRAINED, "Stfpm"),
              "STFPM: a student pyramid regresses a frozen teacher's features; their distance"),
    "general_ad": (_lazy(_TRAINED, "GeneralAD"),
                   "GeneralAD: a discriminator on frozen ViT patch features, trained against"
                   " synthetic fakes"),
}


def build(name: str, **options: Any) -> AnomalibDetector:
    """An unfitted adapter by registry name; options are the class's constructor arguments."""
    if name not in ANOMALIB_DETECTORS:
        raise ConfigError(f"detector: {name!r} is not one of {sorted(ANOMALIB_DETECTORS)}")
    factory, _ = ANOMALIB_DETECTORS[name]
    return factory(**options)
