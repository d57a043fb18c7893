"""Detectors by name: `python -m pgray.detectors list`, `build(cfg)`, `get(name)`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pgray.config.detector import DetectorConfig
from pgray.errors import ConfigError


@dataclass(frozen=True)
class DetectorSpec:
    name: str
    description: str
    fitted: bool  # fitted on normal images by `python -m pgray.train --detector NAME`
    build: Callable[[DetectorConfig], Any] | None = None  # None: not built from a config


PATCHGUARD = "patchguard"
REFERENCE = "patchguard_reference"
CLEAN_TWIN = "patchguard_clean"
RECIPE = "patchguard_recipe"
_BUILTIN = {
    PATCHGUARD: DetectorSpec(PATCHGUARD, "PatchGuard: ViT + attention discriminator, trained"
                             " adversarially by python -m pgray.train (pgray checkpoints)",
                             fitted=False),
    REFERENCE: DetectorSpec(REFERENCE, "PatchGuard weights released by the reference code"
                            " (github.com/rohban-lab/PatchGuard), mapped onto pgray's model",
                            fitted=False),
    CLEAN_TWIN: DetectorSpec(CLEAN_TWIN, "PatchGuard of the same config trained without the"
                             " adversarial terms (the sweep's final_eval.clean_baseline)",
                             fitted=False),
    RECIPE: DetectorSpec(RECIPE, "PatchGuard of the sweep's fixed config, nothing searched,"
                         " trained for the trials' epochs (the sweep's"
                         " final_eval.recipe_baseline)", fitted=False),
}


def _anomalib_specs() -> dict[str, DetectorSpec]:
    from pgray.detectors.anomalib_models import ANOMALIB_DETECTORS

    return {name: DetectorSpec(name, f"anomalib {description}", fitted=True,
                               build=_builder(factory))
            for name, (factory, description) in ANOMALIB_DETECTORS.items()}


def _builder(factory: Callable[..., Any]) -> Callable[[DetectorConfig], Any]:
    def build(cfg: DetectorConfig):
        if cfg.weights:
            raise ConfigError(f"detector {cfg.name}: a local backbone weights file is not"
                              " supported for anomalib baselines yet; use --pretrained (the"
                              " timm hub or its cache) or random weights")
        kwargs = {"img_size": cfg.img_size, "pre_trained": cfg.pretrained, **cfg.options}
        if cfg.backbone is not None:
            kwargs["backbone"] = cfg.backbone
        if cfg.layers is not None:
            kwargs["layers"] = list(cfg.layers)
        return factory(**kwargs)

    return build


def all_specs() -> dict[str, DetectorSpec]:
    return _BUILTIN | _anomalib_specs()


def get(name: str) -> DetectorSpec:
    specs = all_specs()
    if name not in specs:
        raise ConfigError(f"unknown detector {name!r}; known: {', '.join(specs)}"
                          " (python -m pgray.detectors list)")
    return specs[name]


def build(cfg: DetectorConfig):
    """A fresh (unfitted) baseline detector of `cfg`."""
    spec = get(cfg.name)
    if spec.build is None:
        raise ConfigError(f"detector {cfg.name!r} is not built from a detector config; train"
                          " PatchGuard with python -m pgray.train (without --detector)")
    try:
        return spec.build(cfg)
    except TypeError as err:
        raise ConfigError(f"detector {cfg.name}: options {cfg.options} do not fit: {err}") from None
