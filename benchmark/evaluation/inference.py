"""Running a model over a loader (no Trainer) and gathering per-image counts, for finalize, evaluate, DDP.

Everything is scored at the original 420x580 from per-image confusion counts (tp, fp, fn, tn), so a
metric never depends on the batch size, the network input size or the number of devices: under DDP
the per-image rows of every rank are all-gathered, de-duplicated by dataset index and sorted.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.scoring.counts import confusion_counts_torch, dedupe_sorted


def _all_gather_padded(module: Any, tensor: torch.Tensor) -> list[torch.Tensor]:
    """all_gather a (n, ...) tensor whose n may differ per rank; returns one tensor per rank."""
    n = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = module.all_gather(n).reshape(-1).tolist()
    padded = torch.zeros((max(sizes), *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    gathered = module.all_gather(padded)
    return [gathered[r, : sizes[r]] for r in range(len(sizes))]


def gather_rows(module: Any, rows: list[dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    """Concatenate this rank's per-batch rows, gather every rank's, drop repeated indices, sort.

    DistributedSampler pads the last shard by repeating samples; those repeats carry the same
    index and are dropped, so every rank ends up with exactly the dataset's images once each.
    """
    device = module.device
    local = {
        "index": torch.cat([r["index"] for r in rows]) if rows else torch.zeros(0, dtype=torch.long),
        "counts": torch.cat([r["counts"] for r in rows]) if rows else torch.zeros(0, 4, dtype=torch.long),
        "presence_prob": torch.cat([r["presence_prob"].float() for r in rows]) if rows else torch.zeros(0),
    }
    local = {k: v.to(device) for k, v in local.items()}
    trainer = getattr(module, "_trainer", None)
    if trainer is not None and trainer.world_size > 1:
        local = {k: torch.cat(_all_gather_padded(module, v)) for k, v in local.items()}
    arrays = {k: v.detach().cpu().numpy() for k, v in local.items()}
    return dedupe_sorted(arrays)


def dump_eval(path: str | Path, result: dict[str, Any]) -> None:
    """Save a scored evaluation (arrays + metrics) as npz, e.g. to compare DDP with one device."""
    arrays = {k: np.asarray(v) for k, v in result.items() if k != "metrics"}
    names = sorted(result["metrics"])
    arrays["metric_names"] = np.asarray(names)
    arrays["metric_values"] = np.asarray([result["metrics"][k] for k in names], dtype=np.float64)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def load_eval(path: str | Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as data:
        out = {k: data[k] for k in data.files if not k.startswith("metric_")}
        out["metrics"] = dict(zip(data["metric_names"].tolist(), data["metric_values"].tolist()))
    return out


@torch.no_grad()
def predict_loader(
    module: Any,
    loader: Iterable[dict],
    device: torch.device,
    precision: str,
    keep_probs: bool = False,
    pp: Any = None,
) -> dict[str, Any]:
    """Run ``module.predict_orig`` over a loader on one device (no Trainer).

    Returns (sorted by index) per-image index, raw counts (threshold 0.5), presence probability;
    with ``pp`` also the counts after that post-processing (``post_counts``); with ``keep_probs`` the 420x580
    probabilities as uint8 (p*255, rounded) plus the truth masks, the inputs of post-processing
    tuning (~0.24 MB per image each). ``presence_head`` says whether ``presence_prob`` comes from a
    presence head (else it is the maximum pixel probability).
    """
    from benchmark.training.device import autocast

    module.eval().to(device)
    index, counts, presence, probs, truths, post = [], [], [], [], [], []
    head = False
    for batch in loader:
        image = batch["image"].to(device, non_blocking=True)
        truth = batch["mask_orig"].to(device, non_blocking=True)
        with autocast(device, precision):
            prob, pres, raw = module.predict_orig(image)
        prob = prob.float()
        head = isinstance(raw, dict) and raw.get("presence") is not None
        index.append(batch["index"].cpu())
        counts.append(confusion_counts_torch(prob > 0.5, truth).cpu())
        presence.append(pres.float().cpu())
        if pp is not None:
            post.append(post_counts(prob, pres if head else None, truth, pp))
        if keep_probs:
            probs.append(torch.round(prob * 255).to(torch.uint8).cpu())
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
    prob: torch.Tensor, presence: torch.Tensor | None, truth: torch.Tensor, pp: Any
) -> torch.Tensor:
    """Per-image confusion counts (N, 4) of ``pp`` applied to probabilities (float or uint8)."""
    from benchmark.scoring import postprocess

    pres = None if presence is None else presence.float().cpu().numpy()
    pred = postprocess.apply(prob.cpu().numpy(), pp, pres)
    return confusion_counts_torch(torch.as_tensor(np.asarray(pred)), truth.cpu())


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
