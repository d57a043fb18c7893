"""The PatchGuard model: a timm ViT backbone plus an attention discriminator, one logit per patch.

Inputs are images in [0, 1]; ImageNet normalisation happens inside, so attacks and their epsilon
live in pixel space. `forward` returns patch logits (B, N); `image_scores` and `anomaly_maps` turn
them into image scores and pixel maps. `capture_attention` exposes the softmaxed attention maps of
chosen backbone blocks for the attention-degree regulariser.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pgray.config import ModelConfig
from pgray.core.backbone import create_backbone
from pgray.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The reference initialises the discriminator's positional embedding with torch.randn (std 1):
# its features come out of a LayerNorm, so unit scale keeps position and content comparable.
POS_EMBED_INIT_STD = 1.0


def resolve_layers(layers: Sequence[int], depth: int, what: str = "layer") -> list[int]:
    """0-based block indices of 1-based `layers` (negative counts from the end: -1 is the last).

    Raises ConfigError naming the layer and the depth when one is out of range or repeated.
    """
    out: list[int] = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise ConfigError(f"{what} {layer!r} is not an integer block number")
        if layer == 0 or not -depth <= layer <= depth:
            raise ConfigError(
                f"{what} {layer} is out of range: the backbone has {depth} blocks"
                f" (use 1..{depth}, or -1..-{depth} from the end)"
            )
        index = layer - 1 if layer > 0 else depth + layer
        if index in out:
            raise ConfigError(f"{what} {layer} names block {index + 1} twice in {list(layers)}")
        out.append(index)
    return out


def gaussian_kernel1d(sigma: float, radius: int) -> torch.Tensor:
    """Normalised 1-D Gaussian taps on [-radius, radius], the same taps as scipy.ndimage."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).float()


def symmetric_pad_index(size: int, radius: int) -> torch.Tensor:
    """Source indices of a length-`size` axis padded by `radius` with scipy's 'reflect' rule.

    scipy's 'reflect' repeats the edge sample (d c b a | a b c d), which torch's own 'reflect'
    padding does not; gathering with these indices reproduces scipy for any radius.
    """
    i = torch.arange(-radius, size + radius) % (2 * size)
    return torch.where(i >= size, 2 * size - 1 - i, i)


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))


class AttentionDiscriminator(nn.Module):
    """Positional embedding, one post-norm transformer block, then one logit per patch.

    Block: x = LN(x + drop(MHSA(x))); x = x + drop(MLP(x)) (no norm after the MLP), as the
    reference does.
    """

    def __init__(
        self,
        num_patches: int,
        dim: int,
        heads: int,
        mlp_dim: int,
        dropout: float,
        attn_dropout: float,
    ) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.randn(num_patches, dim) * POS_EMBED_INIT_STD)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=attn_dropout, batch_first=True)
        self.drop1 = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, mlp_dim, dropout)
        self.drop2 = nn.Dropout(dropout)
        self.head = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed
        # need_weights=False lets MultiheadAttention use the fused SDPA kernel.
        attn_out = self.attn(x, x, x, need_weights=False)[0]
        x = self.norm(x + self.drop1(attn_out))
        x = x + self.drop2(self.mlp(x))
        return self.head(x).squeeze(-1)


