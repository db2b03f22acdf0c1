"""Running a model over a loader on one device (no Trainer) into per-image counts, for finalize and evaluate.

Everything is scored at the original 420x580 from per-image confusion counts (tp, fp, fn, tn), so a
metric never depends on the batch size or the network input size. (Inside a Trainer, under DDP too,
the same rows are kept by :class:`benchmark.scoring.kaggle_scores.KaggleScores`.)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from benchmark.scoring.counts import confusion_counts_torch, dedupe_sorted
from benchmark.scoring.post_counts import post_counts, to_u8

if TYPE_CHECKING:
    from benchmark.training.module import SegModule


@torch.no_grad()
def predict_loader(
    module: SegModule,
    loader: Iterable[dict],
    device: torch.device,
    precision: str,
    keep_probs: bool = False,
    pp: Any = None,
) -> dict[str, Any]:
    """Run ``module.predict_orig`` over a loader on one device (no Trainer).

    Returns (sorted by index) per-image index, raw counts (threshold 0.5), presence probability;
    with ``pp`` also the counts after that post-processing (``post_counts``); with ``keep_probs`` the
    420x580 probabilities as uint8 (``postprocess.to_u8``'s ceil(p*255 - 0.5)) plus the truth masks,
    the inputs of post-processing tuning (~0.24 MB per image each). ``presence_head`` says whether
    ``presence_prob`` comes from a presence head (else it is the maximum pixel probability).
    """
    from benchmark.training.device import scoring_precision

    module.eval().to(device)
    index, counts, presence, probs, truths, post = [], [], [], [], [], []
    head = False
    for batch in loader:
        image = batch["image"].to(device, non_blocking=True)
        truth = batch["mask_orig"].to(device, non_blocking=True)
        with scoring_precision(device, precision):
            prob, pres, raw = module.predict_orig(image)
        prob = prob.float()
        head = isinstance(raw, dict) and raw.get("presence") is not None
        index.append(batch["index"].cpu())
        counts.append(confusion_counts_torch(prob > 0.5, truth).cpu())
        presence.append(pres.float().cpu())
        if pp is not None:
            post.append(post_counts(prob, pres if head else None, truth, pp))
        if keep_probs:
            probs.append(to_u8(prob).cpu())
            truths.append(truth.to(torch.uint8).cpu())
    out: dict[str, Any] = {
        "index": torch.cat(index).numpy().astype(np.int64),
        "counts": torch.cat(counts).numpy(),
        "presence_prob": torch.cat(presence).numpy(),
    }
    if keep_probs:
        out["prob_u8"] = torch.cat(probs).numpy()
        out["truth"] = torch.cat(truths).numpy()
    if pp is not None:
        out["post_counts"] = torch.cat(post).numpy()
    return {**dedupe_sorted(out), "presence_head": head}
