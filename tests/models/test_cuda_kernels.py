"""No model of the default set, with or without its presence head, trains through an op whose CUDA
kernel torch lists as non-deterministic (``torch.use_deterministic_algorithms``): on a GPU the
recipe's determinism only warns there, so such an op would make reruns differ silently.

The ops are recorded on CPU at the ATen level (a dispatch mode): forward and backward run the same
ATen ops there as on CUDA, except where a model picks a path by device; TransCGUNet's attention is
set to the explicit form it trains with on CUDA under determinism.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import models
from benchmark.training.losses import loss_terms
from models import trans_cg_unet

# torch's list of ops that raise (or warn, in warn mode) under deterministic algorithms on CUDA
# (torch.use_deterministic_algorithms' docstring, torch 2.11 and 2.13), as ATen names.
NONDETERMINISTIC_ON_CUDA = {
    "_adaptive_avg_pool2d_backward",
    "_adaptive_avg_pool3d_backward",
    "adaptive_max_pool2d_backward",
    "adaptive_max_pool3d_backward",
    "avg_pool3d_backward",
    "max_pool3d_with_indices_backward",
    "fractional_max_pool2d_backward",
    "fractional_max_pool3d_backward",
    "max_unpool2d",
    "max_unpool3d",
    "upsample_linear1d_backward",
    "upsample_bilinear2d_backward",
    "_upsample_bilinear2d_aa_backward",
    "upsample_bicubic2d_backward",
    "upsample_trilinear3d_backward",
    "reflection_pad1d_backward",
    "reflection_pad2d_backward",
    "reflection_pad3d_backward",
    "replication_pad1d_backward",
    "replication_pad2d_backward",
    "replication_pad3d_backward",
    "nll_loss2d_forward",
    "_ctc_loss_backward",
    "embedding_bag",
    "_embedding_bag_backward",
    "put_",
    "histc",
    "bincount",
    "kthvalue",
    "median",
    "grid_sampler_2d_backward",
    "grid_sampler_3d_backward",
    "cumsum",
    "scatter_add_",
    "scatter_add",
    "scatter_reduce",
    "index_add_",
    "index_add",
    "index_copy_",
    "index_select_backward",
    "gather_backward",
    "_index_put_impl_",
}


class AtenOps(TorchDispatchMode):
    """The ATen op names dispatched inside the mode, forward and backward."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        self.names.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _step_ops(name: str, presence_head: bool, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    # The attention path CUDA trains with under determinism (on CPU TransCGUNet would take SDPA).
    monkeypatch.setattr(trans_cg_unet, "needs_explicit_attention", lambda *flags: True)
    torch.manual_seed(0)
    model = models.create(name, in_channels=1, encoder_weights=None, presence_head=presence_head)
    x = torch.randn(2, 1, 64, 64)
    mask = (torch.rand(2, 1, 64, 64) > 0.7).float()
    batch = {"mask": mask, "presence": torch.tensor([1.0, 0.0]), "bbox": torch.rand(2, 4)}
    with AtenOps() as ops:
        loss, _ = loss_terms(model(x), batch)
        loss.backward()
    return ops.names


def test_the_recorder_sees_a_listed_op_in_a_backward_pass() -> None:
    # (ATen computes AdaptiveAvgPool2d(1) as a mean on every device; a 2x2 output takes the kernel.)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.AdaptiveAvgPool2d(2))
    with AtenOps() as ops:
        net(torch.randn(1, 1, 8, 8)).sum().backward()
    assert "_adaptive_avg_pool2d_backward" in ops.names & NONDETERMINISTIC_ON_CUDA


@pytest.mark.parametrize("presence_head", [False, True])
@pytest.mark.parametrize("name", [n for n in models.list_models() if n != "empty"])
def test_a_training_step_uses_no_op_without_a_deterministic_cuda_kernel(
    name: str, presence_head: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = _step_ops(name, presence_head, monkeypatch) & NONDETERMINISTIC_ON_CUDA
    assert not found, f"{name} (presence_head={presence_head}): {sorted(found)}"