class _AttentionCapture:
    """Collects the softmaxed attention of chosen timm blocks during each forward.

    Inside the capture, the chosen blocks' `fused_attn` flag is off, so timm computes attention
    explicitly, once, and passes the softmaxed map through `attn_drop`; a forward pre-hook on
    that dropout reads the map (before dropout, differentiable). Other blocks keep fused SDPA.
    """

    def __init__(self, blocks: nn.ModuleList, indices: list[int], layers: Sequence[int]) -> None:
        self.indices = indices
        self.layers = list(layers)
        self.maps: list[torch.Tensor] = []
        self._slots: dict[int, torch.Tensor] = {}
        self._handles: list[Any] = []
        self._saved: list[tuple[nn.Module, bool]] = []
        modules = [blocks[index].attn for index in indices]
        for attn, layer in zip(modules, self.layers):  # check all before changing any
            if not (
                hasattr(attn, "fused_attn")
                and isinstance(getattr(attn, "attn_drop", None), nn.Module)
            ):
                raise ConfigError(
                    f"cannot capture attention of block {layer}: {type(attn).__name__} is not a"
                    " timm attention module with fused_attn and attn_drop"
                )
        for index, attn in zip(indices, modules):
            self._saved.append((attn, attn.fused_attn))
            attn.fused_attn = False
            self._handles.append(attn.attn_drop.register_forward_pre_hook(self._hook(index)))

    def _hook(self, index: int) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def store(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            self._slots[index] = args[0]

        return store

    def begin(self) -> None:
        self._slots.clear()

    def finish(self) -> None:
        missing = [layer for i, layer in zip(self.indices, self.layers) if i not in self._slots]
        if missing:
            raise RuntimeError(f"no attention map was captured for blocks {missing}")
        # Refill in place, in the order the layers were requested (the loss weights follow it).
        self.maps[:] = [self._slots[i] for i in self.indices]
        self._slots.clear()

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        for attn, fused in self._saved:
            attn.fused_attn = fused


class PatchGuard(nn.Module):
    """ViT backbone + attention discriminator; `forward(x in [0,1]) -> patch logits (B, N)`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = create_backbone(cfg)
        self.num_blocks: int = len(self.backbone.blocks)
        self.num_prefix_tokens: int = int(self.backbone.num_prefix_tokens)
        self.feature_indices = sorted(
            resolve_layers(cfg.feature_layers, self.num_blocks, "model.feature_layers:")
        )
        # Blocks after the deepest feature block never reach the logits; kept, they would get
        # no gradient and DDP would fail on its second step. (num_blocks stays the configured
        # depth: layer numbers in configs keep their meaning.)
        self.backbone.blocks = self.backbone.blocks[: max(self.feature_indices) + 1]
        self.patch_size, self.grid = self._geometry()
        self.num_patches: int = self.grid[0] * self.grid[1]
        dim = int(self.backbone.embed_dim) * len(self.feature_indices)
        self._check_head(dim)
        self.disc = AttentionDiscriminator(
            self.num_patches, dim, cfg.disc_heads, cfg.disc_mlp_dim,
            cfg.disc_dropout, cfg.disc_attn_dropout,
        )  # fmt: skip
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._register_smoothing()
        self._capture: _AttentionCapture | None = None

    @property
    def img_size(self) -> int:
        """The square input size (the detector interface, pgray.detectors.base)."""
        return self.cfg.img_size

    def _geometry(self) -> tuple[int, tuple[int, int]]:
        ph, pw = self.backbone.patch_embed.patch_size
        if ph != pw or self.cfg.img_size % ph:
            raise ConfigError(
                f"model.img_size: {self.cfg.img_size} must be a multiple of the square patch"
                f" size, got patch {ph}x{pw}"
            )
        grid = tuple(int(g) for g in self.backbone.patch_embed.grid_size)
        return int(ph), (grid[0], grid[1])

    def _check_head(self, dim: int) -> None:
        if dim % self.cfg.disc_heads:
            raise ConfigError(
                f"model.disc_heads: {self.cfg.disc_heads} does not divide the feature width {dim}"
            )
        if self.cfg.top_k > self.num_patches:
            raise ConfigError(
                f"model.top_k: {self.cfg.top_k} exceeds the number of patches {self.num_patches}"
            )

    def _register_smoothing(self) -> None:
        sigma, radius = self.cfg.smoothing_sigma, self.cfg.smoothing_radius
        self._smooth = sigma > 0 and radius > 0
        taps = gaussian_kernel1d(sigma, radius) if self._smooth else torch.ones(1)
        self.register_buffer("smooth_kernel", taps, persistent=False)
        index = symmetric_pad_index(self.cfg.img_size, radius if self._smooth else 0)
        self.register_buffer("smooth_index", index, persistent=False)

    # -- forward -----------------------------------------------------------------------------

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Final-normed patch tokens of the feature blocks, concatenated on channels (B, N, D)."""
        size = (self.cfg.img_size, self.cfg.img_size)
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != size:
            raise ValueError(f"expected images (B, 3, {size[0]}, {size[1]}), got {tuple(x.shape)}")
        x = (x - self.mean) / self.std
        capture = self._capture
        if capture is not None:
            capture.begin()
        tokens = self.backbone.forward_intermediates(
            x,
            indices=self.feature_indices,
            norm=True,  # the backbone's final norm, as the reference applies to every layer
            stop_early=True,
            output_fmt="NLC",
            intermediates_only=True,  # prefix tokens (CLS, registers) already dropped
        )
        if capture is not None:
            capture.finish()
        return tokens[0] if len(tokens) == 1 else torch.cat(tokens, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.disc(self.features(x))

    def image_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Mean of the top-k patch logits per image (B,)."""
        return logits.float().topk(self.cfg.top_k, dim=1).values.mean(dim=1)

    def anomaly_maps(self, logits: torch.Tensor) -> torch.Tensor:
        """Pixel maps (B, 1, H, W): bilinear upsampling of the patch grid, then Gaussian smoothing.

        The smoothing equals scipy.ndimage.gaussian_filter(sigma, radius) per image ('reflect'
        borders), run as two 1-D convolutions on the logits' device for the whole batch.
        """
        grid = logits.float().reshape(-1, 1, *self.grid)
        size = (self.cfg.img_size, self.cfg.img_size)
        maps = F.interpolate(grid, size=size, mode="bilinear", align_corners=False)
        if not self._smooth:
            return maps
        taps = self.smooth_kernel.to(maps.device)
        index = self.smooth_index.to(maps.device)
        maps = F.conv2d(maps.index_select(2, index), taps.view(1, 1, -1, 1))
        return F.conv2d(maps.index_select(3, index), taps.view(1, 1, 1, -1))

    def compile_blocks(self, mode: str = "default", skip_layers: Sequence[int] = ()) -> None:
        """torch.compile the discriminator and every backbone block whose attention is not
        captured (`skip_layers`, 1-based): capture_attention switches the captured blocks to
        explicit attention and hooks their dropout at each forward, which a compiled graph
        would recompile for or silently miss. For speed runs and evaluation: the compiled
        blocks' state_dict keys gain `_orig_mod.`, so save an uncompiled copy."""
        skip = set(resolve_layers(list(skip_layers), self.num_blocks, "layer"))
        for i in range(len(self.backbone.blocks)):
            if i not in skip:
                self.backbone.blocks[i] = torch.compile(self.backbone.blocks[i], mode=mode,
                                                        dynamic=False)
        self.disc = torch.compile(self.disc, mode=mode, dynamic=False)

    def drop_unbuilt_blocks(self, state: dict[str, Any]) -> dict[str, Any]:
        """`state` without the weights of backbone blocks this model does not build (from a
        checkpoint written before they were dropped; they never influenced its output)."""
        built = len(self.backbone.blocks)
        keep = {}
        for key, value in state.items():
            parts = key.split(".")
            if parts[:2] == ["backbone", "blocks"] and parts[2].isdigit() and int(parts[2]) >= built:
                continue
            keep[key] = value
        return keep

    # -- attention capture -------------------------------------------------------------------

    @contextmanager
    def capture_attention(self, layers: Sequence[int]) -> Iterator[list[torch.Tensor]]:
        """Yield a list that each forward refills with the softmaxed attention (B, heads, T, T)
        of blocks `layers` (1-based, negative from the end), in the order given.

        The maps keep their graph (for the regulariser). Only the captured blocks compute
        attention explicitly; everything else, and everything outside the context, stays on
        timm's fused kernel. The list is refilled in place at every forward: copy it before
        running another forward (e.g. an attack) if the maps are still needed.
        """
        if self._capture is not None:
            raise RuntimeError("capture_attention is already active on this model")
        indices = resolve_layers(layers, self.num_blocks, "attention layer")
        deepest = max(self.feature_indices)
        beyond = [layer for layer, i in zip(layers, indices) if i > deepest]
        if beyond:
            raise ConfigError(
                f"attention layers {beyond} lie after the deepest feature block ({deepest + 1}):"
                " they do not influence the logits and are never run"
            )
        capture = _AttentionCapture(self.backbone.blocks, indices, layers)
        self._capture = capture
        try:
            yield capture.maps
        finally:
            self._capture = None
            capture.close()
