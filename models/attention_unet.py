"""Attention U-Net: U-Net whose every skip connection passes an additive attention gate.

Oktay et al., "Attention U-Net: Learning Where to Look for the Pancreas", MIDL 2018,
arXiv:1804.03999. The gate (their Fig. 2) computes, for skip features x at resolution H and the
coarser decoder state g at H/2,

    alpha = sigmoid(psi(relu(W_x x + W_g g)))   (W_x: 2x2 stride-2 conv, W_g and psi: 1x1 convs)

up-samples alpha bilinearly to H and returns alpha * x, so irrelevant regions are suppressed
before concatenation. The exact 2x bilinear up-sampling is :func:`models.blocks.upsample2x`, whose
CUDA backward is deterministic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.blocks import ConvBlock, UNetSkeleton, reject_pretrained, upsample2x
from models.registry import register

PAPER = "Oktay et al., Attention U-Net, MIDL 2018 (arXiv:1804.03999)"


class AttentionGate(nn.Module):
    """Additive attention gate; ``coefficients`` exposes alpha in [0, 1] of shape (B, 1, H, W)."""

    def __init__(self, skip_ch: int, gating_ch: int, inter_ch: int | None = None) -> None:
        super().__init__()
        inter = inter_ch or max(skip_ch // 2, 1)
        self.theta_x = nn.Conv2d(skip_ch, inter, 2, stride=2, bias=False)
        self.phi_g = nn.Conv2d(gating_ch, inter, 1)
        self.psi = nn.Conv2d(inter, 1, 1)
        # Output transform of the paper's gate: 1x1 conv + BN on the gated features.
        self.out = nn.Sequential(nn.Conv2d(skip_ch, skip_ch, 1, bias=False), nn.BatchNorm2d(skip_ch))

    def coefficients(self, skip: torch.Tensor, gating: torch.Tensor) -> torch.Tensor:
        theta = self.theta_x(skip)
        alpha = torch.sigmoid(self.psi(F.relu(theta + _resize(self.phi_g(gating), theta.shape[-2:]))))
        return _resize(alpha, skip.shape[-2:])

    def forward(self, skip: torch.Tensor, gating: torch.Tensor) -> torch.Tensor:
        return self.out(skip * self.coefficients(skip, gating))


def _resize(x: torch.Tensor, size: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Bilinear resizing to ``size``, skipped when nothing changes (g already matches theta in a U-Net,
    and a same-size interpolate is a slow copy under deterministic algorithms) and done by
    :func:`models.blocks.upsample2x` for the usual exact doubling (a deterministic CUDA backward)."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    if (2 * h, 2 * w) == tuple(size):
        return upsample2x(x)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


@register("attention_unet", paper=PAPER)
def attention_unet(
    in_channels: int = 1,
    encoder_weights: str | None = None,
    presence_head: bool = False,
    base_width: int = 32,
    depth: int = 4,
) -> UNetSkeleton:
    """U-Net skeleton with an :class:`AttentionGate` on every skip (~7.9 M parameters by default)."""
    reject_pretrained("attention_unet", encoder_weights)
    return UNetSkeleton(in_channels, base_width, depth, ConvBlock, AttentionGate, presence_head)
