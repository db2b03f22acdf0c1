"""What an exported ONNX file carries besides its graph (``metadata_props``): how to prepare a frame
for it, how to map its probabilities back to 420x580, and the tuned post-processing as rules a
consumer can apply without nerve-bench and get ``predict``'s masks (a review found the bare
threshold was not enough: ``predict`` quantises to uint8 first, so ``p > threshold`` flipped 231
pixels over 80 frames, and with a gate whole masks).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

INPUT = "image"

POSTPROCESS_RULE = (
    "on the 420x580 mask probabilities p: u8 = ceil(p*255 - 0.5) (uint8, half rounds down); "
    "mask = u8 > threshold*255; the mask is emptied when its pixel count < min_area or when the gate's "
    "score < presence_tau, the score being the presence output (presence_source presence) or "
    "max(u8)/255 (presence_source max_prob)"
)


def _geometry(resize_mode: str) -> dict[str, str]:
    """The frame's way in (to the network size) and the probabilities' way out (to 420x580)."""
    from datamodules import geometry
    from datamodules.rle import KAGGLE_SHAPE

    if resize_mode == "resize":
        return {
            "prepare": "cv2.resize of the 420x580 uint8 frame to image_size x image_size: INTER_AREA when "
            "image_size^2 < 420*580 (the area shrinks, whatever each axis does), else INTER_LINEAR",
            "restore": "bilinear resize of the probabilities to 420x580 (half-pixel centres: torch "
            "align_corners=False), in float32",
        }
    (top, left), (h, w) = geometry.pad_offsets(), KAGGLE_SHAPE
    return {
        "prepare": f"reflect padding of the 420x580 frame to input_shape, the frame at row {top}, column "
        f"{left} (numpy.pad mode='reflect')",
        "restore": f"the crop rows {top}..{top + h - 1}, columns {left}..{left + w - 1} of the probabilities",
        "pad_offset": json.dumps([top, left]),  # (row, column) of the frame, for a program to read
    }


def metadata(cfg: Any, post: Any, names: list[str], package: str, tuned_in: str) -> dict[str, Any]:
    """What a consumer of the file needs besides the graph: pre- and post-processing, provenance.
    ``tuned_in``: the precision the post-processing was tuned in (the graph itself is float32)."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from datamodules import geometry
    from datamodules.datamodule import MEAN, STD

    try:
        suite = version("nerve-bench")
    except PackageNotFoundError:  # a checkout used without `pip install -e .`
        suite = "unknown"
    return {
        "producer": "nerve-bench",
        "nerve_bench_version": suite,
        "torch": torch.__version__,
        "model": cfg.model,
        "model_kwargs": cfg.model_kwargs,
        # which trained model this is: "best.ckpt" alone named no fold (a review)
        "run": cfg.run_name(),
        "fold": cfg.fold,
        "n_folds": cfg.n_folds,
        "seed": cfg.seed,
        "split_seed": cfg.split_seed,
        "config_hash": cfg.hash(),
        "package": package,
        "input": INPUT,
        "input_shape": list(geometry.input_shape(cfg.resize_mode, cfg.image_size)),
        "resize_mode": cfg.resize_mode,
        "image_size": cfg.image_size,
        **_geometry(cfg.resize_mode),
        "mean": MEAN,
        "std": STD,
        "normalisation": "(x / 255 - mean) / std on the prepared uint8 frame",
        "outputs": names,
        "tta_in_graph": post.tta,
        **post.to_dict(),
        "postprocess_rule": POSTPROCESS_RULE,
        "postprocess_tuned_in": tuned_in,
    }


def encode(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``metadata_props`` of an exported file, JSON values decoded (strings stay strings)."""
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    out: dict[str, Any] = {}
    for key, value in props.items():
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out
