"""Reading, writing and validating nerve-bench checkpoints: one home for train, evaluate and predict.

Every read uses ``torch.load(weights_only=True)``: a checkpoint is data, never code.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from benchmark.core.config import ConfigError, TrainConfig
from benchmark.training.module import SegModule, config_from_dict
from datamodules.errors import NerveBenchError

BEST, LAST = "best.ckpt", "last.ckpt"

CKPT_KEY = "nerve_bench"


def save_plain_checkpoint(module: SegModule, path: Path) -> None:
    """A minimal Lightning-loadable checkpoint of an untrained module (models with no parameters)."""
    import lightning

    ckpt = {
        "state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "epoch": 0,
        "global_step": 0, "pytorch-lightning_version": lightning.__version__,
        "nerve_bench_history": module.history,
    }  # fmt: skip
    torch.save(ckpt, path)


def read_checkpoint(path: Path) -> dict:
    """A nerve-bench checkpoint dict; NerveBenchError naming the file when missing or invalid."""
    if not path.is_file():
        raise NerveBenchError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, not a checkpoint, unexpected pickled objects
        raise NerveBenchError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None
    if (
        not isinstance(ckpt, dict)
        or "state_dict" not in ckpt
        or "config" not in ckpt.get("hyper_parameters", {})
    ):
        raise NerveBenchError(
            f"{path}: not a nerve-bench checkpoint (no state_dict / hyper_parameters.config)"
        )
    return ckpt


def load_checkpoint_module(path: Path, for_inference: bool = True) -> tuple[SegModule, dict]:
    """The module of a checkpoint (on CPU, eval mode) and the raw checkpoint dict.

    ``for_inference`` disables compilation and pretrained downloads: the weights come from the file.
    """
    ckpt = read_checkpoint(path)
    config = dict(ckpt["hyper_parameters"]["config"])
    if for_inference:
        config.update(encoder_weights=None, compile=False)
    try:
        module = SegModule(config)
        module.load_state_dict(ckpt["state_dict"])
    except (ConfigError, RuntimeError, TypeError) as exc:
        raise NerveBenchError(f"{path}: cannot rebuild the model ({exc})") from None
    module.on_load_checkpoint(ckpt)
    return module.eval(), ckpt


def postprocess_of(path: Path, ckpt: dict) -> Any:
    """The checkpoint's tuned PostProcess; the defaults (with the run's tta) when it has none."""
    from benchmark.scoring.postprocess import PostProcess

    saved = (ckpt.get(CKPT_KEY) or {}).get("postprocess")
    if saved is None:
        print(f"warning: {path} has no tuned post-processing; using the defaults", file=sys.stderr)
        return PostProcess(tta=bool(ckpt["hyper_parameters"]["config"].get("tta", False)))
    try:
        return PostProcess.from_dict(saved)
    except (ConfigError, TypeError) as exc:
        raise NerveBenchError(f"{path}: bad stored post-processing ({exc})") from None


def store_in_checkpoint(path: Path, ckpt: dict, extra: dict) -> None:
    """Add the ``nerve_bench`` block (post-processing, config, metrics) to a checkpoint, atomically."""
    ckpt[CKPT_KEY] = extra
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)


def resume_checkpoint(ckpt_dir: Path, cfg: TrainConfig) -> Path | None:
    """``last.ckpt`` when it belongs to this config; ConfigError when it belongs to another one."""
    last = ckpt_dir / LAST
    if not last.is_file():
        return None
    try:
        saved = torch.load(last, map_location="cpu", weights_only=False)["hyper_parameters"]["config"]
    except Exception as exc:  # a truncated file from a killed run: start again, loudly
        raise ConfigError(f"{last}: unreadable checkpoint ({exc}); delete it to restart the run") from None
    saved_hash = config_from_dict(saved).hash()
    if saved_hash != cfg.hash():
        raise ConfigError(
            f"{last}: checkpoint of a different config (hash {saved_hash} != {cfg.hash()});"
            " use another output directory or delete it"
        )
    return last
