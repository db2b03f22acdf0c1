"""Model cost: parameter count (trainable + frozen) and GFLOPs at a fixed input size.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``, which counts a multiply-add as
2 FLOPs (so GFLOPs here are about twice the "GMACs" some papers report) and counts only the
operators it knows: convolutions, matrix products and attention, not BatchNorm, activations,
pooling or interpolation (a few percent of the total for these networks).

Attention is counted through the math SDPA backend (two batched matmuls, 4·B·heads·N²·d_head
FLOPs, the same as the counter's fused-kernel formulas): the counter has no formula for every
fused kernel (e.g. the CPU flash kernel), and without forcing the backend the count of an
attention model would depend on the device it sits on.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import models  # noqa: F401  (registers every model)
from models.registry import ModelError, create, get_info


def has_trainable_params(model: nn.Module) -> bool:
    """Whether training has anything to optimise: not the ``empty`` baseline (``trainable = False``),
    not a model whose every parameter is frozen."""
    return getattr(model, "trainable", True) and any(p.requires_grad for p in model.parameters())


def count_params(model: nn.Module) -> int:
    """Number of parameters, trainable and frozen alike (the leaderboard's "params")."""
    return sum(p.numel() for p in model.parameters())


def gflops(model: nn.Module, size: int | tuple[int, int] = 256) -> float:
    """GFLOPs (FLOPs / 1e9, multiply-add = 2) of one forward pass on a 1 x C x size x size input.

    ``size`` may also be ``(H, W)``, e.g. (448, 608) for padded full-resolution inputs.
    """
    h, w = (size, size) if isinstance(size, int) else size
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    in_channels = _in_channels(model)
    was_training = model.training
    model.eval()
    try:
        # MATH backend: the same count on every device (see the module docstring).
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, in_channels, h, w, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9


def _in_channels(model: nn.Module) -> int:
    """Input channels of the first convolution (1 for models without one)."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return first.in_channels if first is not None else 1


def describe(name: str, size: int = 256) -> dict:
    """``{name, params, gflops, paper}`` for a registered (or ``smp:``) model name.

    The model is built on the meta device (shapes and FLOPs without allocating or computing);
    a model that cannot be built or run there (e.g. it calls ``.item()``) is measured on the CPU instead.
    """
    info = get_info(name)
    try:
        with torch.device("meta"):
            model = create(name).to("meta")  # .to: some libraries allocate outside the device context
        flops = gflops(model, size)
    except Exception:  # noqa: BLE001  (any meta-device gap: redo it for real; real errors re-raise there)
        model = create(name)
        try:
            flops = gflops(model, size)
        except (RuntimeError, AssertionError, ValueError) as exc:
            raise ModelError(f"model {name!r} fails a forward pass at 1x1x{size}x{size}: {exc}") from exc
    return {"name": name, "params": count_params(model), "gflops": flops, "paper": info.paper}
