"""ONNX export: every registered model (plugins included) exports and matches torch within the stated
tolerance on real frames; the tuned post-processing lands in the metadata; failures are one line."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import models  # noqa: E402
from benchmark import export  # noqa: E402
from benchmark.cli import main  # noqa: E402
from benchmark.core.config import TrainConfig  # noqa: E402
from benchmark.onnx_metadata import read_metadata  # noqa: E402
from benchmark.scoring.postprocess import PostProcess  # noqa: E402
from benchmark.training.checkpoint import read_checkpoint, save_plain_checkpoint, store_in_checkpoint  # noqa: E402
from benchmark.training.module import (
    SegModule,  # noqa: E402
    config_from_dict,  # noqa: E402
)
from models.registry import BUILTIN  # noqa: E402
from tests.plugin_site import EXAMPLE_MODEL, activate  # noqa: E402

# The smallest configuration of each model that still has every kind of layer it has at full size
# (export time grows with the number of graph nodes, not with the weights).
SMALL = {
    "unet": {"base_width": 4, "depth": 2},
    "attention_unet": {"base_width": 4, "depth": 2},
    "sk_unet": {"base_width": 4, "depth": 2},
    "trans_cg_unet": {
        "base_width": 4,
        "depth": 2,
        "embed_dim": 16,
        "num_layers": 1,
        "num_heads": 2,
        "pos_grid": 4,
    },
    EXAMPLE_MODEL: {"width": 4},
}
SMP = {"encoder_depth": 3, "decoder_channels": (8, 8, 8)}
REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "uns-sample"


def _small(name: str) -> dict:
    return SMALL.get(name, SMP if name.startswith("unet_") else {})


def _frames(synthetic_dir: Path, size: int = 64) -> tuple[torch.Tensor, str]:
    raw, source = export.read_frames(synthetic_dir, 3)
    return export.network_inputs(raw, "resize", size), source


@pytest.mark.slow
@pytest.mark.parametrize("name", models.list_models() + [EXAMPLE_MODEL])
def test_every_registered_model_exports_within_tolerance(
    name: str, synthetic_dir: Path, example_site: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with activate(example_site, monkeypatch):
        torch.manual_seed(0)
        model = models.create(name, presence_head=name == "trans_cg_unet", **_small(name)).eval()
        images, source = _frames(synthetic_dir)
        graph = export.ProbabilityGraph(model, tta=name == "unet")
        meta = export.export_graph(graph, images, tmp_path / "m.onnx", {"model": name}, name, source)
    diffs = meta["parity_max_abs_diff"]
    assert set(diffs) == ({"mask", "presence", "bbox"} if name == "trans_cg_unet" else {"mask"})
    assert max(diffs.values()) <= export.TOLERANCE
    sess = export.session(tmp_path / "m.onnx", name)
    out = export.run_session(sess, images[:1].numpy())  # the batch dimension is dynamic
    assert out["mask"].shape == (1, 1, 64, 64) and ((out["mask"] >= 0) & (out["mask"] <= 1)).all()


def _checkpoint(path: Path, model: str, post: PostProcess, **kwargs: object) -> Path:
    cfg = TrainConfig(model=model, image_size=64, model_kwargs=kwargs, tta=post.tta)
    torch.manual_seed(0)
    save_plain_checkpoint(SegModule(cfg.to_dict()), path)
    store_in_checkpoint(path, read_checkpoint(path), {"postprocess": post.to_dict()})
    return path


def test_export_command_stores_the_tuned_postprocessing(
    tmp_path: Path, synthetic_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnxruntime as ort

    post = PostProcess(threshold=0.45, min_area=250, presence_tau=0.3, presence_source="presence", tta=True)
    ckpt = _checkpoint(tmp_path / "best.ckpt", "trans_cg_unet", post, **SMALL["trans_cg_unet"])
    data = REAL if (REAL / "train").is_dir() else synthetic_dir  # real frames when ../shared is there
    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--data-dir", str(data)]) == 0
    assert "max |p_onnx - p_torch|" in capsys.readouterr().out
    meta = read_metadata(out)
    assert {k: meta[k] for k in post.to_dict()} == post.to_dict()
    assert (meta["resize_mode"], meta["image_size"], meta["input_shape"]) == ("resize", 64, [64, 64])
    assert (meta["mean"], meta["std"]) == (0.37, 0.23)
    assert (meta["model"], meta["package"]) == ("trans_cg_unet", BUILTIN)
    assert meta["outputs"] == ["mask", "presence", "bbox"] and meta["tta_in_graph"] is True
    assert meta["parity_tolerance"] == export.TOLERANCE and str(data) in meta["parity_inputs"]
    cfg = config_from_dict(read_checkpoint(ckpt)["hyper_parameters"]["config"])  # which fold's model
    assert (meta["run"], meta["fold"], meta["config_hash"]) == (cfg.run_name(), cfg.fold, cfg.hash())
    # any onnxruntime consumer reads the same map
    custom = ort.InferenceSession(str(out)).get_modelmeta().custom_metadata_map
    assert custom["threshold"] == "0.45" and custom["presence_source"] == "presence"
    # the graph reproduces SegModule.predict_orig (flip TTA included) at network size
    module = SegModule(read_checkpoint(ckpt)["hyper_parameters"]["config"])
    module.load_state_dict(read_checkpoint(ckpt)["state_dict"])
    raw, _ = export.read_frames(data, 2)
    images = export.network_inputs(raw, "resize", 64)
    got = export.run_session(export.session(out, "m"), images.numpy())
    with torch.no_grad():
        _, presence, _ = module.eval().predict_orig(images)
    np.testing.assert_allclose(got["presence"][:, 0], presence.numpy(), atol=export.TOLERANCE)
    _a_consumer_following_the_metadata_gets_predicts_masks(meta, got)


def _a_consumer_following_the_metadata_gets_predicts_masks(meta: dict, got: dict) -> None:
    """The rules in words, applied to the file's outputs, give postprocess.apply's masks."""
    import torch.nn.functional as F

    from benchmark.scoring.postprocess import apply

    assert meta["postprocess_rule"].startswith("on the 420x580 mask probabilities p: u8 = ceil(p*255 - 0.5)")
    assert meta["restore"].startswith("bilinear resize") and meta["postprocess_tuned_in"].startswith(
        "unknown"
    )
    p = F.interpolate(torch.from_numpy(got["mask"]), size=(420, 580), mode="bilinear", align_corners=False)
    p = p[:, 0].numpy()
    u8 = np.ceil(p * np.float32(255) - np.float32(0.5)).astype(np.uint8)
    masks = u8 > meta["threshold"] * 255
    score = got["presence"][:, 0]  # presence_source "presence"
    masks[(masks.sum(axis=(1, 2)) < meta["min_area"]) | (score < meta["presence_tau"])] = False
    post = PostProcess(**{k: meta[k] for k in PostProcess().to_dict()})
    assert np.array_equal(masks, apply(p, post, presence_prob=score))


class _ExportOnlyDrift(torch.nn.Module):
    """Adds 0.1 to the logits only while torch.export traces it: torch and ONNX disagree."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + (0.1 if torch.compiler.is_exporting() else 0.0)


