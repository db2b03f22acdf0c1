"""ONNX export of a checkpoint: the network and its sigmoid in the graph, post-processing in the metadata.

The graph reproduces ``SegModule.predict_orig`` up to the network resolution. Input ``image``:
``(B, 1, H, W)`` float32, the frame after ``datamodules.geometry.prepare`` and ``(x/255 - mean)/std``;
the batch dimension is dynamic, H and W are the checkpoint's (``input_shape`` in the metadata).
Outputs, named after the model's heads: ``mask`` (B, 1, H, W) foreground probability, and for models
that have them ``presence`` (B, 1) presence probability and ``bbox`` (B, 4). With ``tta`` the
horizontally flipped input is averaged in inside the graph, as predict does. Outside the graph, and
described by the metadata (``onnx_metadata``): resizing in and out of the network size, the
normalisation, the gate's fallback score (the maximum pixel probability, for models without a
presence head) and the tuned post-processing (threshold, min_area, presence_tau, presence_source).

Exporter: ``torch.onnx.export(dynamo=True)`` (torch.export, then onnxscript's ATen library, opset 18).
It exports every registered model; the TorchScript exporter (``dynamo=False``, deprecated) has no
translation for ``aten::expm1``, which trans_cg_unet's class-guided gate uses. An operator without a
translation is named in one line (:class:`ExportError`).

Parity: onnxruntime and torch (fp32, CPU) run the same real frames (``--data-dir``, else frames of
the synthetic set); the export fails, and nothing is written, when a probability output differs by
more than ``TOLERANCE`` (max absolute difference) on any pixel.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from benchmark.core.files import check_output_file
from benchmark.onnx_metadata import INPUT, encode, metadata
from datamodules.errors import DataError, NerveBenchError

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

TOLERANCE = 1e-4  # max |p_onnxruntime - p_torch| over every pixel of every output, fp32
PARITY_FRAMES = 4
PARITY_BATCH = 8  # frames per forward pass of the parity check
OPSET = 18
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


class ExportError(NerveBenchError):
    """A model that cannot be exported, run by onnxruntime, or matched by it: one line, exit 2."""


def require_onnx() -> None:
    """ExportError naming the missing packages and the install line when the onnx extra is absent."""
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(
            f"ONNX export needs {', '.join(missing)}: "
            "pip install -c requirements/constraints.txt -e '.[onnx]'"
        )


# -- the graph -----------------------------------------------------------------------------------
class ProbabilityGraph(nn.Module):
    """A registry model's outputs as probabilities (mask and presence sigmoids), flip TTA optional."""

    def __init__(self, model: nn.Module, tta: bool = False) -> None:
        super().__init__()
        self.model = model
        self.tta = tta

    @staticmethod
    def probabilities(out: torch.Tensor | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        heads = out if isinstance(out, dict) else {"mask": out}
        sigmoid = ("mask", "presence")  # logits; bbox is already squashed to [0, 1] by the model
        return {k: torch.sigmoid(v.float()) if k in sigmoid else v.float() for k, v in heads.items()}

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        probs = self.probabilities(self.model(image))
        if self.tta:
            flipped = self.probabilities(self.model(torch.flip(image, dims=[-1])))
            probs["mask"] = 0.5 * (probs["mask"] + torch.flip(flipped["mask"], dims=[-1]))
            if "presence" in probs:
                probs["presence"] = 0.5 * (probs["presence"] + flipped["presence"])
        return probs


class _Outputs(nn.Module):
    """The graph's dict as a tuple in a fixed order, so each output gets its head's name."""

    def __init__(self, probabilities: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.probabilities = probabilities  # not "graph": an exported GraphModule has its own .graph
        self.names = names

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.probabilities(image)
        return tuple(out[name] for name in self.names)


def _clean(text: str) -> str:
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


_OPERATOR = (
    re.compile(r"No ONNX function found for <OpOverload\(op='([^']+)', overload='([^']+)'\)>"),
    re.compile(r"Exporting the operator '([^']+)' to ONNX opset version \d+ is not supported"),
    re.compile(r"Unsupported FX nodes: \{'call_function': \['([^']+)'"),
)


def export_problem(exc: BaseException) -> str:
    """Why torch.onnx failed, in one line: the operator without an ONNX translation when there is one."""
    texts = [_clean(str(e)) for e in _chain(exc)]
    for pattern in _OPERATOR:
        for text in texts:
            found = pattern.search(text)
            if found:
                operator = ".".join(g for g in found.groups() if g)
                exporter = f"torch.onnx dynamo exporter, opset {OPSET}"
                return f"operator {operator} has no ONNX translation ({exporter})"
    innermost = next((t for t in reversed(texts) if t), type(exc).__name__)
    return f"torch.export cannot trace it: {innermost[:300]}"


def to_onnx(graph: nn.Module, example: torch.Tensor, label: str) -> tuple[Any, list[str]]:
    """(torch.onnx ONNXProgram, output names) of ``graph`` with a dynamic batch dimension."""
    require_onnx()
    graph = graph.eval()
    with torch.no_grad():
        names = list(graph(example))
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                _Outputs(graph, names).eval(),
                (example,),
                dynamo=True,
                opset_version=OPSET,
                input_names=[INPUT],
                output_names=names,
                dynamic_shapes=({0: batch},),
                verbose=False,
            )
    except Exception as exc:  # noqa: BLE001 - every exporter failure becomes one line
        raise ExportError(f"{label}: cannot export to ONNX: {export_problem(exc)}") from None
    return program, names


# -- onnxruntime -----------------------------------------------------------------------------------
def _runtime_problem(exc: BaseException) -> str:
    text = _clean(str(exc))
    found = re.search(r"Could not find an implementation for (\w+)\((\d+)\)", text)
    if found:
        return f"onnxruntime has no kernel for operator {found.group(1)} (opset {found.group(2)})"
    return text[:300] or type(exc).__name__


def session(
    model: bytes | str | Path, label: str, provider: str = "CPUExecutionProvider"
) -> InferenceSession:
    """An onnxruntime session (threads as torch's, so side-by-side timings compare like with like)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3  # errors only: no "removing initializer" chatter
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, options, providers=[provider])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        problem = _runtime_problem(exc)
        raise ExportError(f"{label}: onnxruntime cannot load the exported graph: {problem}") from None


def run_session(sess: InferenceSession, images: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of ``sess`` on a (B, 1, H, W) float32 batch, by name."""
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {INPUT: np.ascontiguousarray(images, dtype=np.float32)})))


