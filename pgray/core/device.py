"""Where the math runs and in which number format: the one device choice and the one
precision rule of pgray (training, attacks and evaluation all ask here)."""

from __future__ import annotations

import contextlib
import os
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
    elif assigned_gpus is not None:
        # Ray sets CUDA_VISIBLE_DEVICES to the assigned GPUs, so the first is cuda:0; a
        # logical GPU on a machine without CUDA (tests, CPU clusters) falls back to the CPU.
        gpu = len(assigned_gpus) > 0 and torch.cuda.is_available()
        device = torch.device("cuda", 0) if gpu else torch.device("cpu")
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    enable_tf32(device)
    return device


def enable_tf32(device: torch.device) -> bool:
    """On CUDA, let fp32 matmuls and convolutions run on TF32 tensor cores (Ampere and
    later: several times the fp32 rate, 10-bit mantissa products with fp32 accumulation);
    evaluation attacks in fp32 turn it off while they run (`strict_fp32`). Returns whether
    it set anything: the CPU is left as it is."""
    if device.type != "cuda":
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


@contextlib.contextmanager
def strict_fp32(device: torch.device, precision: str = "fp32"):
    """Evaluation attacks in fp32 are fp32 throughout: TF32 off on CUDA while they run (their
    gradients stay full precision unless bf16 was validated on the model:
    `pgray.attacks.precision`); training keeps TF32. A no-op elsewhere or under bf16."""
    if device.type != "cuda" or precision != "fp32":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def on_device(value, device: torch.device, *, cpu, cuda):
    """A config value left unset (None) takes the default that suits the device."""
    if value is not None:
        return value
    return cuda if device.type == "cuda" else cpu


def loader_workers(device: torch.device, reserved_cpus: float | None = None) -> int:
    """DataLoader worker processes by default: none on the CPU (the step uses the cores
    itself); on CUDA the CPUs a scheduler reserved for this process less the one that drives
    the GPU, or up to 4 of the machine's cores where nothing was reserved."""
    if device.type != "cuda":
        return 0
    if reserved_cpus is not None:
        return max(0, int(reserved_cpus) - 1)
    return min(4, os.cpu_count() or 1)


def gpu_memory_fraction(gpus: float) -> float | None:
    """The share of one GPU's memory a process that holds `gpus` of it may take: its share
    when it holds part of one (evaluation actors of 0.5 GPU each: without a cap the first
    one's caching allocator can take what the other needs), None for whole GPUs or none."""
    return float(gpus) if 0 < gpus < 1 else None


def cap_gpu_memory(gpus: float) -> float | None:
    """Cap this process's CUDA memory at its share of the GPU (`gpu_memory_fraction`) on the
    GPU it sees first (Ray's CUDA_VISIBLE_DEVICES makes that the assigned one). Returns the
    cap set, None where none was (no CUDA, or whole GPUs)."""
    fraction = gpu_memory_fraction(gpus)
    if fraction is None or not torch.cuda.is_available():
        return None
    torch.cuda.set_per_process_memory_fraction(fraction, 0)
    return fraction


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
