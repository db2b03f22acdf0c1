"""Training losses: BCE + soft Dice on the mask, BCE on presence, L1 + GIoU on the nerve box.

* Soft Dice (Milletari et al., "V-Net", 3DV 2016) is computed per image and then averaged, with
  additive smoothing ``eps`` in numerator and denominator: ``1 - (2 sum(p t) + eps) / (sum p +
  sum t + eps)``. An empty truth then gives ``1 - eps / (sum p + eps)``: ~0 when the prediction is
  (near) empty and -> 1 as it grows, so the ~59% empty images push towards empty predictions
  instead of being ignored (a pooled batch Dice would let a few large nerves dominate).
* GIoU (Rezatofighi et al., "Generalized Intersection over Union", CVPR 2019) in plain torch:
  torchvision's compiled ops are not relied on. Box losses follow DETR (Carion et al., ECCV 2020):
  L1 + (1 - GIoU), on images that contain a nerve only, normalised by the positives of the whole
  global batch under DDP (as DETR normalises by the boxes over all processes).

Everything is computed in float32, so the losses are stable under bf16/fp16 autocast.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias

# A count of this process -> (its sum over the DDP processes, their number); on the device.
WorldSum = Callable[[torch.Tensor], tuple[torch.Tensor, int]]

DEFAULT_WEIGHTS = {"bce": 1.0, "dice": 1.0, "presence": 0.5, "bbox": 0.5}
_BOX_EPS = 1e-7


def _same_shape(name: str, pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"{name}: prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}"
        )


def soft_dice_loss(mask_logits: torch.Tensor, mask_target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Mean over images of 1 - smoothed soft Dice of sigmoid(logits) vs the {0,1} target."""
    _same_shape("mask", mask_logits, mask_target)
    prob = torch.sigmoid(mask_logits.float()).flatten(1)
    target = mask_target.float().flatten(1)
    inter = (prob * target).sum(1)
    dice = (2.0 * inter + eps) / (prob.sum(1) + target.sum(1) + eps)
    return 1.0 - dice.mean()


def bce_dice_parts(
    mask_logits: torch.Tensor, mask_target: torch.Tensor, eps: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixel-mean BCE-with-logits, per-image soft Dice loss), unweighted."""
    _same_shape("mask", mask_logits, mask_target)
    bce = F.binary_cross_entropy_with_logits(mask_logits.float(), mask_target.float())
    return bce, soft_dice_loss(mask_logits, mask_target, eps)


def presence_loss(presence_logits: torch.Tensor, presence_target: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits of (B,1) or (B,) presence logits vs (B,) {0,1} targets."""
    logits = presence_logits.float().reshape(-1)
    target = presence_target.float().reshape(-1)
    _same_shape("presence", logits, target)
    return F.binary_cross_entropy_with_logits(logits, target)


