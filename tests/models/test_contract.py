"""Every default model (plus one generic smp name) honours the model contract on small inputs."""

from __future__ import annotations

import pytest
import torch

import models
from models.info import count_params

NAMES = models.list_models() + ["smp:unet:tu-resnet18"]
# timm ResNets zero-init the last BatchNorm of each residual block, so at initialisation the
# residual branches before it get exactly zero gradient; require most tensors to move instead.
ZERO_INIT_RESIDUAL = {"smp:unet:tu-resnet18"}


def _mask(out: torch.Tensor | dict) -> torch.Tensor:
    return out["mask"] if isinstance(out, dict) else out


def _check_output(name: str, out: torch.Tensor | dict, shape: tuple[int, ...]) -> None:
    b, _, h, w = shape
    if isinstance(out, dict):
        assert "mask" in out, name
        if "presence" in out:
            assert out["presence"].shape == (b, 1)
        if "bbox" in out:
            assert out["bbox"].shape == (b, 4)
            assert ((out["bbox"] >= 0) & (out["bbox"] <= 1)).all()
    for tensor in out.values() if isinstance(out, dict) else [out]:
        assert torch.isfinite(tensor).all(), name
    assert _mask(out).shape == (b, 1, h, w), name


def _loss(out: torch.Tensor | dict) -> torch.Tensor:
    tensors = out.values() if isinstance(out, dict) else [out]
    return sum(t.float().square().mean() for t in tensors)


def _assert_gradients(name: str, model: torch.nn.Module) -> None:
    params = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    missing = [k for k, p in params if p.grad is None]
    assert not missing, f"{name}: parameters without gradient: {missing[:5]}"
    zero = [k for k, p in params if not p.grad.abs().sum() > 0]
    if name in ZERO_INIT_RESIDUAL:
        assert len(zero) < len(params) / 2, f"{name}: {len(zero)}/{len(params)} zero gradients"
    else:
        assert not zero, f"{name}: zero gradients: {zero[:5]}"


@pytest.mark.parametrize("name", NAMES)
def test_model_contract(name: str) -> None:
    torch.manual_seed(0)
    model = models.create(name, in_channels=1, encoder_weights=None, presence_head=False)
    shape = (2, 1, 64, 64)
    out = model(torch.randn(shape))
    _check_output(name, out, shape)
    if name == "empty":
        assert count_params(model) == 1 and not any(p.requires_grad for p in model.parameters())
        assert not (torch.sigmoid(_mask(out)) > 0.5).any()
    else:
        _loss(out).backward()
        _assert_gradients(name, model)
    model.eval()
    shape = (2, 1, 64, 96)  # non-square, a multiple of 32
    with torch.no_grad():
        _check_output(name, model(torch.randn(shape)), shape)


@pytest.mark.parametrize("name", ["unet_mobilenet_v2", "trans_cg_unet", "empty"])
@pytest.mark.parametrize("shape", [(1, 1, 128, 128), (1, 1, 256, 256), (1, 1, 448, 608)])
def test_cheap_models_at_benchmark_sizes(name: str, shape: tuple[int, ...]) -> None:
    model = models.create(name).eval()
    with torch.no_grad():
        _check_output(name, model(torch.randn(shape)), shape)


def test_default_set_and_order() -> None:
    assert models.list_models() == [
        "unet",
        "unet_densenet121",
        "unet_vgg16",
        "unet_mobilenet_v2",
        "unet_resnet34",
        "attention_unet",
        "sk_unet",
        "trans_cg_unet",
        "empty",
    ]
