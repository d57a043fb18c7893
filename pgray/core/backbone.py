"""The timm ViT backbone of PatchGuard: built from model config, optionally from the hub or a
local weights file (timm, DINOv2 or .safetensors layout), with state-dict mismatches described
key by key so a wrong file is refused with a reason."""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from pgray.config import ModelConfig
from pgray.errors import CheckpointError, ConfigError


def unknown_backbone(name: str) -> ConfigError:
    close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=5, cutoff=0.6)
    hint = f"; close names: {', '.join(close)}" if close else "; see timm.list_models()"
    return ConfigError(f"model.backbone: unknown timm model {name!r}{hint}")


def create_backbone(cfg: ModelConfig) -> nn.Module:
    if not timm.is_model(cfg.backbone):
        raise unknown_backbone(cfg.backbone)
    reserved = sorted({"img_size", "num_classes", "pretrained"} & set(cfg.backbone_kwargs))
    if reserved:
        raise ConfigError(
            f"model.backbone_kwargs: {', '.join(reserved)} is set by pgray; use model.img_size"
            " / model.pretrained instead"
        )
    from_hub = cfg.pretrained and not cfg.weights  # a local file replaces the hub download
    kwargs = dict(img_size=cfg.img_size, num_classes=0, **cfg.backbone_kwargs)
    try:
        backbone = timm.create_model(cfg.backbone, pretrained=from_hub, **kwargs)
    except TypeError as err:
        raise ConfigError(f"model.backbone_kwargs: {cfg.backbone} rejects them: {err}") from err
    except Exception as err:
        if not from_hub:
            raise
        raise CheckpointError(
            f"could not fetch pretrained weights for {cfg.backbone} ({err}); without network"
            " access, download them elsewhere and set model.weights to the local file"
        ) from err
    for attr in ("blocks", "patch_embed", "num_prefix_tokens", "forward_intermediates"):
        if not hasattr(backbone, attr):
            raise ConfigError(
                f"model.backbone: {cfg.backbone} is not a ViT-style timm model (no {attr})"
            )
    if cfg.weights:
        load_backbone_weights(backbone, cfg.weights)
    return backbone


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> None:
    """Load a local backbone checkpoint (timm, DINOv2 or .safetensors format) strictly.

    timm's checkpoint filter for the model family converts foreign layouts and resamples the
    position embedding to this image size; classifier weights are dropped (we build no head).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"model.weights: file not found: {path}")
    try:
        state = timm.models.load_state_dict(str(path))
    except Exception as err:
        raise CheckpointError(f"model.weights: cannot read {path}: {err}") from err
    filter_fn = getattr(sys.modules[type(backbone).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, backbone)
    own = backbone.state_dict()
    classifier = backbone.pretrained_cfg.get("classifier") or "head"
    heads = classifier if isinstance(classifier, list | tuple) else (classifier,)
    state = {k: v for k, v in state.items() if k in own or not k.startswith(tuple(heads))}
    problems = state_dict_problems(own, state)
    if problems:
        raise CheckpointError(
            f"model.weights: {path} does not fit {type(backbone).__name__}: {problems}"
        )
    backbone.load_state_dict(state, strict=True)


def state_dict_problems(own: dict[str, torch.Tensor], given: dict[str, Any]) -> str:
    """A short description of missing, unexpected and mis-shaped keys ('' when they match)."""

    def listing(keys: list[str]) -> str:
        head = ", ".join(keys[:8])
        return head + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")

    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - set(own))
    shapes = [
        f"{k} {tuple(given[k].shape)} vs {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(given))
        if not isinstance(given[k], torch.Tensor) or given[k].shape != own[k].shape
    ]
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} keys: {listing(missing)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} keys: {listing(unexpected)}")
    if shapes:
        parts.append(f"shape mismatch (file vs model): {listing(shapes)}")
    return "; ".join(parts)
