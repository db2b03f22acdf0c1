"""SK-U-Net: U-Net whose convolution blocks are selective-kernel (SK) layers.

Byra et al., "Breast mass segmentation in ultrasound with selective kernel U-Net convolutional
neural network", Biomedical Signal Processing and Control 61 (2020) 102027, building on Li et
al., "Selective Kernel Networks", CVPR 2019 (arXiv:1903.06586).

Each SK layer has two 3x3 branches (dilation 1 and dilation 2, i.e. 3x3 and 5x5 receptive
fields), each with BatchNorm and ReLU. Their sum is globally average pooled, squeezed by a fully
connected layer to C/2 with BatchNorm and ReLU, and expanded to one attention logit per branch and
channel; a softmax across the two branches gives the weights of the branch mixture. Because the
squeeze uses BatchNorm, training needs a batch of at least 2 (as in the paper): the training
loaders never yield a final batch of 1, and a batch of 1 in train mode raises a ModelError, except
under SyncBatchNorm (multi-GPU DDP), whose statistics cover the global batch.
"""

from __future__ import annotations

import torch
from torch import nn

from models.blocks import GlobalAvgPool, IdentityGate, UNetSkeleton, conv_bn_relu, reject_pretrained
from models.registry import ModelError, register

PAPER = "Byra et al., SK-U-Net, Biomed. Signal Process. Control 2020 (doi:10.1016/j.bspc.2020.102027)"


class SKConv(nn.Module):
    """Selective-kernel layer: two dilated branches mixed by per-channel softmax weights."""

    def __init__(self, in_ch: int, out_ch: int, reduction: int = 2, min_hidden: int = 8) -> None:
        super().__init__()
        self.branches = nn.ModuleList(conv_bn_relu(in_ch, out_ch, dilation=d) for d in (1, 2))
        hidden = max(out_ch // reduction, min_hidden)
        # 1x1 convs on the pooled (B, C, 1, 1) vector are the paper's fully connected layers.
        self.squeeze = nn.Sequential(
            GlobalAvgPool(),
            nn.Conv2d(out_ch, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
        )
        self.expand = nn.Conv2d(hidden, out_ch * len(self.branches), 1)

    def _weights(self, fused: torch.Tensor) -> torch.Tensor:
        synced = any(isinstance(m, nn.SyncBatchNorm) for m in self.squeeze)
        if self.training and fused.shape[0] < 2 and not synced:
            # The squeeze's BatchNorm sees one value per channel; say why instead of torch's message.
            # SyncBatchNorm (multi-GPU DDP) pools the values of every rank: a per-rank batch of 1 works.
            raise ModelError(
                "sk_unet needs training batches of at least 2: the SK squeeze uses BatchNorm "
                "after global pooling (Byra et al. 2020); use batch_size >= 2 or eval mode"
            )
        logits = self.expand(self.squeeze(fused)).view(fused.shape[0], len(self.branches), -1)
        return logits.softmax(dim=1)  # across branches, per channel: (B, 2, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Elementwise sums of the branch maps, not a (B, 2, C, H, W) stack reduced with .sum(): CUDA
        # autocast runs sum() in float32, which doubled the memory of this, the largest tensor.
        feats = [branch(x) for branch in self.branches]
        fused = feats[0] + feats[1]
        weights = self._weights(fused).to(fused.dtype)[..., None, None]
        return feats[0] * weights[:, 0] + feats[1] * weights[:, 1]


class SKBlock(nn.Sequential):
    """The SK-U-Net level: two SK layers in place of the two 3x3 convolutions."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(SKConv(in_ch, out_ch), SKConv(out_ch, out_ch))


@register("sk_unet", paper=PAPER)
def sk_unet(
    in_channels: int = 1,
    encoder_weights: str | None = None,
    presence_head: bool = False,
    base_width: int = 16,
    depth: int = 4,
) -> UNetSkeleton:
    """U-Net skeleton with :class:`SKBlock` levels (~4 M parameters by default)."""
    reject_pretrained("sk_unet", encoder_weights)
    return UNetSkeleton(in_channels, base_width, depth, SKBlock, IdentityGate, presence_head)
