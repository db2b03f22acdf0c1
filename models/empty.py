"""The all-empty baseline: predicts background everywhere.

On the Kaggle data ~59% of the masks are empty and an empty prediction on an empty truth
scores Dice 1, so this constant model is the floor every real model has to beat.
"""

from __future__ import annotations

import torch
from torch import nn

from models.blocks import EMPTY_LOGIT
from models.registry import ModelError, register

PAPER = "baseline: constant background prediction (no trainable weights)"


@register("empty", paper=PAPER)
class EmptyModel(nn.Module):
    """Returns a constant, very negative logit map shaped (B, 1, H, W) like the input.

    It has no trainable parameters (``trainable = False`` tells training code to skip the
    optimisation loop); with ``presence_head=True`` it also returns a constant "absent" presence
    logit. The constant is a frozen parameter only so that ``model.parameters()``
    is not empty and the model follows ``.to(device)`` like any other; it is the one parameter
    ``models.info.count_params`` reports. ``encoder_weights`` must be None (there is no encoder).
    """

    trainable = False

    def __init__(
        self,
        in_channels: int = 1,
        encoder_weights: str | None = None,
        presence_head: bool = False,
        logit: float = EMPTY_LOGIT,
    ) -> None:
        if encoder_weights is not None:  # accepted only for the uniform create() signature
            raise ModelError(f"empty has no encoder: encoder_weights must be None, got {encoder_weights!r}")
        super().__init__()
        self.logit = nn.Parameter(torch.tensor(float(logit)), requires_grad=False)
        self.presence_head = presence_head

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        value = self.logit.to(x.dtype)
        mask = value.expand(x.shape[0], 1, *x.shape[-2:]).contiguous()
        if not self.presence_head:
            return mask
        return {"mask": mask, "presence": value.expand(x.shape[0], 1).contiguous()}
