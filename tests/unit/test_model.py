"""PatchGuard model: shapes, features, scores, maps, attention capture and backbone weights."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from scipy.ndimage import correlate1d, gaussian_filter

from pgray.config import ModelConfig, tiny_model_config
from pgray.core.model import PatchGuard, resolve_layers, symmetric_pad_index
from pgray.errors import CheckpointError, ConfigError


def build(seed: int = 0, depth: int = 2, **overrides) -> PatchGuard:
    torch.manual_seed(seed)
    cfg = dataclasses.replace(tiny_model_config(depth=depth), **overrides)
    return PatchGuard(cfg).eval()


def images(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def tiny_backbone(seed: int, img_size: int = 32, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    kwargs = dict(tiny_model_config().backbone_kwargs, **kw)
    return timm.create_model("vit_tiny_patch16_224", img_size=img_size, num_classes=0, **kwargs)


def explicit_attention(attn: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) straight from the block's qkv projection."""
    b, t, _ = tokens.shape
    qkv = attn.qkv(tokens).reshape(b, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = qkv[0], qkv[1]
    return torch.softmax(q @ k.transpose(-2, -1) / attn.head_dim**0.5, dim=-1)


def test_geometry_and_output_shapes():
    model = build()
    assert (model.patch_size, model.grid, model.num_patches) == (8, (4, 4), 16)
    assert (model.num_blocks, model.num_prefix_tokens) == (2, 1)
    logits = model(images(3))
    assert logits.shape == (3, 16)
    assert model.image_scores(logits).shape == (3,)
    assert model.anomaly_maps(logits).shape == (3, 1, 32, 32)


def test_image_score_is_mean_of_top_k():
    model = build()
    logits = torch.tensor([[float(i) for i in range(16)], [5.0] + [-1.0] * 15])
    expected = torch.tensor([(15 + 14 + 13) / 3, (5 - 1 - 1) / 3])
    torch.testing.assert_close(model.image_scores(logits), expected)


def test_normalisation_and_final_norm_happen_inside():
    model = build()
    x = images()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    # forward_features ends with the final norm; dropping CLS leaves the patch features.
    expected = model.backbone.forward_features((x - mean) / std)[:, 1:]
    torch.testing.assert_close(model.features(x), expected)
    torch.testing.assert_close(model(x), model.disc(expected))


def test_feature_layers_concatenate_normed_block_outputs():
    model = build(feature_layers=[1, -1])
    bb = model.backbone
    x = images()
    h = bb.norm_pre(bb._pos_embed(bb.patch_embed((x - model.mean) / model.std)))
    h1 = bb.blocks[0](h)
    h2 = bb.blocks[1](h1)
    expected = torch.cat([bb.norm(h1)[:, 1:], bb.norm(h2)[:, 1:]], dim=-1)
    feats = model.features(x)
    assert feats.shape == (2, 16, 128)
    torch.testing.assert_close(feats, expected)
    assert model(x).shape == (2, 16)


def test_layer_numbers_are_one_based_and_checked():
    assert resolve_layers([1, -1, 2], 3) == [0, 2, 1]
    with pytest.raises(ConfigError, match=r"3 is out of range.*2 blocks"):
        build(feature_layers=[3])
    with pytest.raises(ConfigError, match=r"-3 is out of range.*2 blocks"):
        resolve_layers([-3], 2)
    with pytest.raises(ConfigError, match="twice"):
        resolve_layers([2, -1], 2)
    model = build()
    with pytest.raises(ConfigError, match=r"attention layer 5 is out of range.*2 blocks"):
        with model.capture_attention([5]):
            pass


def test_anomaly_maps_match_scipy_gaussian_filter():
    model = build(smoothing_sigma=2.5, smoothing_radius=6)
    logits = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))
    up = F.interpolate(logits.view(3, 1, 4, 4), size=(32, 32), mode="bilinear", align_corners=False)
    expected = gaussian_filter(
        up[:, 0].numpy().astype(np.float64), sigma=2.5, radius=6, axes=(1, 2)
    )
    maps = model.anomaly_maps(logits)
    np.testing.assert_allclose(maps[:, 0].numpy(), expected, atol=1e-5)
    # Smoothing really happened (the map differs from the plain upsampling) ...
    assert (maps - up).abs().max() > 1e-2
    # ... and sigma 0 turns it off.
    plain = build(smoothing_sigma=0.0).anomaly_maps(logits)
    torch.testing.assert_close(plain, up)


def test_symmetric_padding_repeats_the_edge_like_scipy():
    assert symmetric_pad_index(4, 2).tolist() == [1, 0, 0, 1, 2, 3, 3, 2]
    assert symmetric_pad_index(2, 5).tolist() == [0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1]
    # A radius wider than the axis still agrees with scipy: box sums over the padded signal.
    signal = torch.tensor([1.0, 10.0, 100.0])
    padded = signal[symmetric_pad_index(3, 7)]
    sums = padded.unfold(0, 15, 1).sum(-1)
    expected = correlate1d(signal.numpy(), np.ones(15), mode="reflect")
    np.testing.assert_allclose(sums.numpy(), expected)


