"""Reading, writing and validating nerve-bench checkpoints: one home for train, evaluate and predict.

Every read uses ``torch.load(weights_only=True)``, Lightning's resume included (``SafeCheckpointIO``):
a checkpoint is data, never code, so a crafted file cannot run anything. Everything a resume needs
(hyper-parameters, optimiser, schedule, loop and callback states, random streams) is stored as plain
tensors, dicts, lists, numbers and strings. Every write goes to a unique temporary name, is fsynced
and renamed into place (``benchmark.core.files.atomic_path``), so a kill mid-write leaves the
previous file intact. Problems with a checkpoint are one line naming the file.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from benchmark.core.config import ConfigError, TrainConfig
from benchmark.core.files import atomic_path
from benchmark.core.summary import package_version
from benchmark.training.callbacks import HISTORY_CKPT_KEY, empty_history
from benchmark.training.module import SegModule, config_from_dict
from datamodules.errors import NerveBenchError
from models.registry import ModelError

if TYPE_CHECKING:
    from benchmark.scoring.postprocess import PostProcess

BEST, LAST = "best.ckpt", "last.ckpt"

CKPT_KEY = "nerve_bench"


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with atomic, durable writes and ``weights_only=True`` reads.

    Lightning's own writer goes through an fsspec transaction whose temporary file lives in the
    system temp directory: the final "move" is then a copy onto the checkpoint path, not a rename,
    and nothing is fsynced.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError("SafeCheckpointIO takes no storage_options")
        save_torch(checkpoint, Path(path))

    def load_checkpoint(
        self, path: Any, map_location: Callable | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location=map_location or _cpu, weights_only=True)


def _cpu(storage: Any, location: str) -> Any:
    return storage


def save_plain_checkpoint(module: SegModule, path: Path) -> None:
    """A minimal Lightning-loadable checkpoint of an untrained module (models with no parameters)."""
    import lightning

    ckpt = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": lightning.__version__,
        HISTORY_CKPT_KEY: empty_history(),
    }
    save_torch(ckpt, path)


def save_torch(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` atomically, through an unbuffered file handle: a full disk is then
    ``OSError(ENOSPC)`` naming ``path`` (torch's own file writer reports it as
    ``RuntimeError: [enforce fail at inline_container.cc:672] unexpected pos``)."""
    with atomic_path(path) as tmp, open(tmp, "wb", buffering=0) as fh:
        torch.save(obj, fh)


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    if not line:
        return type(exc).__name__
    return f"{type(exc).__name__}: {line[:limit]}{'...' if len(line) > limit else ''}"


# Paragraphs of torch's weights-only refusal that say nothing about this file.
_BOILERPLATE = (
    "Weights only load failed",
    "Please use",
    "Check the documentation",
    "In PyTorch",
    "Re-running",
)


def load_problem(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in a few words: torch's own text runs to 6+ lines,
    and the useful one (``unsupported GLOBAL posix.system``) comes after a paragraph of advice."""
    text = str(exc)
    if "Weights only load failed" in text or "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[-1]
        lines = [" ".join(line.split()) for line in text.splitlines()]
        useful = [line for line in lines if line and not line.startswith(_BOILERPLATE)]
        detail = (useful[0] if useful else "objects outside the allowlist").removeprefix("Trying to load ")
        for tail in (" Please use", " Check the documentation"):
            detail = detail.split(tail, 1)[0]
        return f"refused by the weights-only loader: {detail[:200]}"
    return f"empty, truncated or not a PyTorch file: {_first_line(exc, 80)}"


def load_plain(path: Path, mmap: bool = False) -> Any:
    """``torch.load`` onto the CPU of plain data only (``weights_only``: unpickling runs no code).
    ``mmap`` leaves the tensors on disk, for a reader after the epoch or the history alone. A file
    pickled by something else than torch.save gets torch's two-line protocol warning no more: it
    is read or refused (one line) all the same."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def read_checkpoint(path: Path) -> dict:
    """A nerve-bench checkpoint dict; NerveBenchError (one line naming the file) when missing or invalid."""
    if not path.is_file():
        raise NerveBenchError(f"{path}: checkpoint not found")
    try:
        ckpt = load_plain(path)
    except Exception as exc:  # truncated file, not a checkpoint, objects outside the weights-only allowlist
        raise NerveBenchError(f"{path}: not a readable checkpoint ({load_problem(exc)})") from None
    hyper = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hyper, dict) or "state_dict" not in ckpt or not isinstance(hyper.get("config"), dict):
        raise NerveBenchError(
            f"{path}: not a nerve-bench checkpoint (no state_dict / hyper_parameters.config mapping)"
        )
    if not isinstance(ckpt.get(CKPT_KEY) or {}, dict):
        raise NerveBenchError(f"{path}: damaged checkpoint ({CKPT_KEY} is not a mapping)")
    return ckpt


