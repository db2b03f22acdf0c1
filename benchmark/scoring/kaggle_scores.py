"""``KaggleScores``: the validation/test scoring state as a torchmetrics ``Metric``.

The state is per image: dataset index, confusion counts (tp, fp, fn, tn) at the original 420x580
and the presence probability, each a ``"cat"`` state, so torchmetrics gathers every rank's rows
(padding unequal ranks) when ``compute`` runs under DDP. ``compute`` then drops the rows that
DistributedSampler repeated to even out the ranks (same dataset index), sorts by index and scores
with the pure functions of :mod:`benchmark.scoring.counts` / :mod:`benchmark.scoring.metrics`, where
the Kaggle empty rule (empty prediction on empty truth = 1) lives. Nothing here leaves the device
before ``compute``: ``update`` costs no host synchronisation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from benchmark.scoring.counts import confusion_counts_torch, dedupe_sorted, score_rows

THRESHOLD = 0.5  # raw (un-post-processed) foreground threshold


class KaggleScores(Metric):
    """Per-image rows of one evaluation pass; ``compute()`` -> ``score_rows`` dict (numpy + metrics).

    ``compute()`` returns ``{"index", "counts", "presence_prob", "dice", "iou", "true_empty",
    "metrics"}``: arrays sorted by dataset index, each image once, and the named metrics as floats.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    index: list[torch.Tensor] | torch.Tensor
    counts: list[torch.Tensor] | torch.Tensor
    presence_prob: list[torch.Tensor] | torch.Tensor

    def __init__(self, threshold: float = THRESHOLD, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.threshold = threshold
        self.add_state("index", default=[], dist_reduce_fx="cat")
        self.add_state("counts", default=[], dist_reduce_fx="cat")
        self.add_state("presence_prob", default=[], dist_reduce_fx="cat")

    def update(
        self, prob: torch.Tensor, truth: torch.Tensor, index: torch.Tensor, presence: torch.Tensor
    ) -> None:
        """Add a batch: foreground probabilities (B, 420, 580), truth masks of the same shape,
        dataset indices (B,) and presence probabilities (B,)."""
        if prob.shape != truth.shape or prob.ndim != 3:
            raise ValueError(
                f"expected probabilities and truth of one (B, H, W) shape, got {tuple(prob.shape)}"
                f" and {tuple(truth.shape)}"
            )
        if index.numel() != prob.shape[0] or presence.numel() != prob.shape[0]:
            raise ValueError(
                f"{index.numel()} indices and {presence.numel()} presences for {prob.shape[0]} images"
            )
        self.index.append(index.reshape(-1).long())
        self.counts.append(confusion_counts_torch(prob > self.threshold, truth))
        self.presence_prob.append(presence.reshape(-1).float())

    def rows(self) -> dict[str, np.ndarray]:
        """This metric's (already gathered, when called from ``compute``) rows as numpy, each image once."""
        arrays = {
            "index": _cat(self.index, (0,), torch.long),
            "counts": _cat(self.counts, (0, 4), torch.long),
            "presence_prob": _cat(self.presence_prob, (0,), torch.float32),
        }
        return dedupe_sorted({k: v.detach().cpu().numpy() for k, v in arrays.items()})

    def compute(self) -> dict[str, Any]:
        return score_rows(self.rows())


def _cat(
    state: list[torch.Tensor] | torch.Tensor, empty: tuple[int, ...], dtype: torch.dtype
) -> torch.Tensor:
    """A list state (or the tensor a DDP sync leaves) as one tensor; an empty one when nothing came."""
    if isinstance(state, list) and not state:
        return torch.zeros(empty, dtype=dtype)
    return dim_zero_cat(state)
