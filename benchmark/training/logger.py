"""The Lightning logger of a run (CSV, W&B or none) and the W&B naming shared with reporting.

W&B runs offline unless ``WANDB_API_KEY`` is set (an explicit ``WANDB_MODE`` always wins), so a
benchmark never needs the network. The mode is exported to the environment before wandb is
imported (:func:`wandb_env`): passing ``mode="offline"`` to ``wandb.init`` alone is not enough, since
wandb's process-wide telemetry reads the global settings and would still look up its telemetry host.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from benchmark.core.config import TrainConfig


def wandb_mode() -> str:
    """``WANDB_MODE`` if set, else online only when an API key is available."""
    return os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")


def wandb_env() -> None:
    """Export ``WANDB_MODE=offline`` when neither a mode nor an API key is set, and switch W&B's
    error reporting (its telemetry to a W&B host) off unless the user set it; call before
    ``import wandb``. Ray workers inherit both (ray_grid forwards ``WANDB_*``)."""
    if not os.environ.get("WANDB_MODE") and not os.environ.get("WANDB_API_KEY"):
        os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")


def wandb_run_id(run_name: str, group: str | None) -> str:
    """Deterministic W&B id so the summary step re-attaches to the run that trained it."""
    tag = hashlib.sha256(f"{group}/{run_name}".encode()).hexdigest()[:8]
    # W&B refuses an id holding any of :;,#?/' (a plugin's model name may): every run of it failed.
    # The tag keeps ids apart; ids of the usual names ([A-Za-z0-9._-]) are as before.
    plain = re.sub(r"[^A-Za-z0-9._-]", "-", run_name.replace("__", "-"))
    return f"{plain[:55]}-{tag}"  # W&B's limit is 64: the tag is kept whole (it told long names apart)


def csv_version(out_dir: Path) -> str:
    """``csv``, or for a resumed run the first of ``csv-2``, ``csv-3``, ... still empty: Lightning's
    CSV writer deletes the ``metrics.csv`` it finds, which holds the earlier attempt's epochs
    (summary.json's history is complete either way: it comes from the checkpoint), and warns of
    that for any file it finds."""
    version, attempt = "csv", 1
    while (out_dir / version).is_dir() and any((out_dir / version).iterdir()):
        attempt += 1
        version = f"csv-{attempt}"
    return version


def lightning_logger(cfg: TrainConfig, run_name: str, out_dir: str | Path) -> Any:
    """The Lightning logger ``cfg.logger`` asks for: CSVLogger, WandbLogger or None."""
    out_dir = Path(out_dir)
    if cfg.logger == "none":
        return None
    if cfg.logger == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(out_dir), name="", version=csv_version(out_dir))
    wandb_env()
    from lightning.pytorch.loggers import WandbLogger

    from benchmark.training.checkpoint import LAST

    out_dir.mkdir(parents=True, exist_ok=True)
    logger = WandbLogger(
        save_dir=str(out_dir),
        project=cfg.wandb_project,
        group=cfg.wandb_group,
        name=run_name,
        id=wandb_run_id(run_name, cfg.wandb_group),
        # a run resumed from last.ckpt logs on in its first attempt's W&B run; one that starts again
        # from scratch (no checkpoint) logs under the id without resume (W&B documents it as overwriting)
        resume="allow" if (out_dir / "checkpoints" / LAST).is_file() else None,
        config=cfg.to_dict(),
        mode=wandb_mode(),
        job_type="train",
    )
    # Lightning always passes the deprecated `anonymous` key, which makes W&B warn on every run.
    getattr(logger, "_wandb_init", {}).pop("anonymous", None)
    return logger
