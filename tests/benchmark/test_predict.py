"""predict: masks + Kaggle submission from one checkpoint or an averaged ensemble, and clear errors."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark import predict
from benchmark.cli import main
from benchmark.core.config import TrainConfig
from benchmark.scoring.postprocess import PostProcess
from datamodules.errors import DataError, NerveBenchError
from datamodules.io import read_tif, write_tif
from datamodules.rle import decode
from tests.benchmark.checkpoints import TINY, save_ckpt

CPU = torch.device("cpu")


def _median_threshold(path: Path, images: np.ndarray) -> float:
    """An untrained net's probabilities sit near 0.5: threshold at their median for non-trivial masks."""
    prob, _ = predict.predict_probs([predict.load_model(path, CPU)], images, CPU)
    return float(np.median(prob))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, synthetic_dir) -> tuple[Path, Path]:
    """Two different checkpoints: 64x64 resize mode, and full-resolution pad mode."""
    out = tmp_path_factory.mktemp("ckpts")
    images = np.stack([read_tif(p) for _, p in predict.list_inputs(synthetic_dir)])
    a_cfg = TrainConfig(model="unet", model_kwargs=TINY, image_size=64)
    b_cfg = TrainConfig(model="unet", model_kwargs=TINY, resize_mode="pad")
    a = save_ckpt(out / "a.ckpt", a_cfg, None, seed=0)
    b = save_ckpt(out / "b.ckpt", b_cfg, None, seed=1)
    save_ckpt(a, a_cfg, PostProcess(threshold=_median_threshold(a, images)), seed=0)
    save_ckpt(b, b_cfg, PostProcess(threshold=_median_threshold(b, images), min_area=10), seed=1)
    return a, b


