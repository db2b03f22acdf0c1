"""Shared building blocks: conv blocks and a U-Net encoder/decoder skeleton.

The skeleton follows Ronneberger et al., "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015 (arXiv:1505.04597), with BatchNorm and same-padding convolutions.
It is parameterised by the *block* (what each level computes) and the *skip gate* (how an
encoder skip is filtered before concatenation), so U-Net, Attention U-Net, SK-U-Net and
TransCGUNet share one implementation and differ only in those two pieces.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from models.registry import ModelError

# block(in_channels, out_channels) -> module mapping (B, in, H, W) to (B, out, H, W)
BlockFactory = Callable[[int, int], nn.Module]
# gate(skip_channels, gating_channels) -> module with forward(skip, gating) -> gated skip
GateFactory = Callable[[int, int], nn.Module]

EMPTY_LOGIT = -20.0  # sigmoid(-20) ~ 2e-9: "certainly background"


def conv_bn_relu(in_ch: int, out_ch: int, dilation: int = 1) -> nn.Sequential:
    """3x3 convolution (same padding) + BatchNorm + ReLU; bias is redundant before BN."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class ConvBlock(nn.Sequential):
    """The U-Net level: two 3x3 conv-BN-ReLU layers."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(conv_bn_relu(in_ch, out_ch), conv_bn_relu(out_ch, out_ch))


class IdentityGate(nn.Module):
    """Plain U-Net skip: the encoder features pass unchanged."""

    def __init__(self, skip_ch: int = 0, gating_ch: int = 0) -> None:
        super().__init__()

    def forward(self, skip: torch.Tensor, gating: torch.Tensor) -> torch.Tensor:
        return skip


def level_widths(base_width: int, depth: int) -> list[int]:
    """Channels per level: base, 2*base, ..., base * 2**depth (the bottleneck)."""
    if base_width < 1 or depth < 1:
        raise ModelError(f"base_width and depth must be >= 1, got base_width={base_width}, depth={depth}")
    return [base_width * 2**i for i in range(depth + 1)]


def check_input(x: torch.Tensor, depth: int) -> None:
    """Fail with a clear message instead of a shape mismatch deep in the decoder."""
    if x.ndim != 4:
        raise ModelError(f"expected input (B, C, H, W), got shape {tuple(x.shape)}")
    factor = 2**depth
    if x.shape[-2] % factor or x.shape[-1] % factor:
        raise ModelError(
            f"input H, W must be multiples of {factor} (depth {depth}), got {tuple(x.shape[-2:])}"
        )


def reject_pretrained(name: str, encoder_weights: object) -> None:
    if encoder_weights is not None:
        raise ModelError(
            f"{name} is trained from scratch: encoder_weights must be None, got {encoder_weights!r}"
        )


class UNetEncoder(nn.Module):
    """Contracting path: ``block`` at each level, 2x2 max-pool between levels."""

    def __init__(self, in_channels: int, widths: list[int], block: BlockFactory) -> None:
        super().__init__()
        self.stem = block(in_channels, widths[0])
        self.downs = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), block(w_in, w_out)) for w_in, w_out in zip(widths, widths[1:])
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features from finest to coarsest; the last one is the bottleneck."""
        feats = [self.stem(x)]
        for down in self.downs:
            feats.append(down(feats[-1]))
        return feats


class UNetDecoder(nn.Module):
    """Expanding path: up-convolution, gated skip, concatenation, ``block``."""

    def __init__(self, widths: list[int], block: BlockFactory, gate: GateFactory = IdentityGate) -> None:
        super().__init__()
        levels = list(zip(widths[:-1], widths[1:]))[::-1]  # (fine, coarse) pairs, coarsest first
        self.ups = nn.ModuleList(nn.ConvTranspose2d(c, f, 2, stride=2) for f, c in levels)
        self.gates = nn.ModuleList(gate(f, c) for f, c in levels)
        self.blocks = nn.ModuleList(block(2 * f, f) for f, _ in levels)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for up, gate, block, skip in zip(self.ups, self.gates, self.blocks, feats[-2::-1]):
            # The gate sees the coarser decoder state, as in Oktay et al. 2018.
            x = block(torch.cat([gate(skip, x), up(x)], dim=1))
        return x


class GlobalAvgPool(nn.Module):
    """Mean over H and W, keeping (B, C, 1, 1). ATen computes ``AdaptiveAvgPool2d(1)`` as this very
    mean; spelled out so that no other output size slips in, whose CUDA backward has no deterministic
    kernel (torch warns or stops under deterministic algorithms; tests/models/test_cuda_kernels.py)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1), keepdim=True)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Exactly ``F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)``, built from
    slicing, concatenation and weighted sums, whose CUDA backward is deterministic (the bilinear
    kernel's backward accumulates with atomics). Output pixel 2i mixes input i with i-1, 2i+1 with
    i+1, at weights 3/4 and 1/4, edges clamped."""
    for dim in (-1, -2):
        n = x.shape[dim]
        prev = torch.cat([x.narrow(dim, 0, 1), x.narrow(dim, 0, n - 1)], dim=dim)
        nxt = torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)], dim=dim)
        even, odd = 0.75 * x + 0.25 * prev, 0.75 * x + 0.25 * nxt
        x = torch.stack([even, odd], dim=dim).flatten(dim - 1, dim)  # interleave: ..., 2n along dim
    return x


class PresenceHead(nn.Sequential):
    """Image-level logit from bottleneck features: global average pool + linear."""

    def __init__(self, channels: int) -> None:
        super().__init__(GlobalAvgPool(), nn.Flatten(), nn.Linear(channels, 1))


class UNetSkeleton(nn.Module):
    """Encoder, optional bottleneck transform, gated decoder, 1x1 head to one logit map.

    With ``presence_head=True`` the forward returns ``{"mask", "presence"}`` instead of a tensor.
    """

    def __init__(
        self,
        in_channels: int = 1,
        base_width: int = 32,
        depth: int = 4,
        block: BlockFactory = ConvBlock,
        gate: GateFactory = IdentityGate,
        presence_head: bool = False,
    ) -> None:
        super().__init__()
        widths = level_widths(base_width, depth)
        self.depth = depth
        self.encoder = UNetEncoder(in_channels, widths, block)
        self.decoder = UNetDecoder(widths, block, gate)
        self.head = nn.Conv2d(widths[0], 1, 1)
        self.presence = PresenceHead(widths[-1]) if presence_head else None

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        check_input(x, self.depth)
        feats = self.encoder(x)
        mask = self.head(self.decoder(feats))
        if self.presence is None:
            return mask
        return {"mask": mask, "presence": self.presence(feats[-1])}
