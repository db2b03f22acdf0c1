"""Plain U-Net trained from scratch.

Ronneberger, Fischer, Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation",
MICCAI 2015, arXiv:1505.04597. Differences from the paper: same-padding convolutions (output
size = input size), BatchNorm after every convolution, and a configurable base width (32 by
default instead of 64, ~7.8 M parameters) and depth (number of down-sampling steps).
"""

from __future__ import annotations

from models.blocks import ConvBlock, IdentityGate, UNetSkeleton, reject_pretrained
from models.registry import register

PAPER = "Ronneberger et al., U-Net, MICCAI 2015 (arXiv:1505.04597)"


@register("unet", paper=PAPER)
def unet(
    in_channels: int = 1,
    encoder_weights: str | None = None,
    presence_head: bool = False,
    base_width: int = 32,
    depth: int = 4,
) -> UNetSkeleton:
    """U-Net with ``depth`` 2x down-samplings; input H, W must be multiples of 2**depth."""
    reject_pretrained("unet", encoder_weights)
    return UNetSkeleton(in_channels, base_width, depth, ConvBlock, IdentityGate, presence_head)
