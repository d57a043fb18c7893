"""The one device choice: what Ray assigned decides, not whether CUDA exists."""

from __future__ import annotations

import pytest
import torch

from pgray.core.device import enable_tf32, pick_device, resolve_precision
from pgray.errors import ConfigError


def test_pick_device_follows_ray_not_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device(assigned_gpus=[]).type == "cpu"  # Ray gave this actor no GPU
    assert pick_device(assigned_gpus=["3"]) == torch.device("cuda", 0)
    assert pick_device().type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device(assigned_gpus=["3"]).type == "cpu"  # a logical GPU
    with pytest.raises(ConfigError, match="no CUDA"):
        pick_device("cuda")


def test_auto_precision_is_fp32_on_the_cpu():
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"


def test_tf32_is_switched_on_for_cuda_only():
    """On the CPU the call changes nothing (benchmarks/gpu_check.sh reads the flag back on a
    GPU)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        assert enable_tf32(torch.device("cpu")) is False
        assert pick_device("cpu").type == "cpu"
        assert not torch.backends.cuda.matmul.allow_tf32
        assert not torch.backends.cudnn.allow_tf32
        assert enable_tf32(torch.device("cuda", 0)) is True  # flags only: no CUDA needed
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_evaluation_attacks_in_fp32_turn_tf32_off_and_back():
    """Training may run on TF32; an fp32 evaluation attack runs without it, and the flags
    come back afterwards (the flags can be set without a GPU)."""
    import torch

    from pgray.core.device import strict_fp32

    flags = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = [f.allow_tf32 for f in flags]
    try:
        for f in flags:
            f.allow_tf32 = True
        with strict_fp32(torch.device("cuda"), "fp32"):
            assert [f.allow_tf32 for f in flags] == [False, False]
        assert [f.allow_tf32 for f in flags] == [True, True]
        with strict_fp32(torch.device("cuda"), "bf16"), strict_fp32(torch.device("cpu")):
            assert [f.allow_tf32 for f in flags] == [True, True]
    finally:
        for f, value in zip(flags, saved):
            f.allow_tf32 = value
