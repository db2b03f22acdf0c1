"""TransCGUNet: CNN encoder, transformer bottleneck, gated U-Net decoder, class-guided heads.

Combines TransUNet (Chen et al., "TransUNet: Transformers Make Strong Encoders for Medical Image
Segmentation", arXiv:2102.04306, 2021: self-attention over CNN bottleneck tokens) with the
classification-guided module of UNet 3+ (Huang et al., ICASSP 2020, arXiv:2004.08790: an
image-level "is the organ present" head that suppresses the mask of negative images) and the
additive attention gates of Oktay et al. 2018 on the skips.

Heads, all from the transformer tokens (mean-pooled):
* ``presence``: (B, 1) image-level logit;
* ``bbox``: (B, 4) normalised (cx, cy, w, h), squashed to [0, 1] by a sigmoid;
* ``mask``: (B, 1, H, W) logits gated by presence. Training always uses the soft gate, the exact
  logit of p_mask * p_presence; at inference ``gate`` picks "soft", "hard" (mask forced empty when
  p_presence < ``gate_threshold``) or "none" (raw mask logits).

``presence_head=False`` is the ablation without the classification-guided module: no presence
head, no ``presence`` key, and the mask logits are never gated (``gate`` must be "none"; an
image-level gate then comes from post-processing's max-probability score, as for every model
without a presence head). What remains is TransUNet with attention-gated skips and the box head.

Positional embeddings are a learned ``pos_grid`` x ``pos_grid`` map, bilinearly resized to the
token grid, so any input whose sides are multiples of 2**depth works. Every op has a deterministic
CUDA backward under deterministic algorithms (resizing by matrix products, the math attention form).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.attention_unet import AttentionGate
from models.blocks import (
    EMPTY_LOGIT,
    ConvBlock,
    UNetDecoder,
    UNetEncoder,
    check_input,
    level_widths,
    reject_pretrained,
)
from models.registry import ModelError, register

PAPER = (
    "TransUNet bottleneck (Chen et al., arXiv:2102.04306) + UNet 3+ classification-guided module "
    "(Huang et al., ICASSP 2020) + attention-gated skips (Oktay et al., 2018)"
)
GATES = ("soft", "hard", "none")


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer; F.scaled_dot_product_attention so FLOP counters see attention."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ModelError(f"embed_dim {dim} must be divisible by num_heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        drop = self.dropout if self.training else 0.0
        attn = attention(q, k, v, drop)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float, explicit: bool | None = None
) -> torch.Tensor:
    """Scaled dot-product attention. For a backward pass under deterministic algorithms on CUDA
    (``explicit=None``) the explicit math form: the fused flash / memory-efficient backward kernels
    accumulate with atomics, so a rerun would not be bit-identical (the bottleneck has a few hundred
    tokens: it is cheap). Without gradients the fused kernel, whose forward is deterministic: so
    scoring picks the same kernel in the training process (deterministic on) and in a fresh
    ``evaluate`` or ``predict`` process (off)."""
    if explicit is None:
        explicit = needs_explicit_attention(
            q.is_cuda, q.requires_grad, torch.are_deterministic_algorithms_enabled()
        )
    if explicit:
        weights = torch.softmax((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5, dim=-1)
        return F.dropout(weights, p=dropout, training=dropout > 0) @ v
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)


def needs_explicit_attention(cuda: bool, backward: bool, deterministic: bool) -> bool:
    """Whether ``attention`` takes the explicit form: only for a CUDA backward under determinism."""
    return cuda and backward and deterministic


def bilinear_matrix(n_out: int, n_in: int) -> torch.Tensor:
    """(n_out, n_in) weights of 1-D bilinear resizing exactly as ``F.interpolate(mode="bilinear",
    align_corners=False)`` computes it (source index clamped at 0, two taps, no antialias)."""
    weights = torch.zeros(n_out, n_in)
    for o in range(n_out):
        src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(src), n_in - 1)
        i1, frac = min(i0 + 1, n_in - 1), src - i0
        weights[o, i0] += 1.0 - frac
        weights[o, i1] += frac
    return weights


class TransformerBottleneck(nn.Module):
    """Projects CNN features to tokens, adds resized 2-D positional embeddings, self-attends."""

    def __init__(
        self, channels: int, dim: int, layers: int, heads: int, pos_grid: int, dropout: float
    ) -> None:
        super().__init__()
        self.proj_in = nn.Conv2d(channels, dim, 1)
        self.pos_embed = nn.Parameter(torch.zeros(1, dim, pos_grid, pos_grid))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.layers = nn.ModuleList(TransformerLayer(dim, heads, dropout=dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.proj_out = nn.Conv2d(dim, channels, 1)
        self._resize: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # not state: rebuilt on demand

    def position(self, h: int, w: int) -> torch.Tensor:
        """Positional embedding (1, dim, h, w) for an h x w token grid."""
        if self.pos_embed.shape[-2:] == (h, w):
            return self.pos_embed
        # Two small matrix products rather than F.interpolate: the bilinear kernel's CUDA backward
        # (into this parameter) has no deterministic implementation.
        # Built once per grid, device and dtype: a copy from host memory every step would make the
        # host wait for the GPU (pad mode's 28x38 grid at 448x608).
        key = (h, w, self.pos_embed.device, self.pos_embed.dtype)
        if key not in self._resize:
            grid_h, grid_w = self.pos_embed.shape[-2:]
            # Ordinary tensors even when first built while scoring: an inference tensor could not
            # be saved for the backward of a later training step.
            with torch.inference_mode(False):
                self._resize[key] = (
                    bilinear_matrix(h, grid_h).to(self.pos_embed),
                    bilinear_matrix(w, grid_w).to(self.pos_embed),
                )
        rows, cols = self._resize[key]
        return torch.einsum("hi,bdij,wj->bdhw", rows, self.pos_embed, cols)

    def forward(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (features for the decoder, tokens (B, N, dim))."""
        x = self.proj_in(feat)
        h, w = x.shape[-2:]
        tokens = (x + self.position(h, w)).flatten(2).transpose(1, 2)
        for layer in self.layers:
            tokens = layer(tokens)
        tokens = self.norm(tokens)
        grid = tokens.transpose(1, 2).reshape(x.shape)
        return feat + self.proj_out(grid), tokens


