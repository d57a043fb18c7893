"""pgray checkpoints: one self-describing file per model, safe to load with weights_only=True.

A checkpoint is a plain dict: format tag, pgray version, the full ExperimentConfig as a dict, an
architecture signature, the model's state_dict and an optional `extra` dict (optimizer state,
epoch, metrics). Only tensors, str, numbers, bools, None, lists and dicts go in, so
`torch.load(weights_only=True)` reads it and loading never runs pickled code.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

import pgray
from pgray.config import ExperimentConfig, ModelConfig
from pgray.core.backbone import state_dict_problems
from pgray.core.file_names import CHECKPOINT_FILE, SELECTED_FILE  # noqa: F401 - their names
from pgray.core.model import PatchGuard
from pgray.errors import CheckpointError, ConfigError, PgrayError, first_line
from pgray.io import atomic_write

FORMAT_TAG = "pgray-patchguard-checkpoint"
FORMAT_VERSION = 1
# Config fields that change the parameter set; the rest (dropout, top_k, smoothing) do not.
ARCH_FIELDS = ("backbone", "img_size", "backbone_kwargs", "feature_layers", "disc_heads",
               "disc_mlp_dim")  # fmt: skip


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP / DataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def shapes_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """Short hash of parameter names and shapes: equal for any two models of one architecture."""
    text = ";".join(f"{k}:{tuple(v.shape)}" for k, v in sorted(state_dict.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def architecture(model_cfg: ModelConfig, state_dict: dict[str, torch.Tensor] | None = None) -> dict:
    """The architecture signature of a model config (plus its shapes digest when given weights)."""
    sig = {name: _plain(getattr(model_cfg, name)) for name in ARCH_FIELDS}
    if state_dict is not None:
        sig["param_shapes"] = shapes_digest(state_dict)
    return sig


def describe(sig: dict) -> str:
    kwargs = ",".join(f"{k}={v}" for k, v in sorted(sig.get("backbone_kwargs", {}).items()))
    return (
        f"{sig.get('backbone')}@{sig.get('img_size')}"
        + (f"[{kwargs}]" if kwargs else "")
        + f" features={sig.get('feature_layers')} disc_heads={sig.get('disc_heads')}"
        f" disc_mlp={sig.get('disc_mlp_dim')}"
    )


def _plain(value: Any, where: str = "value") -> Any:
    """`value` as weights_only-loadable data; numpy scalars become Python numbers."""
    if value is None or type(value) in (str, bool, int, float):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        return value.item()  # numpy scalars (np.float64 even subclasses float)
    for kind in (bool, int, float, str):  # enums and other subclasses of the basic types
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if type(k) not in (str, int):
                raise TypeError(f"{where}: key {k!r} must be a str or int")
            out[k] = _plain(v, f"{where}.{k}")
        return out
    if isinstance(value, list | tuple):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(
        f"{where}: {type(value).__name__} cannot go into a checkpoint (tensors, str, numbers,"
        " lists and dicts only)"
    )


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    config: ExperimentConfig,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write `model` with its config atomically (temporary file + os.replace); return the path."""
    model = unwrap(model)
    if isinstance(model, PatchGuard):
        check_config_matches(model.cfg, config.model)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return _write(Path(path), config, state, extra)


def _write(path: Path, config: ExperimentConfig, state: dict[str, torch.Tensor],
           extra: dict[str, Any] | None) -> Path:
    payload = {
        "format": FORMAT_TAG,
        "format_version": FORMAT_VERSION,
        "pgray_version": pgray.__version__,
        "config": _plain(config.to_dict(), "config"),
        "architecture": architecture(config.model, state),
        "state_dict": state,
        "extra": _plain(extra or {}, "extra"),
    }
    return atomic_write(path, lambda f: torch.save(payload, f))


def write_selected(checkpoint: str | Path, out: str | Path) -> Path | None:
    """Write the weights a run selected by its held-out proxy (train.select_metric) as a
    model checkpoint at `out`; None when the training checkpoint carries no selection."""
    state = read_checkpoint(checkpoint)
    selected = (state.get("extra") or {}).get("selected")
    if not selected:
        return None
    config = ExperimentConfig.from_dict(state["config"])
    extra = {k: selected[k] for k in ("metric", "value", "epoch")}
    return _write(Path(out), config, selected["state_dict"], {"selected": extra})


