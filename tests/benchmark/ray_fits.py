"""The fits the Ray executor tests hand to ``ray_grid.run_grid``: each runs inside a Ray worker,
which imports it by this module's path (the repository root, its cwd, is on the workers' path), and
the files they leave for the tests to read."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def epoch_log(results: Path) -> list[str]:
    path = results / "epochs.log"
    return path.read_text().split() if path.is_file() else []


def _fit(cfg, data_dir, out_dir, preloaded, extra=()):
    """pipeline.fit that appends ``run@epoch`` to ``<results>/epochs.log`` after every trained epoch:
    a repeated entry is an epoch trained twice."""
    from lightning.pytorch.callbacks import Callback

    from benchmark.pipeline import fit

    log = Path(out_dir).parent.parent / "epochs.log"

    class EpochLog(Callback):
        def on_train_epoch_end(self, trainer, module):
            with open(log, "a") as fh:
                fh.write(f"{cfg.run_name()}@{trainer.current_epoch}\n")

    return fit(cfg, data_dir, out_dir, callbacks=[EpochLog(), *extra], preloaded=preloaded)


def logging_fit(cfg, data_dir, out_dir, preloaded=None):
    return _fit(cfg, data_dir, out_dir, preloaded)


def dying_fit(cfg, data_dir, out_dir, preloaded=None):
    """Kills its worker process when epoch 1 starts (last.ckpt of epoch 0 is on disk), once."""
    from lightning.pytorch.callbacks import Callback

    flag = Path(out_dir).parent.parent / "died-once"

    class Die(Callback):
        def on_train_epoch_start(self, trainer, module):
            if trainer.current_epoch == 1 and not flag.exists():
                flag.write_text(str(os.getpid()))
                os._exit(1)

    return _fit(cfg, data_dir, out_dir, preloaded, [Die()])


def probe_fit(cfg, data_dir, out_dir, preloaded=None):
    """Trains nothing: records which worker process ran the task and which GPUs it sees."""
    import ray

    seen = {"pid": os.getpid(), "visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "ids": ray.get_gpu_ids()}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "probe.json").write_text(json.dumps(seen, default=str))
    return {}


RELEASE = "release"  # in the results directory: the test is over, a run still waiting may end
BOUND_S = 600.0  # a bound on waiting for another process's event, never a timing


def poll(done, within_s: float = BOUND_S) -> bool:
    deadline = time.monotonic() + within_s
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def full_disk_fit(cfg, data_dir, out_dir, preloaded=None):
    """Fold 1 finds the disk full (as Lightning reports a failed checkpoint write) once another run is
    in flight. One other run records its process and stays in flight until the test releases it (so
    only a cancellation ends it early: no fixed sleep to race); any further one returns at once, so
    fold 1 gets one of the two CPUs whatever order Ray starts the runs in."""
    results = Path(out_dir).parent.parent
    if cfg.fold == 1:
        poll(lambda: list(Path(out_dir).parent.glob("*/pid")))  # workers start unevenly
        try:
            raise OSError(28, "No space left on device", str(Path(out_dir) / "checkpoints" / "last.ckpt"))
        except OSError as exc:
            raise RuntimeError("checkpoint write failed") from exc
    try:  # the first of the others to start is the one in flight (O_EXCL: exactly one)
        os.close(os.open(results / "in-flight", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return {}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "pid").write_text(str(os.getpid()))
    # Uncancelled, the grid would return only after this, and the worker would live on.
    poll(lambda: (results / RELEASE).exists())
    return {}