def gate_mask(mask: torch.Tensor, presence: torch.Tensor, gate: str, threshold: float = 0.5) -> torch.Tensor:
    """Apply the class-guided gate to mask logits (B, 1, H, W) with presence logits (B, 1)."""
    p = presence[:, :, None, None]
    if gate == "none":
        return mask
    if gate == "hard":
        # In float32: bf16 rounds the sigmoid of any logit above about -0.0039 up to 0.5.
        keep = torch.sigmoid(p.float()) >= threshold
        return torch.where(keep, mask, torch.full_like(mask, EMPTY_LOGIT))
    # soft: logit(sigmoid(mask) * sigmoid(p)), in log space and float32 (stable under AMP)
    log_p = (F.logsigmoid(mask.float()) + F.logsigmoid(p.float())).clamp(max=-1e-6)
    return log_p - torch.log(-torch.expm1(log_p))


def _check_gate(gate: str | None, threshold: float, presence_head: bool) -> str:
    """The gate to use; ModelError for a bad name, threshold, or a presence gate without the head."""
    gate = gate if gate is not None else ("soft" if presence_head else "none")
    if gate not in GATES:
        raise ModelError(f"trans_cg_unet: gate must be one of {', '.join(GATES)}, got {gate!r}")
    if not 0.0 <= threshold <= 1.0:
        raise ModelError(f"trans_cg_unet: gate_threshold must be in [0, 1], got {threshold}")
    if gate != "none" and not presence_head:
        raise ModelError(f"trans_cg_unet: gate {gate!r} needs the presence head; use presence_head=True")
    return gate


class TransCGUNet(nn.Module):
    """Returns ``{"mask": (B,1,H,W), "presence": (B,1), "bbox": (B,4)}`` (no presence without its head)."""

    def __init__(
        self,
        in_channels: int = 1,
        base_width: int = 16,
        depth: int = 4,
        embed_dim: int = 256,
        num_layers: int = 4,
        num_heads: int = 8,
        pos_grid: int = 16,
        dropout: float = 0.1,
        gate: str | None = None,
        gate_threshold: float = 0.5,
        presence_head: bool = True,
    ) -> None:
        super().__init__()
        widths = level_widths(base_width, depth)
        self.depth, self.gate_threshold = depth, gate_threshold
        self.gate = _check_gate(gate, gate_threshold, presence_head)
        self.encoder = UNetEncoder(in_channels, widths, ConvBlock)
        self.bottleneck = TransformerBottleneck(
            widths[-1], embed_dim, num_layers, num_heads, pos_grid, dropout
        )
        self.decoder = UNetDecoder(widths, ConvBlock, AttentionGate)
        self.head = nn.Conv2d(widths[0], 1, 1)
        self.presence_head = nn.Linear(embed_dim, 1) if presence_head else None
        self.bbox_head = nn.Sequential(
            nn.Linear(embed_dim, embed_dim // 2), nn.GELU(), nn.Linear(embed_dim // 2, 4)
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        check_input(x, self.depth)
        feats = self.encoder(x)
        feats[-1], tokens = self.bottleneck(feats[-1])
        pooled = tokens.mean(dim=1)
        mask = self.head(self.decoder(feats))
        out = {"bbox": torch.sigmoid(self.bbox_head(pooled))}
        if self.presence_head is None:
            return {"mask": mask, **out}
        presence = self.presence_head(pooled)
        gate = "soft" if self.training else self.gate
        return {"mask": gate_mask(mask, presence, gate, self.gate_threshold), "presence": presence, **out}


@register("trans_cg_unet", paper=PAPER)
def trans_cg_unet(
    in_channels: int = 1,
    encoder_weights: str | None = None,
    presence_head: bool = True,
    base_width: int = 16,
    depth: int = 4,
    embed_dim: int = 256,
    num_layers: int = 4,
    num_heads: int = 8,
    pos_grid: int = 16,
    dropout: float = 0.1,
    gate: str | None = None,
    gate_threshold: float = 0.5,
) -> TransCGUNet:
    """TransCGUNet (~4 M parameters by default); ``presence_head=False`` is the no-CG ablation.

    The arguments are spelled out (not ``**kwargs``) so the registry can reject a misspelt one.
    """
    reject_pretrained("trans_cg_unet", encoder_weights)
    return TransCGUNet(
        in_channels,
        base_width=base_width,
        depth=depth,
        embed_dim=embed_dim,
        num_layers=num_layers,
        num_heads=num_heads,
        pos_grid=pos_grid,
        dropout=dropout,
        gate=gate,
        gate_threshold=gate_threshold,
        presence_head=presence_head,
    )