@torch.library.custom_op("nerve_bench_test::mystery", mutates_args=())
def _mystery(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


_mystery.register_fake(lambda x: torch.empty_like(x))


class _Mystery(torch.nn.Module):
    """A model calling an operator that has no ONNX translation."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _mystery(self.conv(x))


@pytest.fixture
def odd_models() -> object:
    models.register("test_drift")(_ExportOnlyDrift)
    models.register("test_mystery")(_Mystery)
    yield
    models.registry.unregister("test_drift")
    models.registry.unregister("test_mystery")


def test_parity_failure_is_one_line_and_writes_nothing(
    odd_models: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = _checkpoint(tmp_path / "drift.ckpt", "test_drift", PostProcess())
    out = tmp_path / "drift.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(
        f"error: {ckpt} (test_drift): ONNX parity failed: output 'mask' differs from torch"
    )
    assert "on 4 synthetic frames (tolerance 1e-04, max absolute difference at fp32)" in err[0]
    assert not out.exists() and not list(tmp_path.glob(".drift.onnx.*"))


def test_an_operator_without_onnx_translation_is_named(
    odd_models: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = _checkpoint(tmp_path / "mystery.ckpt", "test_mystery", PostProcess())
    args = ["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx"), "--frames", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: {ckpt} (test_mystery): cannot export to ONNX: operator nerve_bench_test.mystery.default "
        "has no ONNX translation (torch.onnx dynamo exporter, opset 18)"
    ]


def test_unreadable_checkpoint_and_missing_frames_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    args = ["export", "--checkpoint", str(tmp_path / "bad.ckpt"), "--out", str(tmp_path / "m.onnx")]
    assert main(args) == 2
    assert "bad.ckpt: not a readable checkpoint" in capsys.readouterr().err
    # bad arguments are refused before the checkpoint is even read, not after the export's work
    (tmp_path / "a_dir").mkdir()
    for extra, line in (
        (
            ["--out", str(tmp_path / "a_dir")],
            f"{tmp_path / 'a_dir'}: --out is a directory; expected the path",
        ),
        (["--out", str(tmp_path / "m.onnx"), "--tolerance", "nan"], "--tolerance must be a positive number"),
        (["--out", str(tmp_path / "m.onnx"), "--tolerance", "-1"], "--tolerance must be a positive number"),
    ):
        assert main(["export", "--checkpoint", str(tmp_path / "bad.ckpt"), *extra]) == 2
        assert line in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(export.DataError, match="no .tif frames for the parity check"):
        export.read_frames(tmp_path / "empty", 2)


def test_onnx_speed_figures_beside_torch() -> None:
    from benchmark import speed

    model = models.create("unet", **SMALL["unet"])
    row = export.onnx_inference(model, (64, 64), 2, torch.device("cpu"))
    assert row["onnx_provider"] == "cpu"
    assert all(np.isfinite(row[k]) and row[k] > 0 for k in ("onnx_infer_img_s", "onnx_latency_ms"))
    with pytest.raises(ValueError, match="runtime must be one of torch, onnx"):
        speed.SpeedSettings(runtime="tensorrt")
    base = dict(zip(speed.RESULT_KEYS, ["unet", "cpu", 64, 2, 10.0, 5.0, 20.0, 100.0, 7.5, 2.0, 0.5]))
    table = speed.format_table([{**base, **row, "ratio_onnx_vs_torch": 1.25}]).splitlines()
    assert table[0].split()[-4:] == ["onnx", "latency", "ms", "onnx/torch"]
    assert table[1].split()[-4:-2] == ["cpu", speed.fmt(row["onnx_infer_img_s"])]
    assert table[1].split()[-1] == "1.25"


def test_the_onnx_row_names_the_provider_that_ran_not_the_one_asked_for(monkeypatch) -> None:
    """onnxruntime falls back to its CPU provider when the CUDA one cannot load (the pinned build has
    none): the row says cpu, and speed then gives no onnx/torch ratio against torch on a GPU."""
    import onnxruntime as ort

    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    model = models.create("unet", **SMALL["unet"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnxruntime's own fallback warning
        row = export.onnx_inference(model, (64, 64), 2, torch.device("cuda"), warmup=1, iters=1)
    assert row["onnx_provider"] == "cpu"


def test_parity_runs_the_frames_in_batches_and_keeps_the_worst_difference(monkeypatch) -> None:
    """``--frames N`` ran all N frames as one forward pass; now PARITY_BATCH at a time, and the worst
    difference of any batch (a NaN in any) is what the check sees."""
    seen = []

    def graph(x: torch.Tensor) -> dict[str, torch.Tensor]:
        seen.append(len(x))
        return {"prob": x * 2}

    def runtime(_sess, images: np.ndarray) -> dict[str, np.ndarray]:
        out = images * 2
        out[images[:, 0, 0, 0] == 18] += 0.5  # the last frame, in the last batch
        return {"prob": out}

    monkeypatch.setattr(export, "run_session", runtime)
    graph.eval = lambda: graph  # type: ignore[attr-defined]
    images = torch.arange(19, dtype=torch.float32).reshape(19, 1, 1, 1).expand(19, 1, 4, 4).contiguous()
    assert export.parity(None, graph, images) == {"prob": 0.5}  # type: ignore[arg-type]
    assert seen == [8, 8, 3]
    images[9] = float("nan")
    assert np.isnan(export.parity(None, graph, images)["prob"])  # type: ignore[arg-type]
