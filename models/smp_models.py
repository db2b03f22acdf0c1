"""segmentation_models_pytorch (smp) models: four named U-Nets and generic ``smp:<arch>:<encoder>``.

Iakubovskii, "Segmentation Models Pytorch", https://github.com/qubvel-org/segmentation_models.pytorch.
Named models use smp's U-Net decoder (Ronneberger et al. 2015) on classic encoders: DenseNet-121
(Huang et al., CVPR 2017), VGG-16 with BatchNorm (Simonyan & Zisserman, ICLR 2015),
MobileNetV2 (Sandler et al., CVPR 2018) and ResNet-34 (He et al., CVPR 2016). ``smp:<arch>:<encoder>``
builds any smp architecture (case-insensitive: unet, unetplusplus, segformer, ...) with any smp
encoder or any timm model as ``tu-<name>``. Encoders start random (``encoder_weights=None``);
``encoder_weights="imagenet"`` is opt-in and fails fast offline (see models.weights).
"""

from __future__ import annotations

import difflib
import inspect

import torch
from torch import nn

from models.registry import ModelError, register, register_prefix
from models.weights import ensure_available

SMP_SOURCE = "segmentation_models_pytorch"


class SmpModel(nn.Module):
    """Wraps an smp model: logits tensor, or ``{"mask", "presence"}`` with the auxiliary head."""

    def __init__(self, net: nn.Module, presence_head: bool) -> None:
        super().__init__()
        self.net = net
        self.presence_head = presence_head

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        out = self.net(x)
        if not self.presence_head:
            return out
        mask, presence = out
        return {"mask": mask, "presence": presence}


