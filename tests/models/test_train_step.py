"""Every registered model takes a training step on the real loader's last batch when the fit part is
1 more than a multiple of the batch size: only full global batches are trained on, so no batch holds
a lone sample (which BatchNorm after global pooling, e.g. the SK-U-Net squeeze, cannot train on)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import models
from datamodules.data_config import DataConfig
from datamodules.datamodule import UltrasoundNerveDataModule
from models.registry import ModelError

BATCH = 3
SMP_SMALL = {"decoder_channels": (16, 8, 8, 8, 8)}
# Small widths keep 9 training steps cheap on CPU; a model missing here runs at its defaults.
SMALL: dict[str, dict] = {
    "unet": {"base_width": 4},
    "unet_densenet121": SMP_SMALL,
    "unet_vgg16": SMP_SMALL,
    "unet_mobilenet_v2": SMP_SMALL,
    "unet_resnet34": SMP_SMALL,
    "attention_unet": {"base_width": 4},
    "sk_unet": {"base_width": 4},
    "trans_cg_unet": {"base_width": 4, "embed_dim": 16, "num_layers": 1, "num_heads": 2},
}


@pytest.fixture(scope="module")
def batches(synthetic_dir: Path) -> list[dict[str, torch.Tensor]]:
    dm = UltrasoundNerveDataModule(
        synthetic_dir, DataConfig(fold=0, n_folds=2, image_size=64, batch_size=BATCH)
    )
    dm.setup("fit")
    # 3 of 6 subjects are the outer fold, 1 of the other 3 the inner selection set: 2 x 8 frames fit.
    assert len(dm.fit_indices) == 16 and 16 % BATCH == 1
    return list(dm.train_dataloader())


def test_training_loader_has_no_single_sample_batch(batches: list[dict[str, torch.Tensor]]) -> None:
    assert [len(b["index"]) for b in batches] == [BATCH] * 5  # the 16th sample waits for next epoch


def _loss(out: torch.Tensor | dict, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    out = out if isinstance(out, dict) else {"mask": out}
    loss = F.binary_cross_entropy_with_logits(out["mask"], batch["mask"])
    if "presence" in out:
        loss = loss + F.binary_cross_entropy_with_logits(out["presence"][:, 0], batch["presence"])
    return loss


@pytest.mark.parametrize("name", models.list_models())
def test_training_step_on_the_last_batch(name: str, batches: list[dict[str, torch.Tensor]]) -> None:
    torch.manual_seed(0)
    model = models.create(name, **SMALL.get(name, {})).train()
    batch = batches[-1]
    params = [p for p in model.parameters() if p.requires_grad]
    loss = _loss(model(batch["image"]), batch)
    assert torch.isfinite(loss)
    if not params:  # the constant baseline: nothing to train
        assert name == "empty" and not loss.requires_grad
        return
    before = [p.detach().clone() for p in params]
    optimiser = torch.optim.SGD(params, lr=0.1)
    loss.backward()
    optimiser.step()
    moved = sum(not torch.equal(b, p) for b, p in zip(before, params))
    assert moved > len(params) / 2, f"{name}: only {moved}/{len(params)} tensors changed"


def test_sk_unet_batch_of_one_is_a_clear_error() -> None:
    model = models.create("sk_unet", base_width=4, depth=2)
    with pytest.raises(ModelError, match="batches of at least 2"):
        model(torch.randn(1, 1, 16, 16))
    assert model.eval()(torch.randn(1, 1, 16, 16)).shape == (1, 1, 16, 16)  # inference is fine


def test_sk_unet_under_sync_batchnorm_leaves_a_per_rank_batch_of_one_to_torch() -> None:
    """Multi-GPU DDP converts BatchNorm to SyncBatchNorm, whose statistics pool every rank's batch:
    8 GPUs at a global batch of 8 give each rank 1 image, which must train. Outside a process group
    (here) SyncBatchNorm falls back to plain batch norm, so torch's own error is what remains."""
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(models.create("sk_unet", base_width=4, depth=2))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        model(torch.randn(1, 1, 16, 16))
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 1, 16, 16)
