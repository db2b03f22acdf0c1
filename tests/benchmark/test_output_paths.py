"""Output paths of predict, export, evaluate and folds: unusable ones, and ones that would replace
an input, are one line (exit 2) before any model is loaded or image read."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmark import predict
from benchmark.cli import main
from benchmark.core.config import TrainConfig
from benchmark.scoring.postprocess import PostProcess
from datamodules.errors import DataError
from tests.benchmark.checkpoints import TINY, save_ckpt


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> tuple[Path]:
    """One checkpoint with its post-processing (no test here gets as far as predicting)."""
    path = tmp_path_factory.mktemp("ckpts") / "a.ckpt"
    return (save_ckpt(path, TrainConfig(model="unet", model_kwargs=TINY, image_size=64), PostProcess(), 0),)


def test_unusable_output_paths_are_one_line(ckpts, synthetic_dir, tmp_path, capsys):
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "a_file").write_text("x")
    base = ["predict", "--checkpoint", str(ckpts[0]), "--input", str(synthetic_dir)]
    cases = [
        (["--out", str(tmp_path / "o"), "--submission", str(tmp_path / "a_dir")], 2,
         f"error: {tmp_path / 'a_dir'}: --submission is a directory; expected a .csv file path"),
        (["--out", str(tmp_path / "a_file")], 2,
         f"error: {tmp_path / 'a_file'}: --out is a file; expected a directory for the mask tifs"),
        (["--out", str(tmp_path / "o"), "--submission", str(tmp_path / "a_file" / "s.csv")], 2,
         f"error: {tmp_path / 'a_file'}: a file, not a folder; --submission {tmp_path / 'a_file' / 's.csv'} "
         "needs a folder there"),
        (["--out", str(tmp_path / "a_file" / "o")], 2,  # found at the first mask written: exit 1
         f"error: {tmp_path / 'a_file'}: a file, not a folder; --out {tmp_path / 'a_file' / 'o'} needs a "
         "folder there"),
        (["--out", str(synthetic_dir / "test")], 2,  # the masks would have replaced the images
         f"error: {synthetic_dir / 'test'}: --out is the folder of the images to predict;"
         " give another folder"),
    ]  # fmt: skip
    for extra, code, line in cases:
        assert main([*base, *extra]) == code
        assert capsys.readouterr().err.strip() == line
    assert not (tmp_path / "o").exists()


def test_outputs_that_would_replace_an_input_are_refused_before_the_work(ckpts, tmp_path, capsys):
    """`--submission DIR/sample_submission.csv` replaced Kaggle's sample, then checked the submission
    against itself (exit 0, not 3); `export --out` and `evaluate --out` could replace the checkpoint."""
    root = tmp_path / "root"
    (root / "test").mkdir(parents=True)
    (root / "train").mkdir()
    (root / "sample_submission.csv").write_text("img,pixels\n1,\n")
    checkpoint = tmp_path / "model.ckpt"
    shutil.copy(ckpts[0], checkpoint)
    base, out = ["--checkpoint", str(checkpoint)], ["--out", str(tmp_path / "o")]
    cases = [
        (["predict", *base, "--input", str(root / "test"), *out, "--submission",
          str(root / "sample_submission.csv")], root / "sample_submission.csv", "--submission"),
        (["predict", *base, "--input", str(root), *out, "--submission", str(checkpoint)],
         checkpoint, "--submission"),
        (["export", *base, "--out", str(checkpoint)], checkpoint, "--out"),
        (["evaluate", *base, "--data-dir", str(root), "--out", str(checkpoint)], checkpoint, "--out"),
        (["folds", "--data-dir", str(root), "--out", str(root / "sample_submission.csv")],
         root / "sample_submission.csv", "--out"),
        (["evaluate", *base, "--data-dir", str(root), "--out", str(root / "sample_submission.csv")],
         root / "sample_submission.csv", "--out"),  # one list of the layout's names for every command
    ]  # fmt: skip
    inside = [  # among the images (evaluate --out DATA/train/1_1.tif replaced a training image)
        (["evaluate", *base, "--data-dir", str(root), "--out", str(root / "test" / "1.tif")], root / "test"),
        (["predict", *base, "--input", str(root), *out, "--submission", str(root / "test" / "9.tif")],
         root / "test"),
        (["folds", "--data-dir", str(root), "--out", str(root / "train" / "folds.json")], root / "train"),
    ]  # fmt: skip
    before = {p: p.read_bytes() for p in (checkpoint, root / "sample_submission.csv")}
    for args, target, flag in cases:
        assert main(args) == 2
        assert capsys.readouterr().err == (
            f"error: {target}: {flag} is a file this command reads; give another path\n"
        )
    for args, folder in inside:
        assert main(args) == 2
        target = args[-1]
        assert capsys.readouterr().err == (
            f"error: {target}: {args[-2]} is in {folder}, which this command reads; give another path\n"
        )
    assert {p: p.read_bytes() for p in before} == before and not (tmp_path / "o").exists()
    same = ["predict", *base, "--input", str(root), *out, "--submission", str(tmp_path / "o")]
    assert main(same) == 2 and not (tmp_path / "o").exists()  # masks were written, then exit 1
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'o'}: --submission is the --out folder; give a .csv file path\n"
    )
    with pytest.raises(DataError, match="a file, not a folder of images"):
        predict.list_inputs(checkpoint)