def parity(sess: InferenceSession, graph: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """Max absolute difference, per output, between onnxruntime and torch on ``images``, run
    ``PARITY_BATCH`` frames at a time (``--frames 500`` ran as one batch: tens of GB of activations)."""
    diffs: dict[str, list[float]] = {}
    graph.eval()
    for start in range(0, len(images), PARITY_BATCH):
        chunk = images[start : start + PARITY_BATCH]
        with torch.no_grad():
            expected = graph(chunk)
        got = run_session(sess, chunk.numpy())
        for name in expected:
            diffs.setdefault(name, []).append(float(np.abs(got[name] - expected[name].numpy()).max()))
    return {name: float(np.max(d)) for name, d in diffs.items()}  # np.max keeps a NaN: parity fails


def check_parity(diffs: dict[str, float], tolerance: float, label: str, frames: str) -> None:
    """ExportError in one line when an output is further from torch than ``tolerance``."""
    worst = max(diffs, key=lambda name: diffs[name])
    if not diffs[worst] <= tolerance:  # NaN fails too
        raise ExportError(
            f"{label}: ONNX parity failed: output {worst!r} differs from torch by up to {diffs[worst]:.2e} "
            f"on {frames} (tolerance {tolerance:.0e}, max absolute difference at fp32)"
        )


# -- real inputs -------------------------------------------------------------------------------------
def _tifs(data_dir: Path) -> list[Path]:
    for folder in (data_dir / "train", data_dir / "test", data_dir):
        if folder.is_dir():
            found = sorted(p for p in folder.glob("*.tif") if not p.stem.endswith("_mask"))
            if found:
                return found
    raise DataError(data_dir, "no .tif frames for the parity check (looked in train/, test/ and the folder)")


def read_frames(data_dir: str | Path | None, n: int) -> tuple[np.ndarray, str]:
    """``n`` raw uint8 frames (n, 420, 580) and where they came from: ``data_dir``, else synthetic."""
    from datamodules.io import read_tif
    from datamodules.rle import KAGGLE_SHAPE

    if data_dir is None:
        from datamodules.synth import generate

        with tempfile.TemporaryDirectory(prefix="nerve-bench-parity-") as tmp:
            generate(tmp, subjects=1, per_subject=n, n_test=0, seed=0)
            frames, _ = read_frames(tmp, n)
        return frames, f"{n} synthetic frames"
    paths = _tifs(Path(data_dir))[:n]
    frames = [read_tif(p) for p in paths]
    for path, frame in zip(paths, frames):
        if frame.shape != KAGGLE_SHAPE:
            raise DataError(path, f"expected a 580x420 frame, got shape {frame.shape}")
    return np.stack(frames), f"{len(frames)} frames of {data_dir}"


def network_inputs(frames: np.ndarray, resize_mode: str, image_size: int) -> torch.Tensor:
    """Frames as the network sees them: prepared to network size and normalised, (B, 1, H, W)."""
    from datamodules import geometry
    from datamodules.datamodule import normalise

    batch = np.stack([geometry.prepare(f, resize_mode, image_size) for f in frames])
    return normalise(batch[:, None])


# -- the whole export ------------------------------------------------------------------------------
def export_graph(
    graph: nn.Module,
    images: torch.Tensor,
    out: str | Path,
    meta: dict[str, Any],
    label: str,
    frames: str,
    tolerance: float = TOLERANCE,
) -> dict[str, Any]:
    """Export ``graph``, check parity on ``images`` and write ``out`` with ``meta``, atomically.

    Nothing is written when the export or the parity check fails. Returns the metadata as written,
    parity figures included.
    """
    from benchmark.core.files import atomic_path

    example = images[:2] if len(images) >= 2 else images.repeat(2, 1, 1, 1)
    program, names = to_onnx(graph, example, label)
    diffs = parity(session(program.model_proto.SerializeToString(), label), graph, images)
    check_parity(diffs, tolerance, label, frames)
    written = {**meta, "parity_inputs": frames, "parity_tolerance": tolerance, "parity_max_abs_diff": diffs}
    for key, value in written.items():
        program.model.metadata_props[key] = encode(value)
    with atomic_path(out) as tmp:
        program.save(tmp, external_data=False)
    return written


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    data_dir: str | Path | None = None,
    frames: int = PARITY_FRAMES,
    tolerance: float = TOLERANCE,
) -> dict[str, Any]:
    """Export a checkpoint's model with its tuned post-processing; the written metadata."""
    from benchmark.training.checkpoint import load_checkpoint_module, postprocess_of, tuned_in
    from models.registry import get_info

    require_onnx()
    if frames < 1:
        raise ExportError(f"--frames must be at least 1, got {frames}")
    if not tolerance > 0 or tolerance == float("inf"):  # nan too: before the work, not as "parity failed"
        raise ExportError(f"--tolerance must be a positive number, got {tolerance}")
    check_output_file(out, "--out", "the path of the .onnx file", [checkpoint])
    path = Path(checkpoint)
    module, ckpt = load_checkpoint_module(path)
    post = postprocess_of(path, ckpt)
    cfg = module.cfg
    raw, source = read_frames(data_dir, frames)
    images = network_inputs(raw, cfg.resize_mode, cfg.image_size)
    graph = ProbabilityGraph(module.model.float().eval(), tta=post.tta)
    with torch.no_grad():
        names = list(graph(images[:1]))
    meta = metadata(cfg, post, names, get_info(cfg.model).package, tuned_in(ckpt))
    meta["checkpoint"] = path.name
    return export_graph(graph, images, out, meta, f"{path} ({cfg.model})", source, tolerance)


