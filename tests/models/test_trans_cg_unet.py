"""TransCGUNet heads, gates and positional embeddings."""

from __future__ import annotations

import pytest
import torch

import models
from models.registry import ModelError
from models.trans_cg_unet import gate_mask


def _small(**kw: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return models.create(
        "trans_cg_unet", base_width=4, depth=3, embed_dim=16, num_layers=1, num_heads=2, **kw
    )


def test_heads_shapes_and_bbox_range() -> None:
    out = _small()(torch.randn(2, 1, 32, 48))
    assert set(out) == {"mask", "presence", "bbox"}
    assert out["mask"].shape == (2, 1, 32, 48)
    assert out["presence"].shape == (2, 1)
    assert out["bbox"].shape == (2, 4)
    assert ((out["bbox"] >= 0) & (out["bbox"] <= 1)).all()


def test_hard_gate_empties_the_mask_when_presence_is_low() -> None:
    model = _small(gate="hard", gate_threshold=0.5).eval()
    torch.nn.init.constant_(model.presence_head.bias, -100.0)
    with torch.no_grad():
        out = model(torch.randn(2, 1, 32, 32))
    assert (torch.sigmoid(out["presence"]) < 0.5).all()
    assert not (torch.sigmoid(out["mask"]) > 0.5).any()
    model.gate = "none"  # same weights, ungated: the raw mask is not forced empty
    with torch.no_grad():
        raw = model(torch.randn(2, 1, 32, 32))["mask"]
    assert raw.min() > -20


def test_hard_gate_keeps_the_mask_when_presence_is_high() -> None:
    mask = torch.tensor([[[[3.0, -1.0]]]])
    torch.testing.assert_close(gate_mask(mask, torch.tensor([[2.0]]), "hard", 0.5), mask)
    assert (gate_mask(mask, torch.tensor([[-2.0]]), "hard", 0.5) == -20.0).all()
    # A bf16 presence logit of -0.003 (autocast on a GPU) is below the 0.5 threshold, as in float32
    # (its bf16 sigmoid rounds to 0.5).
    near = torch.tensor([[-0.003]], dtype=torch.bfloat16)
    assert (gate_mask(mask, near, "hard", 0.5) == -20.0).all()


def test_soft_gate_multiplies_probabilities() -> None:
    mask, presence = torch.tensor([[[[0.0, 2.0, -3.0]]]]), torch.tensor([[1.0]])
    gated = gate_mask(mask, presence, "soft")
    expected = torch.sigmoid(mask) * torch.sigmoid(presence)
    torch.testing.assert_close(torch.sigmoid(gated), expected)
    # sigmoid(0) * sigmoid(0) = 1/4 -> logit(1/4) = -ln 3
    torch.testing.assert_close(
        gate_mask(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1), "soft").item(), -1.0986123
    )


def test_training_always_uses_the_soft_gate() -> None:
    model = _small(gate="hard")
    torch.nn.init.constant_(model.presence_head.bias, -100.0)
    mask = model(torch.randn(2, 1, 32, 32))["mask"]  # train mode: soft, whatever the setting
    assert mask.requires_grad
    assert mask.max() < -50  # strongly suppressed by p_presence ~ e^-100 ...
    assert mask.std() > 0  # ... but not the hard gate's constant


def test_positional_embedding_resizes_to_two_token_grids() -> None:
    model = _small(pos_grid=4).eval()
    bottleneck = model.bottleneck
    assert bottleneck.position(4, 4) is bottleneck.pos_embed
    assert bottleneck.position(2, 6).shape == (1, 16, 2, 6)
    with torch.no_grad():
        for shape in [(1, 1, 32, 32), (1, 1, 16, 48)]:  # token grids 4x4 and 2x6
            assert model(torch.randn(shape))["mask"].shape == shape


def test_bad_gate_arguments() -> None:
    with pytest.raises(ModelError, match="gate must be one of"):
        models.create("trans_cg_unet", gate="maybe")
    with pytest.raises(ModelError, match="gate_threshold"):
        models.create("trans_cg_unet", gate_threshold=1.5)
    with pytest.raises(ModelError, match="trans_cg_unet"):
        models.create("trans_cg_unet", no_such_option=1)