def check_state_dict(path: Path, module: torch.nn.Module, state_dict: dict[str, Any]) -> None:
    """One line when the weights do not fit the model: counts of missing, unexpected, mis-shaped keys.

    (PyTorch's own message lists every key: some 80 lines for a changed width.)
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [k for k in own if k in state_dict and getattr(state_dict[k], "shape", None) != own[k].shape]
    if missing or unexpected or shapes:
        first = (missing or unexpected or shapes)[0]
        raise NerveBenchError(
            f"{path}: cannot rebuild the model: its weights do not fit ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(shapes)} mis-shaped keys; first: {first})"
        )
    # NaN weights (a diverged run's, a damaged file's) give NaN probabilities, which threshold to
    # empty masks: predict wrote an all-empty submission and exited 0, evaluate died in a traceback.
    # An infinite one can be meant: the empty floor's logit -inf.
    floats = {k: t for k, t in state_dict.items() if torch.is_tensor(t) and t.is_floating_point()}
    bad = [k for k, t in floats.items() if t.isnan().any()]
    if bad:
        raise NerveBenchError(
            f"{path}: {len(bad)} weight tensor(s) hold NaN (first: {bad[0]}): a diverged run's or a "
            "damaged checkpoint"
        )


def rebuild_module(path: Path, config: dict[str, Any], ckpt: dict[str, Any]) -> SegModule:
    """``SegModule(config)`` with the checkpoint's weights; one line naming ``path`` when impossible
    (for a model no longer registered, the package that registered it when the run was scored)."""
    source = (ckpt.get(CKPT_KEY) or {}).get("model_source")
    try:
        module = SegModule(config)
    except ModelError as exc:
        if not isinstance(source, dict) or not str(exc).startswith("unknown model"):
            raise NerveBenchError(f"{path}: cannot rebuild the model ({_first_line(exc, 240)})") from None
        made = f"{config.get('model')!r} was registered by {source.get('package')} {source.get('version')}"
        here = package_version(str(source.get("package")))
        why = (
            "which is not installed here"
            if here == "unknown"
            else f"and {here}, installed here, has no such model"
        )
        raise NerveBenchError(f"{path}: cannot rebuild the model: {made}, {why}") from None
    except (ConfigError, RuntimeError, TypeError, ValueError) as exc:
        raise NerveBenchError(f"{path}: cannot rebuild the model ({_first_line(exc, 240)})") from None
    check_state_dict(path, module, ckpt["state_dict"])
    module.load_state_dict(ckpt["state_dict"])
    return module


def load_checkpoint_module(path: Path, for_inference: bool = True) -> tuple[SegModule, dict]:
    """The module of a checkpoint (on CPU, eval mode) and the raw checkpoint dict.

    ``for_inference`` disables compilation and pretrained downloads: the weights come from the file.
    """
    ckpt = read_checkpoint(path)
    config = dict(ckpt["hyper_parameters"]["config"])
    if for_inference:
        config.update(encoder_weights=None, compile=False)
    module = rebuild_module(path, config, ckpt)
    module.on_load_checkpoint(ckpt)
    return module.eval(), ckpt


def postprocess_of(path: Path, ckpt: dict) -> PostProcess:
    """The checkpoint's tuned PostProcess; the defaults (with the run's tta) when it has none."""
    from benchmark.scoring.postprocess import PostProcess

    saved = (ckpt.get(CKPT_KEY) or {}).get("postprocess")
    if saved is None:
        print(f"warning: {path} has no tuned post-processing; using the defaults", file=sys.stderr)
        return PostProcess(tta=bool(ckpt["hyper_parameters"]["config"].get("tta", False)))
    try:
        return PostProcess.from_dict(saved)
    except (ConfigError, TypeError, ValueError) as exc:
        raise NerveBenchError(f"{path}: bad stored post-processing ({exc})") from None


def scoring_precision_of(ckpt: dict, device: torch.device) -> str:
    """The precision ``evaluate`` and ``predict`` score a checkpoint in on ``device``: on a GPU, the
    one its run was scored in (finalize records it: "auto" is resolved by the run's accelerator, so
    a CPU-trained run stays float32 on a GPU); float32 on a CPU, as CPU runs score. A checkpoint from
    before the record: the recipe's precision resolved for a GPU."""
    from benchmark.training.device import run_scoring_precision

    recorded = (ckpt.get(CKPT_KEY) or {}).get("precision")
    if recorded and device.type == "cuda":
        return str(recorded)
    return run_scoring_precision(ckpt["hyper_parameters"]["config"].get("precision", "auto"), "gpu", device)


def tuned_in(ckpt: dict) -> str:
    """The precision a checkpoint's post-processing was tuned in, as finalize recorded it."""
    return str((ckpt.get(CKPT_KEY) or {}).get("precision") or "unknown (a checkpoint from before the record)")


def store_in_checkpoint(path: Path, ckpt: dict, extra: dict) -> None:
    """Add the ``nerve_bench`` block (post-processing, config, metrics) to a checkpoint, atomically."""
    ckpt[CKPT_KEY] = extra
    save_torch(ckpt, path)


def resume_checkpoint(ckpt_dir: Path, cfg: TrainConfig) -> Path | None:
    """``last.ckpt`` when it belongs to this config; ConfigError when it belongs to another one.

    An unreadable ``last.ckpt`` (truncated by a crash or a full disk, or holding anything but plain
    data) is removed with one warning line, and the run starts again from scratch.
    """
    last = ckpt_dir / LAST
    if not last.is_file():
        return None
    try:
        ckpt = load_plain(last)
        saved = dict(ckpt["hyper_parameters"]["config"])
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with it, it cannot be resumed from
        print(
            f"warning: {last}: unreadable ({load_problem(exc)}); restarting the run from scratch",
            file=sys.stderr,
        )
        last.unlink(missing_ok=True)
        return None
    try:
        saved_hash = config_from_dict(saved).hash()
    except ConfigError as exc:  # e.g. written by another version of the suite
        raise ConfigError(f"{last}: checkpoint of a different config ({exc})") from None
    if saved_hash != cfg.hash():
        raise ConfigError(
            f"{last}: checkpoint of a different config (hash {saved_hash} != {cfg.hash()});"
            " use another output directory or delete it"
        )
    # Lightning's own word on resuming is a warning that the directory is not empty. Rank 0 speaks.
    if getattr(rank_zero_only, "rank", 0) == 0:  # set by Lightning from RANK at import
        print(
            f"resuming {cfg.run_name()} from {last} (after epoch {int(ckpt.get('epoch', 0)) + 1})",
            file=sys.stderr,
        )
    return last