# -- speed -------------------------------------------------------------------------------------------
def onnx_inference(
    model: nn.Module,
    input_shape: tuple[int, int],
    batch_size: int,
    device: torch.device,
    warmup: int | None = None,
    iters: int | None = None,
) -> dict[str, Any]:
    """onnxruntime's img/s at ``batch_size`` and median batch-1 latency (ms), timed like
    :func:`benchmark.evaluation.costs.measure_inference` times torch (same defaults, same clock)."""
    import onnxruntime as ort

    from benchmark.evaluation.costs import time_calls

    cuda = device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
    provider = "CUDAExecutionProvider" if cuda else "CPUExecutionProvider"
    warmup = warmup if warmup is not None else (2 if cuda else 1)
    iters = iters if iters is not None else (5 if cuda else 2)
    graph = ProbabilityGraph(copy.deepcopy(model).float().cpu().eval())  # the caller's model stays put
    h, w = input_shape
    batch = torch.randn(batch_size, 1, h, w)
    program, _ = to_onnx(graph, batch[:2] if batch_size >= 2 else batch.repeat(2, 1, 1, 1), "speed")
    sess = session(program.model_proto.SerializeToString(), "speed", provider)
    cpu = torch.device("cpu")  # onnxruntime's run() returns when its outputs are on the host

    def call(x: np.ndarray) -> Callable[[], object]:
        return lambda: sess.run(["mask"], {INPUT: x})

    batched = time_calls(call(batch.numpy()), cpu, warmup, iters)
    single = time_calls(call(batch[:1].numpy()), cpu, warmup, iters)
    return {
        # what runs the session, not what was asked for: onnxruntime falls back to its CPU provider
        # when the CUDA one does not load (and the pinned build has none)
        "onnx_provider": sess.get_providers()[0].removesuffix("ExecutionProvider").lower(),
        "onnx_infer_img_s": batch_size * len(batched) / max(sum(batched), 1e-9),
        "onnx_latency_ms": 1000.0 * max(float(np.median(single)), 1e-9),
    }
