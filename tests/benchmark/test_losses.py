"""Losses against hand values: soft Dice per image, GIoU, box loss on positives only, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark.training import losses


def _batch() -> dict[str, torch.Tensor]:
    mask = torch.zeros(2, 1, 8, 8)
    mask[0, 0, 2:6, 3:7] = 1.0  # image 0 has a nerve, image 1 is empty
    return {
        "mask": mask,
        "presence": torch.tensor([1.0, 0.0]),
        "bbox": torch.tensor([[0.625, 0.5, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0]]),
    }


def test_soft_dice_and_bce_hand_values():
    logits = torch.zeros(2, 1, 1, 2)  # every probability 0.5
    target = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 0.0]]]])
    # Image 0: (2*0.5 + 1) / (1 + 1 + 1) = 2/3; empty image 1: (0 + 1) / (1 + 0 + 1) = 1/2.
    assert float(losses.soft_dice_loss(logits, target)) == pytest.approx(1 - (2 / 3 + 1 / 2) / 2)
    expected = 0.5 * math.log(2) + 2.0 * (5 / 12)
    bce, dice = losses.bce_dice_parts(logits, target)
    assert float(0.5 * bce + 2.0 * dice) == pytest.approx(expected)


def test_perfect_prediction_gives_near_zero_loss():
    batch = _batch()
    outputs = {
        "mask": (batch["mask"] * 2 - 1) * 30,
        "presence": torch.tensor([[30.0], [-30.0]]),
        "bbox": batch["bbox"].clone(),
    }
    loss, parts = losses.loss_terms(outputs, batch, {"bce": 1, "dice": 1, "presence": 1, "bbox": 1})
    assert float(loss) < 1e-4
    assert set(parts) == {"bce", "dice", "presence", "bbox"}
    assert all(v.ndim == 0 and not v.requires_grad and float(v) < 1e-4 for v in parts.values())


def test_giou_hand_values():
    a = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.2, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]])
    b = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.8, 0.5, 0.2, 0.2], [0.6, 0.5, 0.2, 0.2]])
    g = losses.giou(a, b)
    assert float(g[0]) == pytest.approx(1.0)
    # Disjoint: union 0.08, hull 0.8 x 0.2 = 0.16 -> 0 - (0.16 - 0.08) / 0.16.
    assert float(g[1]) == pytest.approx(-0.5)
    # Shifted by half a width: inter 0.02, union 0.06 = hull -> 1/3.
    assert float(g[2]) == pytest.approx(1 / 3)


def test_bbox_loss_hand_value_and_ignores_negatives():
    target = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.0, 0.0, 0.0, 0.0]])
    positive = torch.tensor([True, False])
    pred = torch.tensor([[0.6, 0.5, 0.2, 0.2], [0.9, 0.9, 0.5, 0.5]])
    # L1 mean 0.1 / 4 plus 1 - GIoU = 2/3.
    assert float(losses.bbox_loss(pred, target, positive)) == pytest.approx(0.025 + 2 / 3)
    other = pred.clone()
    other[1] = torch.tensor([0.1, 0.2, 0.3, 0.4])
    assert float(losses.bbox_loss(other, target, positive)) == float(losses.bbox_loss(pred, target, positive))


def test_bbox_loss_under_ddp_averages_over_the_global_batchs_positives():
    """Ranks holding 3 and 1 of 4 positives: with the counts summed, the mean of the two ranks'
    losses (what DDP's gradient average takes) is the one-process loss; per rank it is not."""
    torch.manual_seed(0)
    pred, target = torch.rand(8, 4), torch.rand(8, 4)
    positive = torch.tensor([1, 1, 1, 0, 1, 0, 0, 0], dtype=torch.bool)
    whole = losses.bbox_loss(pred, target, positive)
    halves = [slice(0, 4), slice(4, 8)]
    counts = [positive[h].sum().float() for h in halves]
    per_rank = [losses.bbox_loss(pred[h], target[h], positive[h]) for h in halves]
    ddp = [losses.bbox_loss(pred[h], target[h], positive[h], lambda c: (sum(counts), 2)) for h in halves]
    assert float(sum(ddp) / 2) == pytest.approx(float(whole), rel=1e-6)
    assert float(sum(per_rank) / 2) != pytest.approx(float(whole), rel=1e-2)


def test_bbox_loss_without_positives_is_zero_with_graph():
    pred = torch.rand(3, 4, requires_grad=True)
    loss = losses.bbox_loss(pred, torch.zeros(3, 4), torch.zeros(3, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert pred.grad is not None and torch.count_nonzero(pred.grad) == 0


def test_gradients_flow_to_every_head():
    batch = _batch()
    torch.manual_seed(0)
    mask = torch.randn(2, 1, 8, 8, requires_grad=True)
    presence = torch.randn(2, 1, requires_grad=True)
    box_logits = torch.randn(2, 4, requires_grad=True)
    outputs = {"mask": mask, "presence": presence, "bbox": torch.sigmoid(box_logits)}
    weights = {"bce": 1.0, "dice": 0.5, "presence": 0.25, "bbox": 2.0}
    loss, parts = losses.loss_terms(outputs, batch, weights)
    assert loss.item() == pytest.approx(sum(weights[k] * float(v) for k, v in parts.items()), rel=1e-6)
    loss.backward()
    for t in (mask, presence, box_logits):
        assert t.grad is not None and torch.count_nonzero(t.grad) > 0
    assert torch.count_nonzero(box_logits.grad[1]) == 0  # the empty image has no box loss


def test_tensor_output_uses_mask_terms_only():
    batch = _batch()
    logits = torch.zeros(2, 1, 8, 8)
    loss, parts = losses.loss_terms(logits, {"mask": batch["mask"]}, {"bce": 1.0, "dice": 0.0})
    assert set(parts) == {"bce", "dice"}
    assert float(loss) == pytest.approx(math.log(2))


def test_bad_inputs_raise_clear_errors():
    batch = _batch()
    with pytest.raises(ValueError, match="unknown keys \\['focal'\\]"):
        losses.loss_terms(torch.zeros(2, 1, 8, 8), batch, {"focal": 1.0})
    with pytest.raises(ValueError, match="mask: prediction shape"):
        losses.loss_terms(torch.zeros(2, 1, 4, 4), batch, {})
    with pytest.raises(ValueError, match="batch lacks key 'presence'"):
        losses.loss_terms(
            {"mask": torch.zeros(2, 1, 8, 8), "presence": torch.zeros(2, 1)}, {"mask": batch["mask"]}
        )
