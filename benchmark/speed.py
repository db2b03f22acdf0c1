"""Throughput of the suite's training path next to a plain PyTorch loop and a compute ceiling.

For each model, in one process, on the same architecture and the same data:

(a) ``suite``: the suite's own training (``SegModule`` + its loss/optimiser under a Lightning
    ``Trainer`` built by ``benchmark.training.trainer.build_trainer``): bf16-mixed, channels_last and the GPU
    cache + torch-side augmentation on a GPU; fp32 with the DataModule's loader on CPU;
(b) ``plain``: a standard fp32 loop, ``DataLoader`` workers decoding the tifs with tifffile and
    augmenting with albumentations at every step;
(c) ``ceiling``: a bare loop on batches already on the device (the GPU cache), no augmentation,
    in the suite's precision and memory format: what the model's compute alone allows;
(d) batched inference img/s and (e) batch-1 latency from :func:`benchmark.evaluation.costs.measure_inference`,
    the same code that fills the leaderboard's speed columns;
(f) with ``runtime="onnx"``: the same model exported to ONNX and run by onnxruntime (fp32), img/s
    at the same batch size and batch-1 latency, timed the same way (``benchmark.export.onnx_inference``).

Every training path is clocked the same way: the device is synchronised once when the warm-up
steps are done and once after the last timed step, never in between, so queued work may overlap
the next step's data loading in (a), (b) and (c) alike and none of the three pays a per-step
synchronisation the others do not. Images/second counts training images per wall-clock second of
the timed steps, data loading included, so (a)/(b) shows what the suite's data path buys and
(a)/(c) how close to the compute bound it runs. (a) runs under the recipe's
``deterministic`` setting (``SpeedSettings.deterministic``, on by default as in every config);
(b) and (c) under PyTorch's defaults. A model without trainable parameters (``empty``) has no
training figures (``None``), only inference.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from benchmark.core.environ import environ
from benchmark.evaluation.costs import measure_inference
from benchmark.speed_loops import ceiling_train_img_s, fresh_model, plain_train_img_s, rate
from benchmark.speed_loops import workers as loader_workers
from benchmark.training.device import kept_determinism_flags, release_run_memory, resolve_device, synchronize

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from benchmark.core.config import TrainConfig
    from datamodules.gpu_augment import GpuCache

RESULT_KEYS = ("model", "device", "image_size", "batch_size", "suite_train_img_s", "plain_train_img_s",
               "ceiling_train_img_s", "infer_img_s", "latency_ms", "ratio_suite_vs_plain",
               "ratio_suite_vs_ceiling")  # fmt: skip
# With runtime="onnx": onnxruntime's figures beside torch's (d) and (e), from benchmark.export.
ONNX_KEYS = ("onnx_provider", "onnx_infer_img_s", "onnx_latency_ms", "ratio_onnx_vs_torch")
RUNTIMES = ("torch", "onnx")


@dataclass(frozen=True)
class SpeedSettings:
    image_size: int = 256
    batch_size: int = 64
    steps: int = 20
    warmup: int = 3
    device: str = "auto"
    compile: bool = False
    workers: int | None = None  # plain loop's DataLoader workers; None: 8 on GPU, 0 on CPU
    runtime: str = "torch"  # "onnx": also onnxruntime's inference img/s and latency (ONNX_KEYS)
    deterministic: bool = True  # the suite's Trainer setting (the recipe's default)
    model_kwargs: dict = field(default_factory=dict)  # model name -> factory kwargs (tiny models)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.warmup < 0 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be at least 1, warmup at least 0")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"--workers must be 0 or more, got {self.workers}")


def _suite_config(model: str, s: SpeedSettings, dev: torch.device) -> TrainConfig:
    from benchmark.core.config import TrainConfig

    cuda = dev.type == "cuda"
    return TrainConfig(
        model=model,
        image_size=s.image_size,
        batch_size=s.batch_size,
        epochs=10_000,
        warmup_epochs=0.0,
        accelerator="gpu" if cuda else "cpu",
        precision="auto",
        gpu_cache=cuda,
        channels_last=cuda,
        compile=s.compile,
        logger="none",
        progress_bar=False,
        num_workers=loader_workers(s, dev),
        deterministic=s.deterministic,
        model_kwargs=dict(s.model_kwargs.get(model, {})),
    )


# -- data ------------------------------------------------------------------------------------------
def synthetic_data(out: Path, batch_size: int) -> Path:
    """A synthetic Kaggle layout with ~8 training batches per epoch (so epoch turn-over is amortised)."""
    from datamodules.synth import generate

    per_subject = max(4, math.ceil(10 * batch_size / 6))
    generate(out, subjects=6, per_subject=per_subject, n_test=1, seed=0)
    return out


def build_cache(data_dir: Path, size: int, dev: torch.device) -> GpuCache:
    """The training images and masks resized to ``size`` x ``size``, held on ``dev`` (for (c))."""
    from datamodules import geometry
    from datamodules.decoded_cache import load_train_shared
    from datamodules.gpu_augment import GpuCache

    train = load_train_shared(data_dir)  # the node's decoded copy: decoded once, not at every call
    images = np.stack([geometry.prepare(im, "resize", size) for im in train.images])
    masks = np.stack([geometry.prepare(m, "resize", size, is_mask=True) for m in train.masks])
    return GpuCache(images, masks, dev)


# -- (a) the suite -----------------------------------------------------------------------------------
def _timer_callback(warmup: int, steps: int) -> Any:
    from lightning.pytorch.callbacks import Callback

    class StepTimer(Callback):
        """Clock from the end of the last warm-up batch to the end of the last batch, synchronising
        only at those two points (as :func:`benchmark.speed_loops.timed_loop` does for the bare loops)."""

        def __init__(self) -> None:
            self.seen, self.images, self.start, self.end = 0, 0, 0.0, 0.0

        def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_: Any) -> None:
            if self.seen == warmup == 0:  # no warm-up: the first step is timed from its start
                synchronize(pl_module.device)
                self.start = time.perf_counter()

        def on_train_batch_end(
            self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            self.seen += 1
            if self.seen == warmup:
                synchronize(pl_module.device)
                self.start = time.perf_counter()
            elif warmup < self.seen <= warmup + steps:
                self.images += int(batch["image"].shape[0])  # a shape: no device sync
                if self.seen == warmup + steps:
                    synchronize(pl_module.device)
                    self.end = time.perf_counter()

    return StepTimer()


def suite_train_img_s(model: str, data_dir: Path, s: SpeedSettings, dev: torch.device, work: Path) -> float:
    """(a) img/s of the suite's own training step under its Trainer and DataModule."""
    from benchmark.training.module import SegModule
    from benchmark.training.trainer import build_trainer, make_datamodule

    torch.manual_seed(0)
    cfg = _suite_config(model, s, dev)
    timer = _timer_callback(s.warmup, s.steps)
    # The suite's own Trainer settings (precision, determinism, accelerator), minus checkpoints/logging;
    # the context undoes the deterministic-algorithm switch it flips for the whole process.
    with restore_global_torch_state():
        trainer = build_trainer(
            cfg,
            work,
            max_steps=s.warmup + s.steps,
            limit_val_batches=0,
            callbacks=[timer],
            enable_checkpointing=False,
            logger=False,
            devices=1,
        )
        trainer.fit(SegModule(cfg.to_dict()), datamodule=make_datamodule(cfg, data_dir))
    return rate(timer.images, timer.end - timer.start)


