"""Test-set inference: one or several checkpoints -> mask tifs, overlays and a Kaggle submission.

Each checkpoint is rebuilt from primitives only (its ``hyper_parameters["config"]`` names the
registry model; the state dict is loaded into a fresh :class:`SegModule`), so no pickled module is
ever executed. Every checkpoint predicts at its own network size and resize mode, and the
probabilities are mapped back to 420x580 with ``geometry.restore`` before combining.

Ensembling rule (several checkpoints, e.g. the K fold models of one architecture): the 420x580
foreground probabilities and the presence probabilities are AVERAGED over checkpoints, then ONE
post-processing is applied whose numeric parameters (threshold, min_area, presence_tau) are the
means of the checkpoints' validation-tuned parameters (min_area rounded); non-numeric fields come
from the first checkpoint. Checkpoints whose presence gates score different things (a presence
head's probability, the maximum pixel probability) are refused together: their mean and the mean
of their tuned cut-offs would compare nothing tuned. Averaging keeps the probabilities on the
scale every threshold was tuned on, and for a single checkpoint the rule is exactly its own tuned
post-processing. Averaging probabilities before thresholding is the usual fold ensemble (it
reduces variance; cf. Lakshminarayanan et al., "Deep Ensembles", NeurIPS 2017).

TTA: ``tta=None`` follows each checkpoint (the ``tta`` its post-processing was tuned with);
True/False forces horizontal-flip averaging on or off for every checkpoint.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from benchmark.core.files import atomic_path, atomic_write, check_output_dir, check_output_file
from benchmark.training.device import resolve_device, scoring_precision
from datamodules import geometry
from datamodules.errors import DataError, NerveBenchError, collect, raise_all
from datamodules.io import read_tif, write_tif
from datamodules.kaggle import layout_paths
from datamodules.rle import KAGGLE_SHAPE, encode

if TYPE_CHECKING:
    from benchmark.scoring.postprocess import PostProcess
    from benchmark.training.module import SegModule

_NUMERIC = re.compile(r"[0-9]+\Z")  # ASCII digits only: "\d" also takes other scripts' digits
_MEANED = ("threshold", "min_area", "presence_tau")


@dataclass
class LoadedModel:
    path: Path
    module: Any  # SegModule in eval mode on the target device
    post: Any  # PostProcess tuned on this checkpoint's validation fold
    precision: str


def _id_key(stem: str) -> tuple:
    """Numeric ids in numeric order (Kaggle's), then the other names by name."""
    return (0, int(stem), "") if _NUMERIC.match(stem) else (1, 0, stem)


def list_inputs(input_dir: str | Path, kaggle_ids: bool = False) -> list[tuple[str, Path]]:
    """(stem, path) of the tifs to predict: ``DIR/test/*.tif`` when DIR has test/, else ``DIR/*.tif``.

    ``*_mask.tif`` and hidden files (``._2.tif`` from macOS, as ``data check`` skips them) are skipped;
    numeric stems sort numerically, then the rest by name. Two names of one number (``01``, ``1``)
    are refused, and with ``kaggle_ids`` (a submission is written) so is any name that is not a number.
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise DataError(
            root, "a file, not a folder of images" if root.exists() else "input directory not found"
        )
    folder = root / "test" if (root / "test").is_dir() else root
    paths = [
        p
        for p in folder.iterdir()
        if p.suffix.lower() in (".tif", ".tiff")
        and not p.stem.endswith("_mask")
        and not p.name.startswith(".")
    ]
    if not paths:
        raise DataError(folder, "no .tif images to predict")
    _check_ids(folder, paths, kaggle_ids)
    return [(p.stem, p) for p in sorted(paths, key=lambda p: _id_key(p.stem))]


def _check_ids(folder: Path, paths: list[Path], kaggle_ids: bool) -> None:
    """One submission row per test id: no number named twice; with ``kaggle_ids`` only numbers."""
    seen: dict[int, str] = {}
    for p in sorted(paths):
        if not _NUMERIC.match(p.stem):
            if kaggle_ids:
                raise DataError(p, "not a Kaggle test id (a number such as 1.tif); a submission needs those")
            continue
        test_id = int(p.stem)
        if test_id in seen:
            raise DataError(folder, f"{seen[test_id]} and {p.name} are both test id {test_id}; keep one")
        seen[test_id] = p.name


def load_model(path: str | Path, device: torch.device, tta: bool | None = None) -> LoadedModel:
    """Rebuild a checkpoint's SegModule from its config and weights, ready for inference."""
    from benchmark.training.checkpoint import (
        postprocess_of,
        read_checkpoint,
        rebuild_module,
        scoring_precision_of,
    )

    path = Path(path)
    ckpt = read_checkpoint(path)
    post = postprocess_of(path, ckpt)
    config = dict(ckpt["hyper_parameters"]["config"])
    # The weights come from the state dict: never download pretrained encoders, never compile.
    config.update(encoder_weights=None, compile=False, tta=post.tta if tta is None else tta)
    module = rebuild_module(path, config, ckpt)  # one line (with key counts) on a mismatch
    return LoadedModel(path, module.to(device).eval(), post, scoring_precision_of(ckpt, device))


def ensemble_postprocess(posts: Sequence[PostProcess]) -> PostProcess:
    """One PostProcess for averaged probabilities: the mean of the numeric tuned parameters."""
    first = posts[0]
    sources = sorted({p.presence_source for p in posts})
    if len(sources) > 1:
        raise NerveBenchError(
            f"these checkpoints gate presence on different scores ({' and '.join(sources)}): their mean "
            "has no tuned cut-off; ensemble checkpoints of one kind (e.g. one architecture's folds)"
        )
    names = {f.name for f in fields(first)}
    changes: dict[str, Any] = {}
    for name in _MEANED:
        if name in names:
            mean = float(np.mean([getattr(p, name) for p in posts]))
            changes[name] = int(round(mean)) if isinstance(getattr(first, name), int) else round(mean, 6)
    return replace(first, **changes)


def _network_input(images: np.ndarray, module: SegModule, device: torch.device) -> torch.Tensor:
    from datamodules.datamodule import normalise

    cfg = module.cfg
    batch = np.stack([geometry.prepare(img, cfg.resize_mode, cfg.image_size) for img in images])
    return normalise(batch[:, None]).to(device)


@torch.inference_mode()
def predict_probs(models: Sequence[LoadedModel], images: np.ndarray, device: torch.device) -> tuple:
    """Mean foreground probability (B,420,580) and mean presence probability (B,) over ``models``."""
    prob_sum = torch.zeros((len(images), *KAGGLE_SHAPE), device=device)
    presence_sum = torch.zeros(len(images), device=device)
    for m in models:
        with scoring_precision(device, m.precision):
            prob, presence, _ = m.module.predict_orig(_network_input(images, m.module, device))
        prob_sum += prob.float()
        presence_sum += presence.float()
    return (prob_sum / len(models)).cpu().numpy(), (presence_sum / len(models)).cpu().numpy()


def _read_checked(path: Path) -> np.ndarray:
    image = read_tif(path)
    if image.shape != KAGGLE_SHAPE:
        raise DataError(
            path,
            f"expected a {KAGGLE_SHAPE[1]}x{KAGGLE_SHAPE[0]} image (H={KAGGLE_SHAPE[0]}), "
            f"got shape {image.shape}",
        )
    return image


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Give an OSError raised while writing ``path`` its file name (a bare write() error has none)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc


def write_submission(path: str | Path, rows: list[tuple[str, str]]) -> Path:
    """Kaggle CSV ``img,pixels``, one row per image in the given (numeric id) order; atomic."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["img", "pixels"])
    writer.writerows(rows)
    with _naming(Path(path)):
        return atomic_write(path, text.getvalue())


IDS_DIFFER = "its image ids differ from"  # sample_mismatch's words for a file Kaggle refuses


def sample_mismatch(input_dir: str | Path, ids: list[str]) -> str | None:
    """How the submission's image ids differ from ``sample_submission.csv`` beside the test folder
    (Kaggle refuses a submission whose ids are not its sample's); None when they agree or it is absent."""
    found = [p for p in _data_files(input_dir) if p.name == "sample_submission.csv" and p.is_file()]
    if not found:
        return None
    sample = found[0]
    try:
        with sample.open(newline="") as f:
            expected = [row[0].strip() for row in list(csv.reader(f))[1:] if row]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return f"{sample}: unreadable ({exc}); the ids were not checked"
    missing, extra = (
        sorted(set(expected) - set(ids), key=_id_key),
        sorted(set(ids) - set(expected), key=_id_key),
    )
    if not missing and not extra:
        return None if ids == expected else f"its ids are {sample.name}'s in another order"
    parts = [f"{len(ids_)} {what} ({', '.join(ids_[:5])}{', ...' if len(ids_) > 5 else ''})"
             for what, ids_ in (("missing", missing), ("not in it", extra)) if ids_]  # fmt: skip
    return f"{IDS_DIFFER} {sample}: {'; '.join(parts)}"


def write_mask(path: Path, mask: np.ndarray) -> None:
    """A uint8 {0,255} tif, atomically: an interrupted run never leaves a truncated mask behind."""
    with _naming(path), atomic_path(path) as tmp:
        write_tif(tmp, mask.astype(np.uint8) * 255)


def write_overlay(path: Path, image: np.ndarray, mask: np.ndarray) -> None:
    """PNG of the grayscale frame with the predicted mask's contour drawn in red (written atomically)."""
    import cv2

    rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(rgb, contours, -1, (0, 0, 255), 2)
    ok, png = cv2.imencode(".png", rgb)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    with _naming(path):
        atomic_write(path, png.tobytes())


def check_outputs(out_dir: Path, submission: Path | None, reads: Sequence[str | Path] = ()) -> None:
    """Refuse unusable output paths before loading models and predicting (one line, exit 2); the
    submission may not replace a file the prediction ``reads`` (a checkpoint, the sample it is
    checked against)."""
    check_output_dir(out_dir, "--out", "a directory for the mask tifs")  # not at the first mask written
    if submission is None:
        return
    if Path(submission).resolve() == Path(out_dir).resolve():  # found after every mask was written
        raise NerveBenchError(f"{submission}: --submission is the --out folder; give a .csv file path")
    check_output_file(submission, "--submission", "a .csv file path", reads)


def _data_files(input_dir: str | Path) -> list[Path]:
    """The data set's own csv files and image folders beside the test folder (``--input DIR`` or
    ``DIR/test``): no output may replace them or land among the images."""
    root = Path(input_dir).resolve()  # a link to DIR/test, or DIR/Test on a case-insensitive disk
    near = [root, *([root.parent] if root.name.lower() == "test" else [])]
    return [path for d in near for path in layout_paths(d)]


def _write_masks(
    models: Sequence[LoadedModel],
    inputs: list[tuple[str, Path]],
    post: PostProcess,
    out: Path,
    overlays: bool,
    batch_size: int,
    dev: torch.device,
) -> tuple[list[tuple[str, str]], int]:
    """Predict ``inputs`` batch by batch, writing each mask tif (and overlay); (stem, RLE) rows and
    the number of non-empty masks. An unreadable input is skipped and, after the rest are written,
    every one is reported at once (:class:`DataErrors`): a damaged copy is named whole, not a file
    per attempt, and the submission, which needs every image, is not written."""
    from benchmark.scoring.postprocess import apply

    if overlays:
        (out / "overlays").mkdir(exist_ok=True)
    rows: list[tuple[str, str]] = []
    errors: list[DataError] = []
    n_positive = 0
    for chunk in _batches(inputs, batch_size):
        read = [(stem, collect(errors, partial(_read_checked, path))) for stem, path in chunk]
        good = [(stem, image) for stem, image in read if image is not None]
        if not good:
            continue
        images = np.stack([image for _, image in good])
        prob, presence = predict_probs(models, images, dev)
        masks = np.asarray(apply(prob, post, presence_prob=presence), dtype=bool)
        for (stem, _), image, mask in zip(good, images, masks):
            write_mask(out / f"{stem}.tif", mask)
            if overlays:
                write_overlay(out / "overlays" / f"{stem}.png", image, mask)
            rows.append((stem, encode(mask)))
            n_positive += bool(mask.any())
    raise_all(inputs[0][1].parent, errors)
    return rows, n_positive


def predict_dir(
    checkpoints: Sequence[str | Path],
    input_dir: str | Path,
    out_dir: str | Path,
    submission: str | Path | None = None,
    tta: bool | None = None,
    overlays: bool = False,
    batch_size: int = 8,
    device: str = "auto",
) -> dict:
    """Predict every input tif, write ``<out>/<stem>.tif`` (uint8 {0,255}) and optional extras.

    Returns ``{"n_images", "n_positive", "out_dir", "submission", "postprocess", "tuned_apart",
    "checkpoint_tta", "other_masks", "sample_mismatch", "kaggle_refuses"}`` (``other_masks``: tifs
    already in ``out_dir`` that this prediction did not write; ``sample_mismatch``: :func:`sample_mismatch`
    of the submission; ``kaggle_refuses``: its ids are not the sample's).
    """
    if not checkpoints:
        raise NerveBenchError("no checkpoint given")
    out = Path(out_dir)
    check_outputs(out, Path(submission) if submission else None, [*checkpoints, *_data_files(input_dir)])
    dev = resolve_device(device)
    inputs = list_inputs(input_dir, kaggle_ids=submission is not None)
    if out.resolve() == inputs[0][1].parent.resolve():  # each mask would replace its own image
        raise NerveBenchError(f"{out}: --out is the folder of the images to predict; give another folder")
    models = [load_model(c, dev, tta) for c in checkpoints]
    # Record the TTA actually used (forced or per checkpoint) in the reported parameters.
    ttas = [bool(m.module.cfg.tta) for m in models]
    post = replace(ensemble_postprocess([m.post for m in models]), tta=all(ttas))
    out.mkdir(parents=True, exist_ok=True)
    rows, n_positive = _write_masks(models, inputs, post, out, overlays, batch_size, dev)
    sub = write_submission(submission, rows) if submission else None
    mismatch = sample_mismatch(input_dir, [stem for stem, _ in rows]) if submission else None
    written = {stem for stem, _ in rows}
    return {
        "n_images": len(rows),
        "n_positive": n_positive,
        "out_dir": str(out),
        "submission": str(sub) if sub else None,
        "postprocess": post.to_dict(),
        "tuned_apart": _tuned_apart(models),
        "checkpoint_tta": ttas,
        # mask tifs in --out that this prediction did not write: an earlier one's, left as they were
        "other_masks": sorted(p.name for p in out.glob("*.tif") if p.stem not in written),
        "sample_mismatch": mismatch,  # the submission's ids against sample_submission.csv beside test/
        "kaggle_refuses": bool(mismatch and mismatch.startswith(IDS_DIFFER)),  # not an order, not unread
    }


def _tuned_apart(models: Sequence[LoadedModel]) -> bool:
    """Whether the checkpoints' tuned post-processing differs (TTA aside): an ensemble of them applies
    the mean of their parameters, tuned for none of them."""
    return len({json.dumps({**m.post.to_dict(), "tta": None}, sort_keys=True) for m in models}) > 1
