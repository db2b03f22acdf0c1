"""Every registered model, installed plugins and the example plugin included (plus one generic smp
name), honours the model contract on small inputs."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pytest
import torch

import models
from models.info import count_params
from tests.plugin_site import EXAMPLE_MODEL, activate

HAS_NNUNET = importlib.util.find_spec("dynamic_network_architectures") is not None
# The optional extras' models (registered with default=False, e.g. nnU-Net's networks) come from the
# registry, so a new one is checked too; they are registered even when their extra is missing.
EXTRAS = [name for name in models.list_models(extras=True) if name not in models.list_models()]
NAMES = models.list_models() + ["smp:unet:tu-resnet18", EXAMPLE_MODEL] + EXTRAS
NEEDS_NNUNET = pytest.mark.skipif(not HAS_NNUNET, reason="the nnunet extra is not installed")
CASES = [pytest.param(name, marks=NEEDS_NNUNET if name.startswith("nnunet") else ()) for name in NAMES]
# A 32x32 patch keeps nnU-Net's networks cheap.
KWARGS = {"nnunet_plain": {"patch_size": 32}, "nnunet_resenc": {"patch_size": 32}}
# timm ResNets zero-init the last BatchNorm of each residual block, so at initialisation the
# residual branches before it get exactly zero gradient; require most tensors to move instead.
ZERO_INIT_RESIDUAL = {"smp:unet:tu-resnet18"}
# nnU-Net zero-inits the last norm of each residual block too (init_last_bn_before_add_to_0): at
# initialisation exactly the residual branches get no gradient, and nothing else may lack one.
ZERO_INIT_BRANCHES = {"nnunet_resenc"}


def _mask(out: torch.Tensor | dict) -> torch.Tensor:
    return out["mask"] if isinstance(out, dict) else out


def _check_output(name: str, out: torch.Tensor | dict, shape: tuple[int, ...], presence: bool) -> None:
    b, _, h, w = shape
    # The presence logit is there exactly when the head was asked for (the losses key on it).
    has_presence = isinstance(out, dict) and "presence" in out
    assert has_presence == presence, f"{name}: presence_head={presence}, output presence: {has_presence}"
    if isinstance(out, dict):
        assert "mask" in out, name
        if presence:
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
    if name in ZERO_INIT_BRANCHES:
        outside = [
            k for k in zero if ".blocks." not in k or not any(f".{c}." in k for c in ("conv1", "conv2"))
        ]
        assert not outside and zero, f"{name}: zero gradients outside the residual branches: {outside[:5]}"
    elif name in ZERO_INIT_RESIDUAL:
        assert len(zero) < len(params) / 2, f"{name}: {len(zero)}/{len(params)} zero gradients"
    else:
        assert not zero, f"{name}: zero gradients: {zero[:5]}"


@pytest.fixture
def registered(name: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> object:
    """The example plugin, loaded from its installed copy, for the test that needs it."""
    if name != EXAMPLE_MODEL or EXAMPLE_MODEL in models.list_models():
        yield
        return
    site: Path = request.getfixturevalue("example_site")
    with activate(site, monkeypatch):
        yield


# Both heads: presence_head=True adds the image-level head (trans_cg_unet's default, where it also gates
# the mask), and every parameter of it must be trained through the outputs like the rest.
@pytest.mark.parametrize("presence", [False, True], ids=["mask", "presence"])
@pytest.mark.parametrize("name", CASES)
def test_model_contract(name: str, presence: bool, registered: object) -> None:
    torch.manual_seed(0)
    model = models.create(
        name, in_channels=1, encoder_weights=None, presence_head=presence, **KWARGS.get(name, {})
    )
    shape = (2, 1, 64, 64)
    out = model(torch.randn(shape))
    _check_output(name, out, shape, presence)
    if name == "empty":
        assert count_params(model) == 1 and not any(p.requires_grad for p in model.parameters())
        assert not (torch.sigmoid(_mask(out)) > 0.5).any()
    else:
        _loss(out).backward()
        _assert_gradients(name, model)
    model.eval()
    shape = (2, 1, 64, 96)  # non-square, a multiple of 32
    with torch.no_grad():
        _check_output(name, model(torch.randn(shape)), shape, presence)


@pytest.mark.parametrize("name", ["unet_mobilenet_v2", "trans_cg_unet", "empty"])
@pytest.mark.parametrize("shape", [(1, 1, 128, 128), (1, 1, 256, 256), (1, 1, 448, 608)])
def test_cheap_models_at_benchmark_sizes(name: str, shape: tuple[int, ...]) -> None:
    model = models.create(name).eval()
    # Built with its defaults: whether it has the presence head is the factory's default.
    presence = inspect.signature(models.get_info(name).factory).parameters["presence_head"].default
    with torch.no_grad():
        _check_output(name, model(torch.randn(shape)), shape, presence)


@pytest.mark.skipif(not HAS_NNUNET, reason="the nnunet extra is not installed")
def test_nnunet_topology_is_the_2d_planners() -> None:
    """256x256 (our default input): 7 stages, 32..512 features, 3x3 kernels, stride 2 (nnU-Net's 2D plans)."""
    from models.nnunet import topology

    topo = topology(256)
    assert topo["n_stages"] == 7 and topo["features_per_stage"] == [32, 64, 128, 256, 512, 512, 512]
    assert topo["kernel_sizes"] == [[3, 3]] * 7 and topo["strides"] == [[1, 1]] + [[2, 2]] * 6
    plain, resenc = models.create("nnunet_plain").net, models.create("nnunet_resenc").net
    assert type(plain).__name__ == "PlainConvUNet" and type(resenc).__name__ == "ResidualEncoderUNet"
    assert [len(s.blocks) for s in resenc.encoder.stages] == [1, 3, 4, 6, 6, 6, 6]
    norms = {type(m).__name__ for m in plain.modules()} & {"InstanceNorm2d", "LeakyReLU", "BatchNorm2d"}
    assert norms == {"InstanceNorm2d", "LeakyReLU"}
    assert models.get_info("nnunet_plain").paper and "nnunet_plain" in models.list_models(extras=True)


def test_default_set_and_order() -> None:
    assert models.list_models(models.BUILTIN) == [
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
