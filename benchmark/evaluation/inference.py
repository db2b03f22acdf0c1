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


def post_counts(
    prob: torch.Tensor,
    presence: torch.Tensor | None,
    truth: torch.Tensor,
    pp: Any,
    on_device: bool | None = None,
) -> torch.Tensor:
    """Per-image confusion counts (N, 4) of ``pp`` applied to probabilities (float or uint8): the masks
    of ``postprocess.apply``. On a GPU (``on_device``, by default when ``prob`` is not on the CPU) the
    420x580 maps stay there (a batch of 128 is 125 MB to move) and only per-image areas and maxima
    visit the host, for the gate in float64: its uint8 rounding, its threshold as an integer cut, its
    keep rule. On the CPU numpy's path is about twice as fast as torch's (0.63 s against 1.17 s per
    128 maps on one thread here)."""
    from benchmark.scoring import postprocess

    if not (prob.device.type != "cpu" if on_device is None else on_device):
        pres = None if presence is None else presence.float().cpu().numpy()
        pred = postprocess.apply(prob.cpu().numpy(), pp, pres)
        return confusion_counts_torch(torch.as_tensor(np.asarray(pred)), truth.cpu())
    u8 = prob if prob.dtype == torch.uint8 else to_u8(prob)
    mask = u8 > postprocess.threshold_cut(pp.threshold)
    area = mask.sum(dim=(1, 2)).cpu().numpy()
    max_prob = u8.flatten(1).amax(dim=1).cpu().numpy() / 255.0
    pres = None if presence is None else presence.float().cpu().numpy().astype(np.float64).reshape(-1)
    keep = torch.from_numpy(postprocess.kept(area, max_prob, pres, pp)).to(mask.device)
    return confusion_counts_torch(mask & keep[:, None, None], truth.to(mask.device)).cpu()


def to_u8(prob: torch.Tensor) -> torch.Tensor:
    """``postprocess.to_u8`` in torch: the same float32 operations, so the same bytes on any device."""
    return torch.ceil(prob.float().clamp(0.0, 1.0) * 255 - 0.5).to(torch.uint8)


def postprocess_counts(
    prob_u8: np.ndarray, truth: np.ndarray, presence: np.ndarray | None, pp: Any
) -> np.ndarray:
    """Per-image confusion counts after applying ``pp``, in chunks to bound memory."""
    out = [
        post_counts(
            torch.from_numpy(prob_u8[s : s + 64]),
            None if presence is None else torch.from_numpy(presence[s : s + 64]),
            torch.from_numpy(truth[s : s + 64]),
            pp,
        )
        for s in range(0, len(prob_u8), 64)
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, 4), dtype=np.int64)
