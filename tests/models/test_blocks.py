"""Building blocks: SK layer, attention gate, U-Net skeleton."""

from __future__ import annotations

import pytest
import torch

import models
from models.attention_unet import AttentionGate
from models.blocks import UNetSkeleton, level_widths, upsample2x
from models.registry import ModelError
from models.sk_unet import SKConv


def _branch_weights(layer: SKConv, x: torch.Tensor) -> torch.Tensor:
    """The paper's mixture weights from the layer's own parts: softmax over branches of the
    expanded squeeze of the branch sum (the oracle the forward pass must match)."""
    fused = sum(branch(x) for branch in layer.branches)
    return layer.expand(layer.squeeze(fused)).view(x.shape[0], 2, -1).softmax(dim=1)


def test_sk_layer_branch_weights_sum_to_one_per_channel() -> None:
    torch.manual_seed(0)
    layer = SKConv(3, 8)
    x = torch.randn(4, 3, 16, 12)
    weights = _branch_weights(layer, x)
    assert weights.shape == (4, 2, 8)
    assert ((weights >= 0) & (weights <= 1)).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(4, 8))
    assert layer(x).shape == (4, 8, 16, 12)


def test_sk_layer_output_is_the_weighted_branch_sum() -> None:
    torch.manual_seed(0)
    layer = SKConv(2, 4).eval()
    x = torch.randn(2, 2, 8, 8)
    a, b = (branch(x) for branch in layer.branches)
    w = _branch_weights(layer, x)[..., None, None]
    torch.testing.assert_close(layer(x), w[:, 0] * a + w[:, 1] * b)
    assert layer.branches[1][0].dilation == (2, 2)


def test_sk_layer_never_materialises_the_branch_stack() -> None:
    """No (B, 2, C, H, W) tensor: CUDA autocast runs sum() in float32, so reducing such a stack
    doubled the memory of SK-U-Net's largest tensor (issue 15). Every op's outputs are recorded."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Shapes(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.shapes: set[tuple[int, ...]] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    self.shapes.add(tuple(t.shape))
            return out

    layer = SKConv(2, 4)
    with Shapes() as seen:
        layer(torch.randn(2, 2, 8, 8)).sum().backward()
    maps = [s for s in seen.shapes if len(s) >= 4 and s[-2:] == (8, 8)]
    assert (2, 4, 8, 8) in maps and all(len(s) == 4 for s in maps), maps


def test_upsample2x_is_bilinear_interpolation() -> None:
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    expected = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(upsample2x(x), expected, rtol=0, atol=1e-12)
    one = torch.full((1, 1, 1, 1), 3.0)
    assert torch.equal(upsample2x(one), torch.full((1, 1, 2, 2), 3.0))


def test_attention_gate_coefficients_and_shape() -> None:
    torch.manual_seed(0)
    gate = AttentionGate(skip_ch=8, gating_ch=16)
    skip, gating = torch.randn(2, 8, 32, 48), torch.randn(2, 16, 16, 24)
    alpha = gate.coefficients(skip, gating)
    assert alpha.shape == (2, 1, 32, 48)
    assert ((alpha >= 0) & (alpha <= 1)).all()
    assert gate(skip, gating).shape == skip.shape


def test_attention_gate_suppresses_when_psi_is_very_negative() -> None:
    gate = AttentionGate(skip_ch=4, gating_ch=4)
    torch.nn.init.zeros_(gate.psi.weight)
    torch.nn.init.constant_(gate.psi.bias, -50.0)
    alpha = gate.coefficients(torch.randn(1, 4, 8, 8), torch.randn(1, 4, 4, 4))
    assert alpha.max() < 1e-6


def test_level_widths_and_bad_depth() -> None:
    assert level_widths(16, 3) == [16, 32, 64, 128]
    with pytest.raises(ModelError, match="depth"):
        level_widths(16, 0)


def test_skeleton_rejects_sizes_not_multiple_of_two_to_depth() -> None:
    model = UNetSkeleton(base_width=4, depth=3)
    assert model(torch.randn(1, 1, 16, 24)).shape == (1, 1, 16, 24)
    with pytest.raises(ModelError, match="multiples of 8"):
        model(torch.randn(1, 1, 20, 24))


def test_unet_width_and_depth_are_configurable() -> None:
    small = models.create("unet", base_width=8, depth=2)
    assert len(small.encoder.downs) == 2 and small.encoder.stem[0][0].out_channels == 8
    out = models.create("unet", base_width=4, depth=3, presence_head=True)(torch.randn(2, 1, 32, 32))
    assert out["mask"].shape == (2, 1, 32, 32) and out["presence"].shape == (2, 1)


def test_from_scratch_models_reject_pretrained_weights() -> None:
    with pytest.raises(ModelError, match="from scratch"):
        models.create("sk_unet", encoder_weights="imagenet")


def test_attention_gates_of_a_unet_never_call_interpolate(monkeypatch) -> None:
    """The gating signal already has theta's size and alpha is up-sampled by exactly 2: neither needs
    F.interpolate (a slow same-size copy under determinism; a bilinear CUDA backward with atomics)."""
    import torch.nn.functional as F

    def refuse(*args, **kwargs):
        raise AssertionError("F.interpolate called")

    monkeypatch.setattr(F, "interpolate", refuse)
    model = models.create("attention_unet", base_width=4, depth=3)
    model(torch.randn(2, 1, 32, 48)).sum().backward()


def test_own_models_use_no_adaptive_pooling() -> None:
    """AdaptiveAvgPool2d has no deterministic CUDA backward; our models pool with a plain mean."""
    for name in ("unet", "attention_unet", "sk_unet", "trans_cg_unet"):
        for kwargs in ({}, {"presence_head": True}):
            model = models.create(name, **kwargs)
            assert not any(isinstance(m, torch.nn.AdaptiveAvgPool2d) for m in model.modules()), name
