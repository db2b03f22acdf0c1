"""More than one process: a 2-rank DDP step and a Ray grid of 4 tiny runs sharing devices.

DDP: two ranks (NCCL on two GPUs; gloo on two CPU processes as the CPU stand-in) train the suite's
``SegModule`` through ``build_trainer`` for a few steps; after the step every rank must hold
bit-identical weights (DDP averages the gradients, so any difference is a broken all-reduce).
``ddp_spawn``, not ``ddp``: the default strategy re-launches the command line, which would run the
whole doctor again on rank 1.

Ray: four runs of a tiny U-Net through the executor's public ``run_grid`` at ``gpus_per_run: 0.5``
(two runs per GPU); on a CPU box a local Ray without GPUs, tasks asking for none. Every run must
finish with a complete summary whose inference columns were measured on a device of its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from lightning.pytorch.callbacks import Callback

from benchmark.doctor.report import Finding, Skip
from benchmark.doctor.settings import DoctorSettings, train_config

if TYPE_CHECKING:
    import lightning.pytorch as pl

TINY_UNET = {"base_width": 8, "depth": 2}
DDP_STEPS = 2


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 over every parameter's bytes, in name order."""
    h = hashlib.sha256()
    for name, p in sorted(module.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class Digest(Callback):
    """Each rank writes its weights' digest after training (ddp_spawn returns only rank 0's).
    At module level: ddp_spawn pickles the Trainer's callbacks into the new processes."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        info = {"digest": weights_digest(pl_module), "device": str(pl_module.device)}
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(info))


def ddp_step(s: DoctorSettings, dev: torch.device, data_dir: Path, work: Path) -> Finding:
    """Two ranks, DDP_STEPS optimizer steps; the ranks' weights must agree bit for bit."""
    from benchmark.speed import restore_global_torch_state
    from benchmark.training.module import SegModule
    from benchmark.training.trainer import build_trainer, make_datamodule

    if dev.type == "cuda" and torch.cuda.device_count() < 2:
        raise Skip(f"{torch.cuda.device_count()} GPU: a 2-GPU DDP step needs two")
    cfg = train_config("unet", s, dev, model_kwargs=TINY_UNET, limit_train_batches=DDP_STEPS, devices=2)
    out = work / "ddp"
    out.mkdir(parents=True)
    backend = "NCCL" if dev.type == "cuda" else "gloo"
    start = time.perf_counter()
    with restore_global_torch_state():
        trainer = build_trainer(
            cfg,
            out,
            callbacks=[Digest(out)],
            strategy="ddp_spawn",
            max_steps=DDP_STEPS,
            limit_val_batches=0,
            enable_checkpointing=False,
            logger=False,
        )
        trainer.fit(SegModule(cfg.to_dict()), datamodule=make_datamodule(cfg, data_dir))
    seconds = time.perf_counter() - start
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    if ranks[0]["digest"] != ranks[1]["digest"]:
        raise RuntimeError(
            f"rank weights differ after {DDP_STEPS} DDP steps ({ranks[0]['device']}, {ranks[1]['device']})"
        )
    devices = ", ".join(r["device"] for r in ranks)
    return Finding(
        f"2 ranks ({backend}; {devices}), {DDP_STEPS} steps in {seconds:.1f} s; "
        "weights bit-identical across ranks",
        {"backend": backend, "seconds": seconds},
    )


def ray_grid_check(s: DoctorSettings, dev: torch.device, data_dir: Path, work: Path) -> Finding:
    """Four tiny runs through the Ray executor, two per GPU (none on a CPU box)."""
    from benchmark import ray_grid
    from benchmark.core.summary import read_summary

    cuda = dev.type == "cuda"
    base = train_config("unet", s, dev, model_kwargs=TINY_UNET)
    grid = [dataclasses.replace(base, fold=fold, seed=seed) for fold in (0, 1) for seed in (0, 1)]
    settings = ray_grid.RaySettings(gpus_per_run=0.5 if cuda else 0.0, cpus_per_run=1.0)
    results = work / "ray"
    start = time.perf_counter()
    outcomes = ray_grid.run_grid(grid, data_dir, results, settings)
    seconds = time.perf_counter() - start
    failed = [o for o in outcomes if o.status != "trained"]
    if failed:
        raise RuntimeError(
            f"{len(failed)}/4 runs not trained: {failed[0].run} {failed[0].status} {failed[0].error}"
        )
    measured = [read_summary(results / "runs" / c.run_name())["cost"]["measured"]["inference"] for c in grid]
    pending = sum(m == "pending" for m in measured)
    if pending:
        raise RuntimeError(f"{pending}/4 runs still have their inference costs pending after the grid")
    share = f"{settings.gpus_per_run:g} GPU each" if cuda else "no GPU (CPU tasks)"
    how = sorted(set(measured))
    return Finding(
        f"4/4 runs trained in {seconds:.1f} s at {share}; inference costs measured: {', '.join(how)}",
        {"seconds": seconds, "gpus_per_run": settings.gpus_per_run, "inference_measured": how},
    )