def test_capture_equals_explicit_attention_and_keeps_outputs():
    model = build(depth=3)
    x = images()
    inputs: dict[int, torch.Tensor] = {}
    hooks = [
        blk.attn.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0]))
        for i, blk in enumerate(model.backbone.blocks)
    ]
    plain = model(x)
    assert all(blk.attn.fused_attn for blk in model.backbone.blocks)  # timm's default here
    with model.capture_attention([-1, 1]) as maps:
        flags = [blk.attn.fused_attn for blk in model.backbone.blocks]
        captured = model(x)
    for h in hooks:
        h.remove()
    assert flags == [False, True, False]  # only the captured blocks leave the fused kernel
    assert all(blk.attn.fused_attn for blk in model.backbone.blocks)  # restored on exit
    assert [m.shape for m in maps] == [(2, 2, 17, 17)] * 2
    # Maps come in the requested order: block 3 first, then block 1.
    torch.testing.assert_close(
        maps[0], explicit_attention(model.backbone.blocks[2].attn, inputs[2])
    )
    torch.testing.assert_close(
        maps[1], explicit_attention(model.backbone.blocks[0].attn, inputs[0])
    )
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 2, 17))
    torch.testing.assert_close(captured, plain, atol=1e-5, rtol=1e-5)


def test_capture_list_is_refilled_at_each_forward():
    model = build()
    with model.capture_attention([2]) as maps:
        model(images(seed=1))
        first = maps[0]
        model(images(n=3, seed=2))
        assert len(maps) == 1 and maps[0].shape[0] == 3
        assert maps[0] is not first
    with pytest.raises(ConfigError, match="after the deepest feature block"):
        with build(feature_layers=[1]).capture_attention([2]):
            pass


def test_gradients_reach_input_and_attention_maps_are_differentiable():
    model = build()
    x = images().requires_grad_(True)
    with model.capture_attention([1, 2]) as maps:
        logits = model(x)
        reg = sum(torch.log(m + 1e-8).mean() for m in maps)
    logits.sum().backward(retain_graph=True)
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    qkv = model.backbone.blocks[0].attn.qkv.weight
    qkv.grad = None
    reg.backward()
    assert qkv.grad is not None and qkv.grad.abs().sum() > 0


def test_weights_from_a_local_file_are_loaded(tmp_path):
    donor = tiny_backbone(seed=123)
    path = tmp_path / "backbone.pth"
    torch.save(donor.state_dict(), path)
    default = build(seed=0)
    # pretrained=True with a local file never reaches for the hub (there is no network here).
    loaded = build(seed=0, weights=str(path), pretrained=True)
    for k, v in donor.state_dict().items():
        torch.testing.assert_close(loaded.backbone.state_dict()[k], v)
    torch.testing.assert_close(loaded.disc.pos_embed, default.disc.pos_embed)  # same seed
    x = images()
    assert (loaded(x) - default(x)).abs().max() > 1e-3


def test_local_weights_are_adapted_or_refused_clearly(tmp_path):
    # A classifier head and another image size: timm's filter resamples pos_embed, head dropped.
    big = tiny_backbone(seed=5, img_size=64)
    state = dict(
        big.state_dict(), **{"head.weight": torch.zeros(10, 64), "head.bias": torch.zeros(10)}
    )
    torch.save(state, tmp_path / "big.pth")
    model = build(weights=str(tmp_path / "big.pth"))
    assert model.backbone.pos_embed.shape == (1, 17, 64)
    torch.testing.assert_close(
        model.backbone.blocks[0].attn.qkv.weight, big.blocks[0].attn.qkv.weight
    )

    torch.save(tiny_backbone(seed=5, embed_dim=32).state_dict(), tmp_path / "narrow.pth")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        build(weights=str(tmp_path / "narrow.pth"))
    with pytest.raises(CheckpointError, match="not found"):
        build(weights=str(tmp_path / "absent.pth"))


def test_configuration_errors_are_named():
    with pytest.raises(ConfigError, match=r"'vit_tiny_patch16_22'.*vit_tiny_patch16_224"):
        build(backbone="vit_tiny_patch16_22")
    with pytest.raises(ConfigError, match="top_k: 17 exceeds the number of patches 16"):
        build(top_k=17)
    with pytest.raises(ConfigError, match="disc_heads"):
        build(disc_heads=3)
    with pytest.raises(ConfigError, match=r"backbone_kwargs: .*rejects"):
        build(backbone_kwargs={"patch_size": 8, "depth": 2, "embed_dim": 64, "colour": 1})
    with pytest.raises(ConfigError, match=r"backbone_kwargs: img_size is set by pgray"):
        build(backbone_kwargs={"img_size": 64})
    with pytest.raises(ValueError, match=r"expected images \(B, 3, 32, 32\)"):
        build()(torch.rand(1, 3, 40, 40))


def test_default_config_has_the_reference_geometry():
    torch.manual_seed(0)
    model = PatchGuard(ModelConfig())  # DINOv2 ViT-S/14 at 224, built without weights
    assert (model.patch_size, model.grid, model.num_blocks, model.num_prefix_tokens) == (
        14,
        (16, 16),
        12,
        1,
    )
    d, n, hidden = 384, 256, 2048
    expected = n * d + (4 * d * d + 4 * d) + 2 * d + (d * hidden + hidden + hidden * d + d) + d + 1
    assert sum(p.numel() for p in model.disc.parameters()) == expected
    assert model.disc.attn.num_heads == 4 and model.disc.attn.dropout == 0.2


def test_blocks_after_the_deepest_feature_layer_are_not_built():
    """feature_layers without the last block: the later blocks would get no gradient, and
    DDP refuses parameters without gradients on its second step. Every parameter left gets
    one; layer numbers keep their meaning."""
    from pgray.config import tiny_model_config

    cfg = dataclasses.replace(tiny_model_config(img_size=32, depth=3), feature_layers=[1])
    model = PatchGuard(cfg)
    assert len(model.backbone.blocks) == 1 and model.num_blocks == 3
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    with pytest.raises(ConfigError, match="after the deepest feature block"):
        with model.capture_attention([2]):
            pass