@contextlib.contextmanager
def restore_global_torch_state() -> Iterator[None]:
    """Undo process-wide switches a Trainer flips, so (b) and (c) run with PyTorch's defaults."""
    quiet = logging.getLogger("lightning.pytorch")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # no "GPU available" banners in the speed output
    try:
        with kept_determinism_flags():
            yield
    finally:
        quiet.setLevel(level)


# -- all together ------------------------------------------------------------------------------------
def measure_model(model: str, data_dir: Path, cache: GpuCache, s: SpeedSettings, work: Path) -> dict:
    """Every figure (a)-(e) for one model, as a RESULT_KEYS dict (training figures ``None`` when the
    model has nothing to train)."""
    from benchmark.training.device import resolve_precision
    from models.info import has_trainable_params

    dev = resolve_device(s.device)
    precision = resolve_precision("auto", "gpu" if dev.type == "cuda" else "cpu")
    # Built on the CPU (measure_inference moves it) so it holds no device memory while (a)-(c) run.
    net = fresh_model(model, torch.device("cpu"), dev.type == "cuda", s.model_kwargs.get(model))
    suite = plain = ceiling = None
    if has_trainable_params(net):
        suite = suite_train_img_s(model, data_dir, s, dev, work / model.replace(":", "-"))
        plain = plain_train_img_s(model, data_dir, s, dev)
        ceiling = ceiling_train_img_s(model, cache, s, dev)
    infer = measure_inference(net, (s.image_size, s.image_size), s.batch_size, dev, precision=precision)
    row = {
        "model": model,
        "device": str(dev),
        "image_size": s.image_size,
        "batch_size": s.batch_size,
        "suite_train_img_s": suite,
        "plain_train_img_s": plain,
        "ceiling_train_img_s": ceiling,
        "infer_img_s": infer["infer_img_s"],
        "latency_ms": infer["latency_ms"],
        "ratio_suite_vs_plain": ratio(suite, plain),
        "ratio_suite_vs_ceiling": ratio(suite, ceiling),
    }
    if s.runtime == "onnx":
        from benchmark.export import onnx_inference

        onnx = onnx_inference(net, (s.image_size, s.image_size), s.batch_size, dev)
        # a ratio of onnxruntime on the CPU to torch on a GPU would compare the devices, not runtimes
        same = onnx["onnx_provider"] == dev.type
        row.update(
            onnx, ratio_onnx_vs_torch=onnx["onnx_infer_img_s"] / infer["infer_img_s"] if same else None
        )
    return row


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing."""
    return None if a is None or b is None else a / b


def run_speed(models: list[str], settings: SpeedSettings, data_dir: str | Path | None = None) -> list[dict]:
    """Measure every model on ``data_dir`` (a Kaggle layout), or on synthetic data made in a temp dir,
    whose decoded frames are cached there too: in the user's cache the entry of a layout that is
    gone would stay for the 14 days before it is pruned."""
    from datamodules.decoded_cache import CACHE_ENV

    with tempfile.TemporaryDirectory(prefix="nerve-bench-speed-") as tmp:
        work = Path(tmp)
        own = {} if data_dir else {CACHE_ENV: str(work / "decoded-cache")}
        with environ(own):
            data = Path(data_dir) if data_dir else synthetic_data(work / "data", settings.batch_size)
            cache = build_cache(data, settings.image_size, resolve_device(settings.device))
            rows = []
            for model in models:
                rows.append(measure_model(model, data, cache, settings, work))
                release_run_memory(settings.compile)  # its device memory and compiled graphs
        return rows


def format_table(rows: list[dict]) -> str:
    """A fixed-width text table of the figures and the two ratios."""
    head: tuple[str, ...] = ("model", "device", "size", "batch", "suite img/s", "plain img/s",
            "ceiling img/s", "infer img/s", "latency ms", "suite/plain", "suite/ceiling")  # fmt: skip
    keys: tuple[str, ...] = RESULT_KEYS
    if rows and all(k in r for r in rows for k in ONNX_KEYS):
        head += ("onnx on", "onnx img/s", "onnx latency ms", "onnx/torch")
        keys += ONNX_KEYS
    lines = [head]
    for r in rows:
        lines.append(tuple(str(r[k]) if isinstance(r[k], (str, int)) else fmt(r[k]) for k in keys))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths)))
        for line in lines
    )


def fmt(value: float | None) -> str:
    """A figure with 2 decimals below 100, none above; ``n/a`` for a missing or non-finite one."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
