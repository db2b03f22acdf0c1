"""``tiny_unet``: a two-level U-Net, registered with nerve-bench through the entry point in pyproject.toml.

The model contract (docs/adding-a-model.md): input ``(B, 1, H, W)`` float32, normalised; output the
raw mask logits ``(B, 1, H, W)`` (no sigmoid), or with ``presence_head=True`` a dict
``{"mask": (B, 1, H, W), "presence": (B, 1)}`` of logits. H and W are multiples of 32 in the suite.
Every factory accepts ``in_channels``, ``encoder_weights`` and ``presence_head``.
"""

from __future__ import annotations

import torch
from torch import nn

from models import ModelError, register

PAPER = "example plugin: two-level U-Net (Ronneberger et al., MICCAI 2015, arXiv:1505.04597)"


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class TinyUNet(nn.Module):
    """Encoder block, one 2x down-sampling, bottleneck, up-sampling with a skip, 1x1 head."""

    def __init__(self, in_channels: int, width: int, presence_head: bool) -> None:
        super().__init__()
        self.down = _block(in_channels, width)
        self.bottom = _block(width, 2 * width)
        self.up = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.fuse = _block(2 * width, width)
        self.head = nn.Conv2d(width, 1, 1)
        self.presence = nn.Linear(2 * width, 1) if presence_head else None

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        skip = self.down(x)
        bottom = self.bottom(nn.functional.max_pool2d(skip, 2))
        mask = self.head(self.fuse(torch.cat([self.up(bottom), skip], dim=1)))
        if self.presence is None:
            return mask
        return {"mask": mask, "presence": self.presence(bottom.mean(dim=(2, 3)))}


def check(name: str, kwargs: dict) -> None:
    """Argument values the factory refuses, checked before any run starts (unknown names are
    already refused from the factory's signature)."""
    width = kwargs.get("width", 8)
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ModelError(f"{name}: width must be a positive integer, got {width!r}")
    if kwargs.get("encoder_weights") is not None:
        raise ModelError(f"{name}: no pretrained weights exist; encoder_weights must be None")


@register("tiny_unet", paper=PAPER, check=check)
def tiny_unet(
    in_channels: int = 1,
    encoder_weights: str | None = None,
    presence_head: bool = False,
    width: int = 8,
) -> TinyUNet:
    """Two-level U-Net with ``width`` channels at full resolution (~10 k parameters at width 8)."""
    return TinyUNet(in_channels, width, presence_head)
