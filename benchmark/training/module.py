"""SegModule: the one LightningModule, wrapping any registry model by name.

Training: the loss of :mod:`benchmark.training.losses` (BCE + soft Dice on the mask; presence BCE and
L1 + GIoU box loss for multi-head models), AdamW with a linear warm-up then a cosine decay
(Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019; "SGDR", ICLR 2017),
stepped per optimiser step. Losses are averaged once, in ``torchmetrics.MeanMetric``s on the device
(logged as such), so a training step never waits for the host. Lightning's validation stage is the
protocol's inner selection set: probabilities are mapped back to 420x580 and kept as per-image
confusion counts in a :class:`~benchmark.scoring.kaggle_scores.KaggleScores` metric, which gathers
every rank's rows, drops the distributed sampler's repeats and scores identically on every rank, so
the metrics are exact whatever the number of devices. The outer fold is scored once, after training,
by :mod:`benchmark.evaluation.finalize` (the one scoring path). The per-epoch history lives in
:class:`benchmark.training.callbacks.EpochHistory`.

Only primitives go into the hyper-parameters (``config`` = ``TrainConfig.to_dict()``), so a
checkpoint rebuilds its module with ``SegModule.load_from_checkpoint`` and nothing else.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from lightning import LightningModule
from torchmetrics import MeanMetric, SumMetric

from benchmark.core.config import TrainConfig, apply_overrides
from benchmark.scoring.kaggle_scores import KaggleScores
from benchmark.scoring.metrics import NonFiniteError
from benchmark.training.callbacks import checkpoint_history, empty_history
from datamodules import geometry
from datamodules.errors import NerveBenchError
from models.info import has_trainable_params

if TYPE_CHECKING:
    from benchmark.training.losses import WorldSum

LOGGED_METRICS = ("kaggle_dice", "dice_positive", "iou", "presence_accuracy")
STAGES = ("train", "val")  # Lightning stage names; "val" is the inner selection set


def config_from_dict(config: dict | TrainConfig) -> TrainConfig:
    """A validated TrainConfig from a (checkpoint) dict; unknown keys raise ConfigError."""
    if isinstance(config, TrainConfig):
        return config
    return apply_overrides(TrainConfig(), dict(config))


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


def set_schedule_length(scheduler: Any, total_steps: int, epochs: int, cfg: TrainConfig) -> None:
    """Give a LambdaLR over :class:`WarmupCosine` its length, and the current step its learning rate.

    The rate is refreshed as LambdaLR itself computes it, so an uninterrupted run and a resumed one
    (whose scheduler state already holds these lengths) use bit-identical rates.
    """
    schedule = scheduler.lr_lambdas[0]
    per_epoch = total_steps / max(epochs, 1)
    schedule.warmup_steps = int(round(cfg.warmup_epochs * per_epoch))
    schedule.total_steps = max(total_steps, 1)
    for group, base_lr in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base_lr * schedule(scheduler.last_epoch)


class SegModule(LightningModule):
    """Wraps ``models.create(config["model"], **config["model_kwargs"])`` for training and scoring."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        self.cfg = config_from_dict(config)
        # kept in checkpoints; not sent to the logger, which has the config once already (W&B's run
        # config, flat; summary.json): W&B showed every field twice
        self.save_hyperparameters({"config": self.cfg.to_dict()}, logger=False)
        from models import create

        cfg = self.cfg
        self.model = create(cfg.model, in_channels=1, encoder_weights=cfg.encoder_weights, **cfg.model_kwargs)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # The history of the checkpoint this module was loaded from (training records it in EpochHistory).
        self.history: dict[str, list] = empty_history()
        self.last_eval: dict[str, Any] | None = None  # per-image rows + metrics of the last val/test
        self.scores = torch.nn.ModuleDict({"val": KaggleScores()})
        # NaN checks would cost a host sync per update; a NaN loss shows up as a NaN mean instead.
        self.loss_means = torch.nn.ModuleDict(
            {f"{s}_loss": MeanMetric(nan_strategy="disable") for s in STAGES}
        )
        # The box term of the validation loss is a mean over the epoch's positive images, as in
        # training over a global batch's: per batch it would depend on the eval batch and world size.
        self.box_sums = torch.nn.ModuleDict({k: SumMetric(nan_strategy="disable") for k in ("sum", "count")})

    # -- forward ---------------------------------------------------------------------------------
    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        state.pop("_compiled", None)  # compiled graphs do not pickle (ddp_spawn); rebuilt lazily
        return state

    def _net(self) -> torch.nn.Module:
        """The model, compiled when the recipe says so. Under DDP too: a frame dynamo compiles inside
        DDP's forward gets its DDPOptimizer, which splits the graph at the gradient buckets so the
        all-reduce overlaps the backward (``torch._dynamo.convert_frame``: the active DDP module).
        Compiling the DDP wrapper instead would trace Lightning's step, logging and metrics with it,
        and recompile at every step (dynamo guards on the metrics' update counts)."""
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
    def _loss(
        self, out: Any, batch: dict, world_sum: WorldSum | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from benchmark.training.losses import loss_terms

        cfg = self.cfg
        weights = {
            "bce": cfg.bce_weight,
            "dice": cfg.dice_weight,
            "presence": cfg.presence_weight,
            "bbox": cfg.bbox_weight,
        }
        return loss_terms(out, batch, weights, world_sum)

    def _world_sum(self) -> WorldSum | None:
        """Sums over the DDP processes for the losses normalised by a data-dependent count (the box
        loss), or None on one process. A bare all-reduce: Lightning's ``strategy.reduce`` adds a
        barrier, which on NCCL would make the host wait for the GPU at every step."""
        world = self.trainer.world_size if self._trainer is not None else 1
        if world == 1 or not torch.distributed.is_initialized():
            return None

        def world_sum(count: torch.Tensor) -> tuple[torch.Tensor, int]:
            torch.distributed.all_reduce(count)  # queued on the device's stream: no host wait
            return count, world

        return world_sum

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        n = batch["image"].shape[0]
        loss, parts = self._loss(self(batch["image"]), batch, self._world_sum())
        # Everything stays on the device. The epoch mean is the MeanMetric's (logged once per epoch
        # by on_train_epoch_end), not a second average of the step values by Lightning.
        # Not on the progress bar: the bar reads its metrics with .item() after every batch.
        self.add_loss("train", loss, n)
        self.log("train/loss", loss, on_step=True, on_epoch=False, batch_size=n)
        for key, value in parts.items():
            # sync_dist: the epoch mean over every process (one reduction per epoch, not per step)
            self.log(f"train/{key}", value, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        return loss

    def configure_optimizers(self) -> Any:
        """AdamW and a per-step warm-up/cosine schedule whose length :meth:`on_train_start` sets.

        Asking Lightning for the number of steps here (``estimated_stepping_batches``) would build
        and start the training loader before a resumed run has restored its random state, so the
        resumed epoch would shuffle and augment differently from an uninterrupted one.
        """
        params = [p for p in self.parameters() if p.requires_grad]
        if not params or not has_trainable_params(self.model):
            return None  # e.g. the `empty` baseline: fit() skips optimisation altogether
        cfg = self.cfg
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        schedule = WarmupCosine(0, 1, cfg.scheduler == "cosine")  # placeholder length
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        schedulers = self.lr_schedulers()
        if schedulers is not None:
            total = int(self.trainer.estimated_stepping_batches)  # the loader exists (and is restored) now
            set_schedule_length(schedulers, total, self.trainer.max_epochs or self.cfg.epochs, self.cfg)

    # -- validation / test -----------------------------------------------------------------------
    def _eval_step(self, batch: dict, stage: str) -> None:
        prob, presence, out = self.predict_orig(batch["image"])
        self.scores[stage].update(prob, batch["mask_orig"], batch["index"], presence)
        if "mask" in batch:
            loss, parts = self._loss(out, batch)
            if "bbox" in parts:  # the batch's box mean out, its sum and positives kept for the epoch
                from benchmark.training.losses import box_positives

                count = box_positives(batch).sum().float()
                loss = loss - self.cfg.bbox_weight * parts["bbox"]
                self.box_sums["sum"].update(parts["bbox"] * count.clamp(min=1))
                self.box_sums["count"].update(count)
            self.add_loss(stage, loss, len(prob))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_train_epoch_start(self) -> None:
        self.loss_means["train_loss"].reset()

    def on_train_epoch_end(self) -> None:
        self.log("train/loss_epoch", self.epoch_loss("train"))  # one host transfer per epoch

    def on_validation_epoch_start(self) -> None:
        self._start("val")

    def _start(self, stage: str) -> None:
        self.scores[stage].reset()
        self.loss_means[f"{stage}_loss"].reset()
        for metric in self.box_sums.values():
            metric.reset()

    def _epoch_end(self, stage: str) -> None:
        """Gather, de-duplicate and score this stage's rows (a collective: every rank calls it)."""
        try:
            result = self.scores[stage].compute()
        except NonFiniteError:  # every rank scores the same gathered rows, so every rank stops
            raise NerveBenchError(
                f"training diverged by epoch {self.current_epoch}: the network's outputs are NaN or infinite "
                f"(train loss {self.epoch_loss('train'):.4g}); lower lr ({self.cfg.lr:g}), or train in "
                "precision 32"
            ) from None
        self.last_eval = result
        for key in LOGGED_METRICS:
            self.log(f"{stage}/{key}", float(result["metrics"][key]), prog_bar=key == "kaggle_dice")
        self.log(f"{stage}/loss", self.epoch_loss(stage))

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def add_loss(self, stage: str, loss: torch.Tensor, n: int) -> None:
        """Count a batch's mean ``loss`` for each of its ``n`` images. Not ``update(loss, n)``: with
        ``nan_strategy="disable"`` torchmetrics 1.9 replaces the weight by 1 (a short last batch
        would count as a full one), and a Python weight becomes a host-to-device copy that waits
        for the GPU on every step."""
        self.loss_means[f"{stage}_loss"].update(loss.detach().expand(n))

    def epoch_loss(self, stage: str) -> float:
        """Mean loss per image of this stage's current epoch over all ranks (NaN before any batch)."""
        metric = self.loss_means[f"{stage}_loss"]
        if metric.update_count == 0:
            return math.nan
        mean = float(metric.compute())
        if stage == "train" or self.box_sums["count"].update_count == 0:
            return mean
        total, count = (float(self.box_sums[k].compute()) for k in ("sum", "count"))
        return mean + self.cfg.bbox_weight * total / max(count, 1.0)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = checkpoint_history(checkpoint)


def _probs(out: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sigmoid of the mask logits (B,1,h,w) and of the presence logit (B,) when present."""
    if isinstance(out, dict):
        presence = out.get("presence")
        presence = torch.sigmoid(presence.float()).reshape(-1) if presence is not None else None
        return torch.sigmoid(out["mask"].float()), presence
    return torch.sigmoid(out.float()), None