def _xyxy(box: torch.Tensor) -> tuple[torch.Tensor, ...]:
    cx, cy, w, h = box.float().unbind(-1)
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalised IoU of matched (..., 4) cxcywh boxes -> (...,) in [-1, 1]; 1 for identical boxes."""
    _same_shape("bbox", a, b)
    ax0, ay0, ax1, ay1 = _xyxy(a)
    bx0, by0, bx1, by1 = _xyxy(b)
    area_a = (ax1 - ax0).clamp(min=0) * (ay1 - ay0).clamp(min=0)
    area_b = (bx1 - bx0).clamp(min=0) * (by1 - by0).clamp(min=0)
    inter = (torch.minimum(ax1, bx1) - torch.maximum(ax0, bx0)).clamp(min=0) * (
        torch.minimum(ay1, by1) - torch.maximum(ay0, by0)
    ).clamp(min=0)
    union = area_a + area_b - inter
    hull = (torch.maximum(ax1, bx1) - torch.minimum(ax0, bx0)) * (
        torch.maximum(ay1, by1) - torch.minimum(ay0, by0)
    )
    iou = inter / union.clamp(min=_BOX_EPS)
    return iou - (hull - union) / hull.clamp(min=_BOX_EPS)


def bbox_loss(
    pred: torch.Tensor, target: torch.Tensor, positive: torch.Tensor, world_sum: WorldSum | None = None
) -> torch.Tensor:
    """Mean over positive images of L1 (mean over the 4 coordinates) + (1 - GIoU).

    Returns 0 (still attached to the graph, so DDP sees every parameter used) when no image is
    positive. Masked rather than indexed: no data-dependent shape, so no host synchronisation.

    Under DDP, ``world_sum`` gives (the count summed over the processes, their number): the mean is
    then over the positives of the whole global batch, times the number of processes since DDP
    averages their gradients. A mean per process would weigh a positive image by how many others
    its process happened to hold, so 8 GPUs would train another recipe than 1.
    """
    _same_shape("bbox", pred, target)
    keep = positive.reshape(-1).bool()
    if keep.shape[0] != pred.shape[0]:
        raise ValueError(f"bbox: {keep.shape[0]} positive flags for {pred.shape[0]} boxes")
    p, t = pred.float(), target.float()
    per_box = (p - t).abs().mean(dim=1) + 1.0 - giou(p, t)  # finite: giou clamps its denominators
    per_box = torch.where(keep, per_box, torch.zeros_like(per_box))
    if world_sum is None:
        return per_box.sum() / keep.sum().clamp(min=1)
    total, world = world_sum(keep.sum().float())
    return per_box.sum() * world / total.clamp(min=1)


def _split_outputs(outputs: torch.Tensor | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return {"mask": outputs}
    if not isinstance(outputs, Mapping) or "mask" not in outputs:
        raise ValueError("model outputs must be a mask-logits tensor or a dict with a 'mask' entry")
    return {k: v for k, v in outputs.items() if v is not None}


def _weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    unknown = sorted(set(weights or {}) - set(DEFAULT_WEIGHTS))
    if unknown:
        raise ValueError(f"loss weights: unknown keys {unknown}; expected some of {sorted(DEFAULT_WEIGHTS)}")
    return {**DEFAULT_WEIGHTS, **{k: float(v) for k, v in (weights or {}).items()}}


def box_positives(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """(B,) bool: the images whose box the box loss scores (a nerve is present)."""
    return batch["presence"] > 0.5 if "presence" in batch else batch["mask"].flatten(1).amax(1) > 0.5


def loss_terms(
    outputs: torch.Tensor | Mapping[str, torch.Tensor],
    batch: Mapping[str, torch.Tensor],
    weights: Mapping[str, float] | None = None,
    world_sum: WorldSum | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of every loss the model's outputs allow; parts are the unweighted values,
    detached 0-dim tensors left on the device (training logs them without a host sync).

    ``weights`` keys: bce, dice, presence, bbox (missing ones take the TrainConfig defaults).
    The presence and box terms apply only when the model returns those heads; the box term
    uses ``batch["presence"] > 0.5`` as the positive flag; ``world_sum``: see :func:`bbox_loss`.
    """
    out, w = _split_outputs(outputs), _weights(weights)
    for key in ("mask",) + tuple(k for k in ("presence", "bbox") if k in out):
        if key not in batch:
            raise ValueError(f"batch lacks key {key!r} needed by the loss")
    bce, dice = bce_dice_parts(out["mask"], batch["mask"])
    terms = {"bce": bce, "dice": dice}
    if "presence" in out:
        terms["presence"] = presence_loss(out["presence"], batch["presence"])
    if "bbox" in out:
        terms["bbox"] = bbox_loss(out["bbox"], batch["bbox"], box_positives(batch), world_sum)
    loss = sum((w[k] * v for k, v in terms.items()), start=bce.new_zeros(()))  # 0 + x == x exactly
    return loss, {k: v.detach() for k, v in terms.items()}
