"""SegModule: the one LightningModule, wrapping any registry model by name.

Training: the loss of :mod:`benchmark.losses` (BCE + soft Dice on the mask; presence BCE and
L1 + GIoU box loss for multi-head models), AdamW with a linear warm-up then a cosine decay
(Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019; "SGDR", ICLR 2017),
stepped per optimiser step. Validation/test: probabilities are mapped back to 420x580, compared
with the original masks as per-image confusion counts, gathered from every rank, de-duplicated by
dataset index (the distributed sampler pads by repeating samples) and scored identically on every
rank, so the metrics are exact whatever the number of devices.

Only primitives go into the hyper-parameters (``config`` = ``TrainConfig.to_dict()``), so a
checkpoint rebuilds its module with ``SegModule.load_from_checkpoint`` and nothing else.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from lightning import LightningModule

from benchmark.core.config import TrainConfig, apply_overrides
from benchmark.evaluation import inference
from benchmark.scoring.counts import confusion_counts_torch, score_rows
from datamodules import geometry

HISTORY_KEYS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_kaggle_dice",
    "epoch_time_s",
    "train_s",
    "train_images",
)
LOGGED_METRICS = ("kaggle_dice", "dice_positive", "iou", "presence_accuracy")


def config_from_dict(config: dict | TrainConfig) -> TrainConfig:
    """A validated TrainConfig from a (checkpoint) dict; unknown keys raise ConfigError."""
    if isinstance(config, TrainConfig):
        return config
    return apply_overrides(TrainConfig(), dict(config))


def has_trainable_params(model: torch.nn.Module) -> bool:
    return getattr(model, "trainable", True) and any(p.requires_grad for p in model.parameters())


class WarmupCosine:
    """LR factor per optimiser step: linear warm-up to 1, then cosine to 0 (or constant).

    A callable object rather than a lambda so LambdaLR can checkpoint its state.
    """

    def __init__(self, warmup_steps: int, total_steps: int, cosine: bool) -> None:
        self.warmup_steps, self.total_steps, self.cosine = warmup_steps, max(total_steps, 1), cosine

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if not self.cosine:
            return 1.0
        progress = (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


class SegModule(LightningModule):
    """Wraps ``models.create(config["model"], **config["model_kwargs"])`` for training and scoring."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        self.cfg = config_from_dict(config)
        self.save_hyperparameters({"config": self.cfg.to_dict()})
        from models import create

        cfg = self.cfg
        self.model = create(cfg.model, in_channels=1, encoder_weights=cfg.encoder_weights, **cfg.model_kwargs)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.history: dict[str, list] = {k: [] for k in HISTORY_KEYS}
        self.last_eval: dict[str, Any] | None = None  # per-image rows + metrics of the last val/test
        self.eval_dump: str | None = None  # rank 0 writes last_eval here (npz) when set
        self._rows: list[dict[str, torch.Tensor]] = []
        self._sums: dict[str, list[float]] = {}
        self._t0 = self._t_train = 0.0

    # -- forward ---------------------------------------------------------------------------------
    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        state.pop("_compiled", None)  # compiled graphs do not pickle (ddp_spawn); rebuilt lazily
        return state

    def _net(self) -> torch.nn.Module:
        if not self.cfg.compile:
            return self.model
        if self.__dict__.get("_compiled") is None:
            # Kept out of the module tree so checkpoints hold the plain model's keys.
            self.__dict__["_compiled"] = torch.compile(self.model)
        return self.__dict__["_compiled"]

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self._net()(x)

    def predict_orig(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """Foreground probabilities at 420x580 (B, 420, 580) float32, presence prob (B,), raw outputs.

        The presence probability is the sigmoid of the presence head when the model has one, else
        the maximum pixel probability. With ``tta`` the horizontally flipped input is averaged in.
        """
        out = self(image)
        prob, presence = _probs(out)
        if self.cfg.tta:
            flipped_prob, flipped_presence = _probs(self(torch.flip(image, dims=[-1])))
            prob = 0.5 * (prob + torch.flip(flipped_prob, dims=[-1]))
            if presence is not None:
                presence = 0.5 * (presence + flipped_presence)
        prob = geometry.restore(prob, self.cfg.resize_mode, self.cfg.image_size)[:, 0].float()
        if presence is None:
            presence = prob.flatten(1).amax(dim=1)
        return prob, presence.float(), out

    # -- training --------------------------------------------------------------------------------
    def _loss(self, out: Any, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from benchmark.training.losses import total_loss

        cfg = self.cfg
        weights = {"bce": cfg.bce_weight, "dice": cfg.dice_weight,
                   "presence": cfg.presence_weight, "bbox": cfg.bbox_weight}  # fmt: skip
        return total_loss(out, batch, weights)

    def _accumulate(self, key: str, value: torch.Tensor, n: int) -> None:
        total = self._sums.setdefault(key, [0.0, 0])
        total[0] += float(value.detach()) * n
        total[1] += n

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        n = batch["image"].shape[0]
        loss, parts = self._loss(self(batch["image"]), batch)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        for key, value in parts.items():
            self.log(f"train/{key}", value, on_step=False, on_epoch=True, batch_size=n)
        self._accumulate("train_loss", loss, n)
        return loss

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        if not params or not has_trainable_params(self.model):
            return None  # e.g. the `empty` baseline: fit() skips optimisation altogether
        cfg = self.cfg
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = total / max(self.trainer.max_epochs or cfg.epochs, 1)
        warmup = int(round(cfg.warmup_epochs * per_epoch))
        schedule = WarmupCosine(warmup, total, cfg.scheduler == "cosine")
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- validation / test -----------------------------------------------------------------------
    def _eval_step(self, batch: dict, stage: str) -> None:
        prob, presence, out = self.predict_orig(batch["image"])
        counts = confusion_counts_torch(prob > 0.5, batch["mask_orig"])
        self._rows.append({"index": batch["index"].long(), "counts": counts, "presence_prob": presence})
        if "mask" in batch:
            loss, _ = self._loss(out, batch)
            self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, batch_size=len(prob))
            self._accumulate(f"{stage}_loss", loss, len(prob))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_train_epoch_start(self) -> None:
        self._t0 = time.perf_counter()
        self._t_train = 0.0
        self._sums = {}

    def on_validation_epoch_start(self) -> None:
        self._rows = []
        if self._fitting():
            self._t_train = time.perf_counter() - self._t0

    def on_test_epoch_start(self) -> None:
        self._rows = []

    def _fitting(self) -> bool:
        return self.trainer.state.fn == "fit" and not self.trainer.sanity_checking

    def _epoch_end(self, stage: str) -> None:
        rows = inference.gather_rows(self, self._rows)
        self._rows = []
        result = score_rows(rows)
        self.last_eval = result
        for key in LOGGED_METRICS:
            self.log(f"{stage}/{key}", float(result["metrics"][key]), prog_bar=key == "kaggle_dice")
        if self.eval_dump and self.trainer.is_global_zero:
            inference.dump_eval(self.eval_dump, result)

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")
        if self._fitting():
            self._record_history()

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    def _global_mean(self, key: str) -> float:
        """Mean over all ranks of a per-sample quantity accumulated with ``_accumulate``."""
        total, count = self._sums.get(key, [0.0, 0])
        both = torch.tensor([total, float(count)], dtype=torch.float64, device=self.device)
        if self.trainer.world_size > 1:
            both = self.all_gather(both).reshape(-1, 2).sum(dim=0)
        return float(both[0] / both[1]) if both[1] > 0 else float("nan")

    def _record_history(self) -> None:
        h = self.history
        h["epoch"].append(int(self.current_epoch))
        h["train_loss"].append(self._global_mean("train_loss"))
        h["val_loss"].append(self._global_mean("val_loss"))
        h["val_kaggle_dice"].append(float(self.last_eval["metrics"]["kaggle_dice"]))
        h["epoch_time_s"].append(time.perf_counter() - self._t0)
        h["train_s"].append(self._t_train)
        h["train_images"].append(int(self._sums.get("train_loss", [0.0, 0])[1]) * self.trainer.world_size)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["nerve_bench_history"] = {k: list(v) for k, v in self.history.items()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("nerve_bench_history") or {}
        self.history = {k: list(saved.get(k, [])) for k in HISTORY_KEYS}


def _probs(out: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sigmoid of the mask logits (B,1,h,w) and of the presence logit (B,) when present."""
    if isinstance(out, dict):
        presence = out.get("presence")
        presence = torch.sigmoid(presence.float()).reshape(-1) if presence is not None else None
        return torch.sigmoid(out["mask"].float()), presence
    return torch.sigmoid(out.float()), None
