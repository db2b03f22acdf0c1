"""Checkpoints in the documented format for inference tests."""

from __future__ import annotations

from pathlib import Path

import torch

from benchmark.core.config import TrainConfig
from benchmark.scoring.postprocess import PostProcess

TINY = {"base_width": 4, "depth": 2}


def save_ckpt(path: Path, cfg: TrainConfig, post: PostProcess | None, seed: int) -> Path:
    """A checkpoint in the documented format (what fit() writes, minus the optimiser state)."""
    from benchmark.training.module import SegModule

    torch.manual_seed(seed)
    module = SegModule(cfg.to_dict())
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": {"config": cfg.to_dict()}}
    if post is not None:
        ckpt["nerve_bench"] = {"postprocess": post.to_dict(), "config": cfg.to_dict()}
    torch.save(ckpt, path)
    return path