def _check_outputs(out: Path, sub: Path, expected_ids: list[str]) -> list[np.ndarray]:
    csv.field_size_limit(2**31 - 1)  # an untrained net's speckled masks give very long RLE rows
    with sub.open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["img", "pixels"]
    assert [r[0] for r in rows[1:]] == expected_ids
    masks = []
    for img_id, pixels in rows[1:]:
        written = read_tif(out / f"{img_id}.tif")
        assert written.shape == (420, 580) and set(np.unique(written)) <= {0, 255}
        assert np.array_equal(decode(pixels), written // 255)
        masks.append(written)
    return masks


def test_submission_roundtrip_on_synthetic(ckpts, synthetic_dir, tmp_path):
    out, sub = tmp_path / "masks", tmp_path / "sub.csv"
    result = predict.predict_dir([ckpts[0]], synthetic_dir, out, submission=sub, overlays=True)
    ids = [stem for stem, _ in predict.list_inputs(synthetic_dir)]
    assert result["n_images"] == len(ids) == 5 and ids == sorted(ids, key=int)
    masks = _check_outputs(out, sub, ids)
    assert any(m.any() for m in masks) and not all(m.all() for m in masks)
    assert sorted(p.name for p in (out / "overlays").iterdir()) == sorted(f"{i}.png" for i in ids)


def test_uns_sample_submission(ckpts, uns_sample, tmp_path):
    out, sub = tmp_path / "masks", tmp_path / "sub.csv"
    code = main(["predict", "--checkpoint", str(ckpts[0]), "--input", str(uns_sample / "test"),
                 "--out", str(out), "--submission", str(sub), "--batch-size", "16"])  # fmt: skip
    assert code == 3  # written, but 25 of the sample submission's 5,508 ids: Kaggle refuses it
    _check_outputs(out, sub, [str(i) for i in range(1, 26)])


def test_ensemble_averages_probabilities(ckpts, synthetic_dir):
    images = np.stack([read_tif(p) for _, p in predict.list_inputs(synthetic_dir)[:2]])
    a, b = (predict.load_model(c, CPU) for c in ckpts)
    pa, sa = predict.predict_probs([a], images, CPU)
    pb, sb = predict.predict_probs([b], images, CPU)
    pab, sab = predict.predict_probs([a, b], images, CPU)
    assert pab.shape == (2, 420, 580)
    assert np.allclose(pab, (pa + pb) / 2, atol=1e-6) and np.allclose(sab, (sa + sb) / 2, atol=1e-6)
    assert not np.allclose(pa, pb)


def test_ensemble_postprocess_is_the_mean_of_tuned_parameters():
    posts = [PostProcess(0.4, 100, 0.2, "presence", True), PostProcess(0.6, 251, 0.4, "presence", False)]
    merged = predict.ensemble_postprocess(posts)
    assert merged.threshold == pytest.approx(0.5) and merged.presence_tau == pytest.approx(0.3)
    assert merged.min_area == 176 and isinstance(merged.min_area, int)  # round(175.5) = 176
    assert merged.presence_source == "presence" and merged.tta is True  # the first checkpoint's
    assert predict.ensemble_postprocess(posts[:1]) == posts[0]
    # a presence head's probability and a maximum pixel probability: no mean of them was tuned
    mixed = [posts[0], PostProcess(0.6, 251, 0.4, "max_prob", False)]
    for order in (mixed, mixed[::-1]):  # it depended on which checkpoint came first
        with pytest.raises(predict.NerveBenchError, match=r"different scores \(max_prob and presence\)"):
            predict.ensemble_postprocess(order)


def test_cli_ensemble_of_two_checkpoints(ckpts, synthetic_dir, tmp_path, capsys):
    out, sub = tmp_path / "masks", tmp_path / "sub.csv"
    both = f"{ckpts[0]},{ckpts[1]}"
    assert main(["predict", "--checkpoint", both, "--input", str(synthetic_dir), "--out", str(out),
                 "--submission", str(sub), "--tta"]) == 0  # fmt: skip
    _check_outputs(out, sub, [stem for stem, _ in predict.list_inputs(synthetic_dir)])
    # 5 synthetic test images: a usable CSV, but not one Kaggle would score; the command says so.
    first, *rest = capsys.readouterr().err.splitlines()
    assert rest == [
        f"note: {sub} holds 5 rows; Kaggle scores a submission of all 5508 test images (--input the full "
        "test/ folder)"
    ]
    # tuned apart (thresholds, min_area 0 and 10): the mean they apply was said in --json only (a review)
    assert first.startswith("note: the 2 checkpoints were tuned apart: the ensemble applies their mean, ")
    assert first.endswith(", min_area 5, presence_tau 0 (tuned for none of them); flip TTA on")
    # Again into the same folder, from 2 of the images: the other 3 masks are an earlier prediction's.
    two = tmp_path / "two"
    two.mkdir()
    for path in sorted((synthetic_dir / "test").glob("*.tif"))[:2]:
        shutil.copy(path, two / path.name)
    assert main(["predict", "--checkpoint", str(ckpts[0]), "--input", str(two), "--out", str(out)]) == 0
    others = sorted(p.name for p in (synthetic_dir / "test").glob("*.tif"))[2:]
    assert capsys.readouterr().err == (
        f"warning: {out} also holds 3 mask tif(s) this prediction did not write ({', '.join(others)}): an "
        "earlier prediction's, left as they were\n"
    )


def test_tta_follows_checkpoint_unless_forced(ckpts, tmp_path):
    cfg = TrainConfig(model="unet", model_kwargs=TINY, image_size=64)
    tta_ckpt = save_ckpt(tmp_path / "t.ckpt", cfg, PostProcess(tta=True), seed=0)
    assert predict.load_model(tta_ckpt, CPU).module.cfg.tta is True
    assert predict.load_model(tta_ckpt, CPU, tta=False).module.cfg.tta is False
    assert predict.load_model(ckpts[0], CPU).module.cfg.tta is False
    assert predict.load_model(ckpts[0], CPU, tta=True).module.cfg.tta is True


def test_any_stem_and_mask_files_skipped(tmp_path):
    for name in ("10.tif", "2.tif", "b.tif", "a.tif", "3_mask.tif"):
        write_tif(tmp_path / name, np.zeros((420, 580), np.uint8))
    write_tif(tmp_path / "._2.tif", np.zeros((1, 1), np.uint8))  # macOS metadata: skipped, as data check does
    assert [s for s, _ in predict.list_inputs(tmp_path)] == ["2", "10", "a", "b"]
    write_tif(tmp_path / "\u0661.tif", np.zeros((420, 580), np.uint8))  # an Arabic-Indic one: not id 1
    assert [s for s, _ in predict.list_inputs(tmp_path)][:2] == ["2", "10"]
    (tmp_path / "\u0661.tif").unlink()
    with pytest.raises(DataError, match=r"a.tif: not a Kaggle test id \(a number such as 1.tif\)"):
        predict.list_inputs(tmp_path, kaggle_ids=True)  # a submission row needs a numeric id
    write_tif(tmp_path / "02.tif", np.zeros((420, 580), np.uint8))
    with pytest.raises(DataError, match="02.tif and 2.tif are both test id 2; keep one"):
        predict.list_inputs(tmp_path)


def test_bad_inputs_are_clear_errors(ckpts, synthetic_dir, tmp_path, capsys):
    with pytest.raises(NerveBenchError, match="checkpoint not found"):
        predict.predict_dir([tmp_path / "nope.ckpt"], synthetic_dir, tmp_path / "o")
    with pytest.raises(DataError, match="input directory not found"):
        predict.predict_dir([ckpts[0]], tmp_path / "missing", tmp_path / "o")
    bad = tmp_path / "bad"
    bad.mkdir()
    write_tif(bad / "1.tif", np.zeros((100, 100), np.uint8))
    with pytest.raises(DataError, match=r"1\.tif: expected a 580x420 image"):
        predict.predict_dir([ckpts[0]], bad, tmp_path / "o")
    junk = tmp_path / "junk.ckpt"
    torch.save({"weights": 1}, junk)
    with pytest.raises(NerveBenchError, match="not a nerve-bench checkpoint"):
        predict.load_model(junk, CPU)
    wrong = torch.load(ckpts[0], weights_only=True)
    wrong["hyper_parameters"]["config"]["model_kwargs"] = {"base_width": 8, "depth": 2}
    torch.save(wrong, junk)
    with pytest.raises(NerveBenchError, match="junk.ckpt: cannot rebuild the model"):
        predict.load_model(junk, CPU)
    gone = {
        **wrong,
        "hyper_parameters": {"config": {**wrong["hyper_parameters"]["config"], "model": "gone_net"}},
    }
    gone["nerve_bench"] = {**wrong["nerve_bench"], "model_source": {"package": "my-plugin", "version": "1.0"}}
    torch.save(gone, junk)  # a plugin's checkpoint where the plugin is not installed: not "did you mean"
    with pytest.raises(
        NerveBenchError, match="'gone_net' was registered by my-plugin 1.0, which is not installed"
    ):
        predict.load_model(junk, CPU)
    gone["nerve_bench"]["model_source"] = {"package": "nerve-bench", "version": "0.0.1"}  # renamed since
    torch.save(gone, junk)
    with pytest.raises(
        NerveBenchError, match=r"by nerve-bench 0.0.1, and [\w.+]+, installed here, has no such"
    ):
        predict.load_model(junk, CPU)
    wrong["nerve_bench"]["postprocess"]["thresh"] = 0.5
    torch.save(wrong, junk)
    with pytest.raises(NerveBenchError, match="junk.ckpt: bad stored post-processing"):
        predict.load_model(junk, CPU)
    del wrong["nerve_bench"]["postprocess"]["thresh"]
    for damage, message in (  # tracebacks before (ValueError, AttributeError)
        ({"nerve_bench": {**wrong["nerve_bench"], "postprocess": {"threshold": "x"}}}, "bad stored post-pro"),
        ({"hyper_parameters": {"config": "str"}}, "not a nerve-bench checkpoint"),
        ({"nerve_bench": "str"}, r"damaged checkpoint \(nerve_bench is not a mapping\)"),
    ):
        torch.save({**wrong, **damage}, junk)
        with pytest.raises(NerveBenchError, match=f"junk.ckpt: {message}"):
            predict.load_model(junk, CPU)
    assert main(["predict", "--checkpoint", str(tmp_path / "nope.ckpt"), "--input", str(bad),
                 "--out", str(tmp_path / "o")]) == 2  # fmt: skip
    assert "checkpoint not found" in capsys.readouterr().err
    # clamped to 1, and an entry lost between commas, without a word before
    for flags, line in (
        (["--batch-size", "0"], "error: --batch-size must be at least 1, got 0"),
        (
            ["--checkpoint", f"{ckpts[0]},,"],
            f"error: --checkpoint '{ckpts[0]},,': an empty entry between commas",
        ),
    ):
        argv = [
            "predict",
            "--checkpoint",
            str(ckpts[0]),
            "--input",
            str(synthetic_dir),
            "--out",
            str(tmp_path / "q"),
        ]
        assert main([*argv, *flags]) == 2 and not (tmp_path / "q").exists()
        assert capsys.readouterr().err.splitlines() == [line]


def test_every_damaged_input_is_named_at_once_and_the_good_ones_predicted(
    ckpts, synthetic_dir, tmp_path, capsys
):
    """Only the first bad file was named: a damaged copy took an attempt per file."""
    inputs = tmp_path / "in"
    shutil.copytree(synthetic_dir / "test", inputs)
    good = sorted(p.stem for p in inputs.glob("*.tif"))
    (inputs / "90.tif").write_bytes(b"")
    (inputs / "91.tif").write_bytes((inputs / f"{good[0]}.tif").read_bytes()[:300])
    write_tif(inputs / "92.tif", np.zeros((100, 100), np.uint8))
    out, sub = tmp_path / "o", tmp_path / "sub.csv"
    argv = ["predict", "--checkpoint", str(ckpts[0]), "--input", str(inputs), "--out", str(out)]
    assert main([*argv, "--submission", str(sub)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"error: {inputs}: 3 problems:"
    assert [line.split(": ")[0].strip() for line in lines[1:]] == [
        str(inputs / f"{n}.tif") for n in (90, 91, 92)
    ]
    assert "expected a 580x420 image" in lines[3]
    assert not sub.exists() and sorted(p.stem for p in out.glob("*.tif")) == good  # the rest are written


@pytest.mark.slow
def test_checkpoint_written_by_fit(synthetic_dir, tmp_path):
    """The real format: best.ckpt of a 1-epoch fit, with its tuned post-processing applied as stored."""
    from benchmark.pipeline import fit

    cfg = TrainConfig(model="unet", model_kwargs=TINY, epochs=1, image_size=64, batch_size=2,
                      limit_train_batches=2, logger="none", progress_bar=False)  # fmt: skip
    summary = fit(cfg, synthetic_dir, tmp_path / "run")
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    out, sub = tmp_path / "masks", tmp_path / "sub.csv"
    result = predict.predict_dir([best], synthetic_dir, out, submission=sub)
    assert result["postprocess"] == summary["postprocess"]
    _check_outputs(out, sub, [stem for stem, _ in predict.list_inputs(synthetic_dir)])


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_failed_write_leaves_the_previous_outputs_intact(
    ckpts, synthetic_dir, tmp_path, monkeypatch, capsys
):
    """Masks and submission are replaced atomically: a crash mid-write keeps the old files, no temp files."""
    import errno
    import os

    out, sub = tmp_path / "masks", tmp_path / "sub.csv"
    predict.predict_dir([ckpts[0]], synthetic_dir, out, submission=sub)
    masks, csv_bytes = _files(out), sub.read_bytes()

    def dies_half_way(path, arr, lzw=True):  # the disk fills after a partial tif
        Path(path).write_bytes(b"II*\x00partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(predict, "write_tif", dies_half_way)
    with pytest.raises(OSError, match="No space left"):
        predict.predict_dir([ckpts[1]], synthetic_dir, out, submission=sub)
    assert _files(out) == masks and sub.read_bytes() == csv_bytes
    monkeypatch.undo()
    real_replace = os.replace

    def no_rename_for_csv(src, dst, *args, **kwargs):
        if str(dst).endswith(".csv"):
            raise OSError(errno.EIO, "Input/output error", str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", no_rename_for_csv)
    args = ["predict", "--checkpoint", str(ckpts[1]), "--input", str(synthetic_dir), "--out", str(out),
            "--submission", str(sub)]  # fmt: skip
    assert main(args) == 1
    assert capsys.readouterr().err.strip() == f"error: {sub}: Input/output error"
    assert sub.read_bytes() == csv_bytes and sorted(p.name for p in tmp_path.iterdir()) == [
        "masks",
        "sub.csv",
    ]
    assert sorted(_files(out)) == sorted(masks)  # the new masks replaced the old ones, no temp files


def test_a_submission_whose_ids_are_not_the_samples_is_named(ckpts, synthetic_dir, tmp_path, capsys):
    """Kaggle refuses it; the ids of test/ were never compared with sample_submission.csv."""
    root = tmp_path / "root"
    (root / "test").mkdir(parents=True)
    for name in ("1.tif", "3.tif"):
        shutil.copy(synthetic_dir / "test" / "1.tif", root / "test" / name)
    (root / "sample_submission.csv").write_text("img,pixels\n1,\n2,\n")
    sub = tmp_path / "sub.csv"
    args = ["predict", "--checkpoint", str(ckpts[0]), "--input", str(root), "--out", str(tmp_path / "o")]
    # the masks and the CSV are still written, but `predict && kaggle submit` stops (exit 3)
    assert main([*args, "--submission", str(sub)]) == 3 and sub.is_file()
    out, err = capsys.readouterr()
    assert err == (
        f"warning: {sub}: its image ids differ from {root / 'sample_submission.csv'}: 1 missing (2); "
        "1 not in it (3)\n"
    )
    assert out.strip().endswith(
        f"submission {sub} (NOT one Kaggle accepts: its ids are not sample_submission.csv's)"
    )
    assert predict.sample_mismatch(root, ["2", "1"]) == "its ids are sample_submission.csv's in another order"
    assert predict.sample_mismatch(root, ["1", "2"]) is None
    assert predict.sample_mismatch(tmp_path, ["9"]) is None  # no sample_submission.csv there
    assert "1 missing (2)" in str(predict.sample_mismatch(root / "test", ["1"]))  # --input DIR/test
    (root / "sample_submission.csv").write_text("img,pixels\n3,\n1,\n")  # the same ids in another order
    assert main([*args, "--submission", str(sub)]) == 0 and "another order" in capsys.readouterr().err


def test_evaluate_refuses_a_directory_out_before_scoring(tmp_path, capsys):
    (tmp_path / "a_dir").mkdir()
    args = ["evaluate", "--checkpoint", str(tmp_path / "absent.ckpt"), "--data-dir", str(tmp_path)]
    assert main([*args, "--out", str(tmp_path / "a_dir")]) == 2  # not the checkpoint's error: first
    assert (
        capsys.readouterr().err
        == f"error: {tmp_path / 'a_dir'}: --out is a directory; expected the path of a .json file\n"
    )