def _choices(name: str, options: list[str], valid: str | None = None) -> str:
    """Close matches plus the valid options (or ``valid`` when the list is too long to print)."""
    close = difflib.get_close_matches(name, options, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    return f"{hint}valid: {valid or ', '.join(options)}"


def _check_arch(arch: str) -> str:
    import segmentation_models_pytorch as smp

    archs = list(smp.MODEL_ARCHITECTURES_MAPPING)
    if arch.lower() not in archs:
        raise ModelError(f"unknown smp architecture {arch!r}; {_choices(arch.lower(), archs)}")
    return arch.lower()


def _check_encoder(encoder: str) -> None:
    import segmentation_models_pytorch as smp
    import timm

    if encoder.startswith("tu-"):
        base = encoder[3:].split(".", 1)[0]  # drop a pretrained tag like ".a1_in1k"
        if not timm.is_model(base):
            options = ["tu-" + n for n in timm.list_models()]
            valid = "tu-<name> for any name in timm.list_models()"
            raise ModelError(f"unknown timm encoder {encoder!r}; {_choices(encoder, options, valid)}")
        return
    names = smp.encoders.get_encoder_names()
    if encoder not in names:
        options = names + ["tu-<any timm model>"]
        raise ModelError(f"unknown smp encoder {encoder!r}; {_choices(encoder, options)}")


# smp arguments that would break the logits contract (raw logits, one class, heads as a dict).
RESERVED = {
    "activation": "models return raw logits; losses and post-processing apply the sigmoid",
    "aux_params": "use presence_head=True for the image-level head",
    "classes": "models return one mask channel (nerve vs background)",
}


def _check_kwargs(arch: str, encoder: str, kwargs: dict) -> None:
    """smp forwards unknown kwargs to the encoder, which ignores them unless it is timm's: reject."""
    import segmentation_models_pytorch as smp

    reserved = sorted(set(kwargs) & set(RESERVED))  # checked first: timm encoders skip the rest
    if reserved:
        key = reserved[0]
        raise ModelError(f"smp:{arch}:{encoder}: argument {key!r} is not allowed: {RESERVED[key]}")
    if encoder.startswith("tu-"):
        return  # timm validates its own keyword arguments (TypeError, wrapped below)
    params = inspect.signature(smp.MODEL_ARCHITECTURES_MAPPING[arch].__init__).parameters
    skip = {"self", *RESERVED}
    accepted = [n for n, p in params.items() if n not in skip and p.kind is not p.VAR_KEYWORD]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        listed = f"unknown argument(s) {', '.join(unknown)} (accepted: {', '.join(accepted)})"
        raise ModelError(f"smp:{arch}:{encoder}: {listed}")


def build_smp(
    arch: str,
    encoder: str,
    in_channels: int = 1,
    encoder_weights: str | None = None,
    presence_head: bool = False,
    **kwargs: object,
) -> SmpModel:
    """Build smp ``arch`` with ``encoder``; extra kwargs go to the smp constructor."""
    import segmentation_models_pytorch as smp

    arch = _check_arch(arch)
    _check_encoder(encoder)
    _check_kwargs(arch, encoder, kwargs)
    ensure_available(encoder, encoder_weights)
    weights: str | bool | None = encoder_weights
    if encoder.startswith("tu-") and encoder_weights is not None:
        weights = True  # timm encoders take a flag; the tag in the name picks the weights
    if presence_head:
        kwargs["aux_params"] = {"classes": 1, "pooling": "avg", "dropout": 0.0}
    try:
        net = smp.create_model(arch, encoder, weights, in_channels=in_channels, classes=1, **kwargs)
    except (TypeError, KeyError, ValueError, RuntimeError) as exc:
        raise ModelError(f"smp:{arch}:{encoder}: cannot build: {exc}") from exc
    return SmpModel(net, presence_head)


def _paper(name: str) -> str:
    _, arch, encoder = (name.split(":") + ["", ""])[:3]
    return f"{SMP_SOURCE} {arch} + {encoder} encoder"


def _split(name: str) -> tuple[str, str]:
    parts = name.split(":")
    if len(parts) != 3 or not all(parts):
        raise ModelError(f"model {name!r}: expected smp:<arch>:<encoder>, e.g. smp:unet:resnet34")
    return parts[1], parts[2]


_OWN_ARGS = ("in_channels", "encoder_weights", "presence_head")  # build_smp's, not smp's


def _check_before_build(arch: str, encoder: str, kwargs: dict, named: bool = False) -> None:
    """build_smp's argument checks without building (the registered ``check`` of every smp name).

    A registered name (``named``) has a known-good arch and encoder: without smp arguments there is
    nothing to check, and the slow smp import is skipped.
    """
    passed = {k: v for k, v in kwargs.items() if k not in _OWN_ARGS}
    if named and not passed:
        return
    arch = _check_arch(arch)
    _check_encoder(encoder)
    _check_kwargs(arch, encoder, passed)


def _check_generic(name: str, kwargs: dict) -> None:
    _check_before_build(*_split(name), kwargs)


@register_prefix("smp", paper=_paper, check=_check_generic)
def smp_generic(name: str, **kwargs: object) -> SmpModel:
    """``smp:<arch>:<encoder>``, e.g. ``smp:unet:tu-convnext_tiny`` or ``smp:segformer:mit_b0``."""
    return build_smp(*_split(name), **kwargs)


def _named_unet(name: str, encoder: str, citation: str) -> None:
    def factory(
        in_channels: int = 1,
        encoder_weights: str | None = None,
        presence_head: bool = False,
        **kwargs: object,
    ) -> SmpModel:
        return build_smp("unet", encoder, in_channels, encoder_weights, presence_head, **kwargs)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"smp U-Net with a {encoder} encoder; kwargs go to smp.Unet."

    def check(_name: str, kwargs: dict) -> None:
        _check_before_build("unet", encoder, kwargs, named=True)

    register(name, paper=f"{SMP_SOURCE} U-Net + {citation} encoder", check=check)(factory)


_named_unet("unet_densenet121", "densenet121", "DenseNet-121 (Huang et al., CVPR 2017)")
_named_unet("unet_vgg16", "vgg16_bn", "VGG-16-BN (Simonyan & Zisserman, ICLR 2015)")
_named_unet("unet_mobilenet_v2", "mobilenet_v2", "MobileNetV2 (Sandler et al., CVPR 2018)")
_named_unet("unet_resnet34", "resnet34", "ResNet-34 (He et al., CVPR 2016)")
