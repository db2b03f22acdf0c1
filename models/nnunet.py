"""nnU-Net's 2D networks trained by our recipe: ``nnunet_plain`` and ``nnunet_resenc``.

Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical image
segmentation", Nature Methods 2021; Isensee et al., "nnU-Net Revisited", MICCAI 2024
(arXiv:2404.09556) for the residual-encoder (ResEnc M) preset. The networks come from
``dynamic_network_architectures``, the package nnU-Net builds its networks with, configured as
nnU-Net's 2D planners configure them for a patch of our input size: the stages from nnU-Net's own
``get_pool_and_conv_props`` (pool while the bottleneck edge stays >= 4; 256x256 gives 7 stages),
features doubling from 32 and capped at 512, 3x3 kernels, stride-2 downsampling, instance norm and
LeakyReLU, and nnU-Net's He initialisation. ``nnunet_plain`` is the default planner's
``PlainConvUNet`` (2 convolutions per stage and per decoder stage); ``nnunet_resenc`` is the ResEnc
planners' ``ResidualEncoderUNet`` (1, 3, 4, 6, 6, ... residual blocks, 1 decoder convolution).

Only the training framework differs from nnU-Net (ours: one logit channel, no deep supervision,
our loss, schedule and augmentation), so the board separates nnU-Net's architecture from nnU-Net's
training. Like nnU-Net's sliding window, an input smaller than the patch, or not a multiple of the
network's total stride, is zero-padded (zero is the mean intensity after normalisation) and the
logits are cropped back. Both need the optional extra: ``pip install -e .[nnunet]`` (``make install``).
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.blocks import PresenceHead, reject_pretrained
from models.registry import ModelError, register

PAPER = "Isensee et al., nnU-Net, Nature Methods 2021; dynamic_network_architectures PlainConvUNet (2D plans)"
PAPER_RESENC = (
    "Isensee et al., nnU-Net Revisited, MICCAI 2024 (arXiv:2404.09556); "
    "dynamic_network_architectures ResidualEncoderUNet (ResEnc 2D plans)"
)
INSTALL_HINT = "install the nnU-Net extra: `pip install -e .[nnunet]` (or `make install`)"
BASE_FEATURES, MAX_FEATURES_2D, MIN_EDGE = 32, 512, 4  # nnU-Net's 2D planner constants
RESENC_BLOCKS = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)  # ResEncUNetPlanner.UNet_blocks_per_stage_encoder


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModelError(f"{module.split('.')[0]} is not installed: {INSTALL_HINT}") from None


def _patch(patch_size: int | list[int] | tuple[int, ...]) -> tuple[int, int]:
    size = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    if len(size) != 2 or not all(isinstance(s, int) and s >= 2 * MIN_EDGE for s in size):
        raise ModelError(f"patch_size must be an int or (H, W) of ints >= {2 * MIN_EDGE}, got {patch_size!r}")
    return size  # type: ignore[return-value]


def topology(patch_size: int | list[int] | tuple[int, ...] = 256) -> dict[str, Any]:
    """The 2D architecture keywords nnU-Net's planner writes for a patch of this size (spacing 1x1)."""
    topo = _require("nnunetv2.experiment_planning.experiment_planners.network_topology")
    _, strides, kernels, padded, divisible = topo.get_pool_and_conv_props(
        (1.0, 1.0), _patch(patch_size), MIN_EDGE, 999999
    )
    n_stages = len(strides)
    return {
        "n_stages": n_stages,
        "features_per_stage": [min(MAX_FEATURES_2D, BASE_FEATURES * 2**i) for i in range(n_stages)],
        "kernel_sizes": [list(k) for k in kernels],
        "strides": [list(s) for s in strides],
        "patch_size": [int(p) for p in padded],
        "divisible_by": [int(d) for d in divisible],
    }


def _common_kwargs() -> dict[str, Any]:
    return {
        "conv_op": nn.Conv2d,
        "conv_bias": True,
        "norm_op": nn.InstanceNorm2d,
        "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": nn.LeakyReLU,
        "nonlin_kwargs": {"inplace": True},
    }


class NnUNet2d(nn.Module):
    """A dynamic_network_architectures U-Net with nnU-Net's padding rule and our output contract."""

    def __init__(self, net: nn.Module, topo: dict[str, Any], presence_head: bool) -> None:
        super().__init__()
        self.net = net
        self.patch_size = tuple(topo["patch_size"])
        self.divisible_by = tuple(topo["divisible_by"])
        self.presence = PresenceHead(topo["features_per_stage"][-1]) if presence_head else None

    def _padded(self, h: int, w: int) -> tuple[int, int]:
        (ph, pw), (dh, dw) = self.patch_size, self.divisible_by
        return max(ph, -(-h // dh) * dh), max(pw, -(-w // dw) * dw)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        h, w = x.shape[-2:]
        ph, pw = self._padded(h, w)
        top, left = (ph - h) // 2, (pw - w) // 2
        x = F.pad(x, (left, pw - w - left, top, ph - h - top))
        skips = self.net.encoder(x)
        mask = self.net.decoder(skips)[..., top : top + h, left : left + w]
        if self.presence is None:
            return mask
        return {"mask": mask, "presence": self.presence(skips[-1])}


def _build(kind: str, in_channels: int, patch_size: Any, presence_head: bool) -> NnUNet2d:
    unet = _require("dynamic_network_architectures.architectures.unet")
    topo = topology(patch_size)
    n = topo["n_stages"]
    shared = {k: topo[k] for k in ("n_stages", "features_per_stage", "kernel_sizes", "strides")}
    if kind == "plain":
        net = unet.PlainConvUNet(
            in_channels,
            num_classes=1,
            n_conv_per_stage=[2] * n,
            n_conv_per_stage_decoder=[2] * (n - 1),
            deep_supervision=False,
            **shared,
            **_common_kwargs(),
        )
    else:
        net = unet.ResidualEncoderUNet(
            in_channels,
            num_classes=1,
            n_blocks_per_stage=list(RESENC_BLOCKS[:n]),
            n_conv_per_stage_decoder=[1] * (n - 1),
            deep_supervision=False,
            **shared,
            **_common_kwargs(),
        )
    net.apply(net.initialize)  # nnU-Net's initialisation (get_network_from_plans)
    # Without deep supervision the decoder reads only its last 1x1 head; the others would be dead
    # parameters (counted, never trained, and unused parameters under DDP).
    for i in range(len(net.decoder.seg_layers) - 1):
        net.decoder.seg_layers[i] = nn.Identity()
    return NnUNet2d(net, topo, presence_head)


@register("nnunet_plain", paper=PAPER, default=False)
def nnunet_plain(
    in_channels: int = 1,
    encoder_weights: str | None = None,
    presence_head: bool = False,
    patch_size: int | list[int] = 256,
) -> NnUNet2d:
    """nnU-Net's default 2D ``PlainConvUNet`` for a ``patch_size`` input (image_size; 448x608 in pad mode)."""
    reject_pretrained("nnunet_plain", encoder_weights)
    return _build("plain", in_channels, patch_size, presence_head)


@register("nnunet_resenc", paper=PAPER_RESENC, default=False)
def nnunet_resenc(
    in_channels: int = 1,
    encoder_weights: str | None = None,
    presence_head: bool = False,
    patch_size: int | list[int] = 256,
) -> NnUNet2d:
    """nnU-Net's residual-encoder 2D ``ResidualEncoderUNet`` (ResEnc presets) for a ``patch_size`` patch."""
    reject_pretrained("nnunet_resenc", encoder_weights)
    return _build("resenc", in_channels, patch_size, presence_head)
