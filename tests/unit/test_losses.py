"""PatchGuard loss: patch BCE and the attention-degree (KL to uniform) regulariser."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Categorical, kl_divergence

from pgray.config import LossConfig
from pgray.core.losses import patch_bce, patchguard_loss, uniform_kl

B, H, P, N = 2, 3, 1, 16  # images, heads, prefix tokens, patch tokens
T = P + N


def random_attention(seed: int = 0, requires_grad: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scores = (2 * torch.randn(B, H, T, T, generator=g)).requires_grad_(requires_grad)
    return scores.softmax(dim=-1)


def test_patch_bce_sums_patches_and_averages_images():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    p = torch.sigmoid(logits)
    manual = -(labels * p.log() + (1 - labels) * (1 - p).log()).sum(dim=1).mean()
    torch.testing.assert_close(patch_bce(logits, labels), manual)
    with pytest.raises(ValueError, match="differ"):
        patch_bce(logits, labels[:, :2])


def test_row_kl_equals_torch_distributions_on_renormalised_rows():
    attn = random_attention()
    rows = attn[..., P:, P:]
    rows = rows / rows.sum(-1, keepdim=True)
    uniform = Categorical(probs=torch.full_like(rows, 1.0 / N))
    expected = kl_divergence(uniform, Categorical(probs=rows)).mean()
    got = uniform_kl(attn, num_prefix_tokens=P, reduction="row", renormalize=True)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert got > 0


def test_mean_reduction_is_the_references_elementwise_kl_div():
    attn = random_attention(seed=1)
    patches = attn[:, :, P:, P:]
    # The reference calls F.kl_div(..., reduction="mean"): the sum over all elements / numel
    # (written as sum / numel here because torch plans to change what "mean" means).
    reference = (
        F.kl_div(torch.log(patches + 1e-8), torch.full_like(patches, 1.0 / N), reduction="sum")
        / patches.numel()
    )
    torch.testing.assert_close(uniform_kl(attn, P, "mean"), reference)
    # Without renormalisation each row term is sum_j (1/N) (log(1/N) - log a_j).
    manual = ((1.0 / N) * (math.log(1.0 / N) - torch.log(patches + 1e-8))).sum(-1).mean()
    torch.testing.assert_close(uniform_kl(attn, P, "row"), manual)


def test_mean_is_row_divided_by_n():
    attn = random_attention(seed=2)
    for renorm in (False, True):
        mean = uniform_kl(attn, P, "mean", renorm)
        row = uniform_kl(attn, P, "row", renorm)
        torch.testing.assert_close(mean, row / N)
    with pytest.raises(ValueError, match="reduction"):
        uniform_kl(attn, P, "sum")


def test_uniform_attention_has_zero_degree_penalty():
    over_patches = torch.zeros(B, H, T, T)
    over_patches[..., P:] = 1.0 / N
    for reduction in ("mean", "row"):
        assert abs(uniform_kl(over_patches, P, reduction).item()) < 1e-6
    # Uniform over all T tokens: the prefix column's mass is missing from each patch row, so
    # without renormalisation the row term is log(T/N); renormalised, it is 0.
    over_all = torch.full((B, H, T, T), 1.0 / T)
    assert uniform_kl(over_all, P, "row").item() == pytest.approx(math.log(T / N), abs=1e-6)
    assert abs(uniform_kl(over_all, P, "row", renormalize=True).item()) < 1e-6


def test_patchguard_loss_total_and_parts():
    cfg = LossConfig(attention_layers=[1, -1], attention_weights=[0.5, 2.0], attention_lambda=3.0)
    logits = torch.randn(B, N, requires_grad=True)
    labels = (torch.rand(B, N) > 0.7).float()
    maps = [random_attention(seed=6, requires_grad=True), random_attention(seed=7)]
    total, parts = patchguard_loss(logits, labels, maps, cfg, num_prefix_tokens=P)
    bce = patch_bce(logits, labels)
    kl1, kl2 = uniform_kl(maps[0], P), uniform_kl(maps[1], P)
    torch.testing.assert_close(total, bce + 3.0 * (0.5 * kl1 + 2.0 * kl2))
    assert set(parts) == {"bce", "attn_reg", "attn_lambda_eff", "attn_kl_1", "attn_kl_-1", "total"}
    torch.testing.assert_close(parts["attn_kl_-1"], kl2)
    assert not parts["total"].requires_grad
    total.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_patchguard_loss_without_regulariser_and_with_wrong_maps():
    logits, labels = torch.randn(B, N), torch.zeros(B, N)
    off = LossConfig(attention_lambda=0.0)
    total, parts = patchguard_loss(logits, labels, None, off, num_prefix_tokens=P)
    torch.testing.assert_close(total, patch_bce(logits, labels))
    assert parts["attn_reg"].item() == 0.0
    with pytest.raises(ValueError, match="expected 3 attention maps"):
        patchguard_loss(logits, labels, [random_attention()], LossConfig(), num_prefix_tokens=P)


def test_low_precision_inputs_are_reduced_in_float32():
    attn = random_attention(seed=8).to(torch.bfloat16)
    logits = torch.randn(B, N).to(torch.bfloat16)
    total, _ = patchguard_loss(logits, torch.zeros(B, N), [attn] * 3, LossConfig(), P)
    assert total.dtype == torch.float32 and torch.isfinite(total)