def test_presence_head_false_is_the_ungated_ablation() -> None:
    with_head, ablation = _small(), _small(presence_head=False, dropout=0.0)  # no dropout: repeatable
    assert ablation.presence_head is None and ablation.gate == "none"
    n_head = sum(p.numel() for p in with_head.presence_head.parameters())
    assert n_head == 16 + 1  # Linear(embed_dim=16, 1)
    assert (
        sum(p.numel() for p in ablation.parameters())
        == sum(p.numel() for p in with_head.parameters()) - n_head
    )
    x = torch.randn(2, 1, 32, 32)
    for mode in (True, False):  # training and inference: the raw decoder logits, never gated
        out = ablation.train(mode)(x)
        assert set(out) == {"mask", "bbox"} and out["mask"].shape == (2, 1, 32, 32)
        raw = ablation.head(ablation.decoder(_features(ablation, x)))
        torch.testing.assert_close(out["mask"], raw)
    for gate in ("soft", "hard"):
        with pytest.raises(ModelError, match=f"gate '{gate}' needs the presence head"):
            models.create("trans_cg_unet", presence_head=False, gate=gate)


def _features(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    feats = model.encoder(x)
    feats[-1], _ = model.bottleneck(feats[-1])
    return feats


def test_positional_resize_is_bilinear_interpolation_without_interpolate() -> None:
    """Resizing the positional grid by two matrix products equals F.interpolate (its bilinear CUDA
    backward into the parameter is non-deterministic), up- and down-sampling alike."""
    import torch.nn.functional as F

    bottleneck = _small().bottleneck
    for h, w in ((2, 3), (5, 7), (1, 1)):
        expected = F.interpolate(bottleneck.pos_embed, size=(h, w), mode="bilinear", align_corners=False)
        torch.testing.assert_close(bottleneck.position(h, w), expected, rtol=0, atol=1e-6)
    assert bottleneck.position(*bottleneck.pos_embed.shape[-2:]) is bottleneck.pos_embed


def test_explicit_attention_equals_the_fused_kernel() -> None:
    from models.trans_cg_unet import attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 9, 8, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(
        attention(q, k, v, 0.0, explicit=True), attention(q, k, v, 0.0, explicit=False)
    )


def test_only_a_deterministic_cuda_backward_takes_the_explicit_attention() -> None:
    """Scoring (no gradients) always takes the fused kernel, so a fresh `evaluate` process (determinism
    off) and the training process (on) score with the same kernel; training on CUDA under
    determinism takes the explicit form, whose backward has no atomics."""
    from itertools import product

    from models.trans_cg_unet import needs_explicit_attention

    chosen = [flags for flags in product([False, True], repeat=3) if needs_explicit_attention(*flags)]
    assert chosen == [(True, True, True)]


def test_the_positional_resize_matrices_are_built_once_per_grid_device_and_dtype() -> None:
    """Pad mode's 28x38 token grid: the resize matrices are made once (no host-to-device copy per
    step), made again for another dtype, and the embedding still equals F.interpolate's."""
    import torch.nn.functional as F

    from models.trans_cg_unet import TransformerBottleneck

    bottleneck = TransformerBottleneck(8, 16, 1, 2, pos_grid=16, dropout=0.0)
    with torch.inference_mode():  # built first while scoring (a resume that validates first)
        bottleneck.position(28, 38)
    first = bottleneck.position(28, 38)
    first.sum().backward()  # the cached matrices are ordinary tensors: training can use them
    assert torch.equal(first, bottleneck.position(28, 38)) and len(bottleneck._resize) == 1
    expected = F.interpolate(bottleneck.pos_embed, size=(28, 38), mode="bilinear", align_corners=False)
    assert torch.allclose(first, expected, atol=1e-6)
    assert bottleneck.double().position(28, 38).dtype == torch.float64 and len(bottleneck._resize) == 2