def check_config_matches(model_cfg: ModelConfig, stored_cfg: ModelConfig) -> None:
    ours, theirs = architecture(model_cfg), architecture(stored_cfg)
    if ours != theirs:
        raise CheckpointError(
            f"config.model describes {describe(theirs)} but the model is {describe(ours)}"
        )


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """The raw checkpoint dict, after checking it is a readable pgray checkpoint."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint is not a file: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for bad bytes: report them as one
        raise CheckpointError(f"{path}: not a readable checkpoint ({first_line(err)})") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT_TAG:
        raise CheckpointError(
            f"{path}: not a pgray checkpoint (no '{FORMAT_TAG}' tag; a reference PatchGuard"
            " state dict loads with pgray.core.checkpoint.load_reference_state_dict)"
        )
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {ckpt.get('format_version')} is not supported"
            f" (this pgray {pgray.__version__} reads version {FORMAT_VERSION})"
        )
    for key in ("config", "architecture", "state_dict"):
        if not isinstance(ckpt.get(key), dict):
            raise CheckpointError(f"{path}: checkpoint has no {key} section")
    return ckpt


def check_compatible(ckpt: dict[str, Any], expected: nn.Module | ModelConfig) -> None:
    """Raise CheckpointError naming both architectures when `ckpt` does not fit `expected`."""
    stored = ckpt["architecture"]
    if isinstance(expected, ModelConfig):
        want = architecture(expected)
        have = {k: v for k, v in stored.items() if k != "param_shapes"}
    else:
        model = unwrap(expected)
        state = model.state_dict()
        cfg = getattr(model, "cfg", None)
        want = (
            architecture(cfg, state)
            if isinstance(cfg, ModelConfig)
            else {"param_shapes": shapes_digest(state)}
        )
        have = {k: stored.get(k) for k in want}
    if have != want:
        raise CheckpointError(
            f"checkpoint holds {describe(stored)} but {describe(want)} was expected"
            + _differences(have, want)
        )


def _differences(have: dict, want: dict) -> str:
    diffs = [f"{k}: {have.get(k)!r} vs {want.get(k)!r}" for k in want if have.get(k) != want.get(k)]
    return " (" + "; ".join(diffs) + ")" if diffs else ""


def load_checkpoint(
    path: str | Path,
    map_location: Any = "cpu",
    expect: nn.Module | ModelConfig | None = None,
) -> tuple[PatchGuard, ExperimentConfig, dict[str, Any]]:
    """Rebuild the model from the stored config (no download) and load its weights.

    Returns (model in eval mode, config, extra). With `expect`, a checkpoint of another
    architecture raises CheckpointError naming both.
    """
    ckpt = read_checkpoint(path, map_location)
    if expect is not None:
        check_compatible(ckpt, expect)
    try:
        config = ExperimentConfig.from_dict(ckpt["config"])
    except ConfigError as err:
        raise CheckpointError(f"{path}: stored config is not valid here: {err}") from err
    # The weights come from the checkpoint: never fetch or read pretrained backbone weights.
    model_cfg = dataclasses.replace(config.model, pretrained=False, weights=None)
    try:
        model = PatchGuard(model_cfg)
    except PgrayError as err:
        raise CheckpointError(f"{path}: cannot rebuild its model: {err}") from err
    _load_strict(model, ckpt, path)
    if isinstance(map_location, str | torch.device):
        model.to(map_location)
    return model.eval(), config, ckpt.get("extra") or {}


def _load_strict(model: nn.Module, ckpt: dict[str, Any], path: str | Path) -> None:
    state = ckpt["state_dict"]
    if isinstance(model, PatchGuard):
        state = model.drop_unbuilt_blocks(state)
    problems = state_dict_problems(model.state_dict(), state)
    if problems:
        raise CheckpointError(
            f"{path}: weights do not fit the rebuilt {describe(ckpt['architecture'])}: {problems}"
        )
    model.load_state_dict(state, strict=True)


def load_into(model: nn.Module, ckpt: dict[str, Any], source: str | Path = "checkpoint"
              ) -> dict[str, Any]:
    """Load a read checkpoint's weights into an existing model after checking that they fit
    (resume, selection); returns its extra dict."""
    check_compatible(ckpt, model)
    _load_strict(unwrap(model), ckpt, source)
    return ckpt.get("extra") or {}


# -- the reference implementation's state dicts ------------------------------------------------

# Reference key prefix -> ours (github.com/rohban-lab/PatchGuard, one discriminator block).
REFERENCE_PREFIXES = (
    ("feature_extractor.pretrained_model.", "backbone."),
    ("discriminator.positional_encodings", "disc.pos_embed"),
    ("discriminator.transformer_encoder.0.attn.", "disc.attn."),
    ("discriminator.transformer_encoder.0.layer_norm_1.", "disc.norm."),
    ("discriminator.transformer_encoder.0.linear.0.", "disc.mlp.fc1."),
    ("discriminator.transformer_encoder.0.linear.3.", "disc.mlp.fc2."),
    ("discriminator.output_layer.0.", "disc.head."),
)
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def map_reference_key(key: str) -> str | None:
    """Our name for a reference key, or None when it has no counterpart."""
    for prefix in WRAPPER_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix) :]
    for theirs, ours in REFERENCE_PREFIXES:
        if key == theirs or (theirs.endswith(".") and key.startswith(theirs)):
            return ours + key[len(theirs) :]
    return None


def load_reference_state_dict(model: nn.Module, state_dict: dict[str, Any]) -> None:
    """Load a state dict saved by the reference code into `model`, strictly.

    Raises CheckpointError listing reference keys with no counterpart, our keys left unfilled
    and shape mismatches (e.g. another backbone, image size or discriminator depth).
    """
    model = unwrap(model)
    if isinstance(state_dict.get("state_dict"), dict):
        state_dict = state_dict["state_dict"]
    mapped: dict[str, Any] = {}
    unmatched: list[str] = []
    for key, value in state_dict.items():
        ours = map_reference_key(key)
        if ours is None:
            unmatched.append(key)
        else:
            mapped[ours] = value
    problems = state_dict_problems(model.state_dict(), mapped)
    if unmatched:
        shown = ", ".join(sorted(unmatched)[:8])
        more = f" (+{len(unmatched) - 8} more)" if len(unmatched) > 8 else ""
        problems = f"no counterpart for {len(unmatched)} reference keys: {shown}{more}" + (
            f"; {problems}" if problems else ""
        )
    if problems:
        raise CheckpointError(f"reference state dict does not fit this model: {problems}")
    model.load_state_dict(mapped, strict=True)
