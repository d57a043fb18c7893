"""Where the math runs and in which number format: the one device choice and the one
precision rule of pgray (training, attacks and evaluation all ask here)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from pgray.errors import ConfigError


def pick_device(requested: str | None = None, *,
                assigned_gpus: Sequence[object] | None = None) -> torch.device:
    """The device to run on.

    `requested` ('cpu', 'cuda', 'cuda:N') wins. Otherwise, when a scheduler assigned this
    process its GPUs (`assigned_gpus`, e.g. `ray.get_gpu_ids()`), the first of them, or the
    CPU when it assigned none: a process Ray gave no GPU must not pile onto GPU 0 unseen.
    Without either, CUDA when present, else the CPU.
    """
    if requested and requested != "auto":
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {requested!r}: torch sees no CUDA device here")
        return device
    if assigned_gpus is not None:
        # Ray sets CUDA_VISIBLE_DEVICES to the assigned GPUs, so the first is cuda:0; a
        # logical GPU on a machine without CUDA (tests, CPU clusters) falls back to the CPU.
        if len(assigned_gpus) > 0 and torch.cuda.is_available():
            return torch.device("cuda", 0)
        return torch.device("cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def on_device(value, device: torch.device, *, cpu, cuda):
    """A config value left unset (None) takes the default that suits the device."""
    if value is not None:
        return value
    return cuda if device.type == "cuda" else cpu


def cuda_available() -> bool:
    return torch.cuda.is_available()


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' means bf16 on a CUDA device that supports it, fp32 elsewhere (CPU bf16 autocast
    is slower than fp32 there); 'fp32' and 'bf16' are taken as given."""
    if precision != "auto":
        return precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """A fresh autocast context for `precision` ('auto' resolved first); fp32 runs plain.

    Make one per use: autocast objects hold their entry state, so sharing one across
    entries is fragile.
    """
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
