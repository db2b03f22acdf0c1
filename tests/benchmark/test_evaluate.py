"""evaluate(): says what it scores. On the checkpoint's training data only its outer fold (or every
image with a warning); on other data every image; stored post-processing; clear errors."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from benchmark.cli import main
from benchmark.evaluation.evaluate import evaluate
from benchmark.pipeline import fit
from datamodules.errors import NerveBenchError
from datamodules.io import read_tif, write_tif
from datamodules.synth import generate
from tests.benchmark.fitting import EMPTY, PER_SUBJECT, SUBJECTS, UNET

pytestmark = pytest.mark.slow


def test_on_its_training_data_only_the_outer_fold_is_scored(fit_runs, tmp_path):
    out = tmp_path / "eval.json"
    result = evaluate(fit_runs.run_dir(UNET) / "checkpoints" / "best.ckpt", fit_runs.data, out)
    per, fit_per = result["per_image"], fit_runs.unet["per_image"]
    assert result["scope"] == "outer_fold" and "outer fold, 22 of 66 images" in result["note"]
    assert result["n_images"] == 22 and per["index"] == fit_per["index"]  # bookkeeping: exact
    assert json.loads(out.read_text()) == result
    assert result["postprocess"] == fit_runs.unet["postprocess"]
    for key in ("true_empty", "stem", "subject"):
        assert per[key] == fit_per[key], key
    # The same images get the scores fit() reported for them (up to floating-point noise).
    for key in ("dice", "dice_raw", "iou"):
        np.testing.assert_allclose(per[key], fit_per[key], atol=1e-3, err_msg=key)
    assert result["metrics"]["post"]["kaggle_dice"] == pytest.approx(
        fit_runs.unet["metrics"]["post"]["kaggle_dice"], abs=1e-3
    )


def test_all_images_scores_training_images_too_with_a_warning(fit_runs):
    result = evaluate(fit_runs.run_dir(UNET) / "checkpoints" / "best.ckpt", fit_runs.data, all_images=True)
    assert result["scope"] == "all_images_including_training"
    assert (
        result["note"].startswith("warning:")
        and "44 of these 66 images trained or selected" in result["note"]
    )
    per = result["per_image"]
    assert per["index"] == list(range(SUBJECTS * PER_SUBJECT))
    outer = [per["dice"][i] for i in fit_runs.unet["per_image"]["index"]]
    np.testing.assert_allclose(outer, fit_runs.unet["per_image"]["dice"], atol=1e-3)
    assert np.mean(per["dice"]) == pytest.approx(result["metrics"]["post"]["kaggle_dice"])


def test_other_data_is_scored_in_full(fit_runs, synthetic_dir, tmp_path):
    other = tmp_path / "other"
    generate(other, subjects=SUBJECTS, per_subject=8, n_test=1, seed=1)
    result = evaluate(fit_runs.run_dir(UNET) / "checkpoints" / "best.ckpt", other)
    assert result["scope"] == "all_images" and result["n_images"] == 48  # another 6 x 8 dataset
    # Other patients numbered 1..6 like the checkpoint's own: no warning, as no frame matches.
    assert result["note"] == (
        "scoring all 48 images: none is a frame that trained or selected the checkpoint, identical or "
        "re-encoded"
    )
    # The session's 6 x 8 set has the same generator seed and shares frames with the checkpoint's
    # data (1_1, 1_2, 1_4, ...): a copy of the same patients. This test used to score all of it as
    # other data; now only the frames of the checkpoint's outer-fold subjects are scored.
    shared = evaluate(fit_runs.run_dir(UNET) / "checkpoints" / "best.ckpt", synthetic_dir)
    outer_subjects = set(fit_runs.unet["split"]["outer_subjects"])
    assert shared["scope"] == "images_not_seen_in_training" and 0 < shared["n_images"] < 48
    assert set(shared["per_image"]["subject"]) == outer_subjects
    assert shared["n_images"] == 8 * len(outer_subjects)


def _copy_without(src, dst, stems):
    """A copy of a synthetic layout (masks as tifs and csv rows) without the frames ``stems``."""
    shutil.copytree(src, dst)
    for stem in stems:
        for path in (dst / "train").glob(f"{stem}*.tif"):
            if path.stem in (stem, f"{stem}_mask"):
                path.unlink()
    rows = (dst / "train_masks.csv").read_text().splitlines()
    keep = [r for r in rows if "_".join(r.split(",")[:2]) not in stems]
    (dst / "train_masks.csv").write_text("\n".join(keep) + "\n")
    return dst


def test_a_subset_of_its_data_is_scored_without_the_frames_that_trained_or_selected_it(fit_runs, tmp_path):
    """One frame fewer: another content hash, so the outer-fold record no longer applies. The frames
    that trained or selected the checkpoint are known by their pixels and left out (they used to be
    scored as "not the checkpoint's training data")."""
    ckpt = fit_runs.run_dir(UNET) / "checkpoints" / "best.ckpt"
    outer_stems = fit_runs.unet["per_image"]["stem"]
    subset = _copy_without(fit_runs.data, tmp_path / "subset", [outer_stems[0]])
    result = evaluate(ckpt, subset)
    assert result["scope"] == "images_not_seen_in_training" and result["n_images"] == 21
    assert result["per_image"]["stem"] == outer_stems[1:]  # exactly the rest of the outer fold
    which = "44 of these 65 images match one of the 44 frames that trained or selected it"
    assert result["note"] == f"scoring 21 of 65 images: {which} (--all-images: all)"
    every = evaluate(ckpt, subset, all_images=True)
    assert every["scope"] == "all_images_including_training" and every["n_images"] == 65
    assert every["note"].startswith("warning: --all-images: 44 of these 65 images match one of the 44 frames")
    seen_only = _copy_without(fit_runs.data, tmp_path / "seen", outer_stems)
    with pytest.raises(
        NerveBenchError, match="every one of these 44 images trained or selected this checkpoint"
    ):
        evaluate(ckpt, seen_only)


def test_in_a_copy_of_its_data_a_changed_frame_of_a_training_subject_is_left_out(fit_runs, tmp_path):
    """The subject is the unit of independence: once matching frames show the data is a copy of the
    checkpoint's, a frame of a training subject that matches nothing (here: inverted) is left out too.
    A copy whose every frame was re-encoded (noise, another contrast) is still found frame by frame."""
    ckpt = fit_runs.run_dir(UNET) / "checkpoints" / "best.ckpt"
    seen_subjects = fit_runs.unet["split"]["fit_subjects"] + fit_runs.unet["split"]["inner_subjects"]
    changed = shutil.copytree(fit_runs.data, tmp_path / "changed")
    frame = sorted((changed / "train").glob(f"{seen_subjects[0]}_*[0-9].tif"))[0]
    write_tif(frame, 255 - read_tif(frame))
    result = evaluate(ckpt, changed)
    assert result["scope"] == "images_not_seen_in_training" and result["n_images"] == 22
    assert result["per_image"]["stem"] == fit_runs.unet["per_image"]["stem"]  # exactly the outer fold
    assert result["note"] == (
        "scoring 22 of 66 images: 43 of these 66 images match one of the 44 frames that trained or selected "
        "it, 1 more belong to its training subjects (--all-images: all)"
    )
    recoded = shutil.copytree(fit_runs.data, tmp_path / "recoded")
    rng = np.random.default_rng(0)
    for path in sorted((recoded / "train").glob("*[0-9].tif")):
        image = read_tif(path).astype(float)
        write_tif(path, np.clip(0.9 * image + 12 + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8))
    again = evaluate(ckpt, recoded)
    assert again["scope"] == "images_not_seen_in_training"
    assert again["per_image"]["stem"] == fit_runs.unet["per_image"]["stem"]  # exactly the outer fold
    assert again["note"].startswith(
        "scoring 22 of 66 images: 44 of these 66 images match one of the 44 frames that trained"
    )


def test_a_checkpoint_with_exact_digests_only_warns_about_subject_numbers(fit_runs, tmp_path):
    """Checkpoints written before fingerprints record sha256 digests: identical frames only. On data
    with none, frames of subjects numbered like its own get a warning (maybe a re-encoded copy)."""
    from datamodules.kaggle import frame_digests, load_train

    ckpt = torch.load(fit_runs.run_dir(UNET) / "checkpoints" / "best.ckpt", weights_only=True)
    record = ckpt["nerve_bench"]
    train = load_train(fit_runs.data)
    seen = np.setdiff1d(np.arange(len(train)), record["outer_indices"])
    record["seen_frames"] = sorted(frame_digests(train.images[seen]))
    del record["seen_fingerprints"]
    torch.save(ckpt, tmp_path / "digests.ckpt")
    subset = _copy_without(fit_runs.data, tmp_path / "subset", fit_runs.unet["per_image"]["stem"][:1])
    assert evaluate(tmp_path / "digests.ckpt", subset)["n_images"] == 21  # identical frames: found
    inverted = shutil.copytree(fit_runs.data, tmp_path / "inverted")
    for path in (inverted / "train").glob("*[0-9].tif"):
        write_tif(path, 255 - read_tif(path))
    result = evaluate(tmp_path / "digests.ckpt", inverted)
    assert result["scope"] == "all_images" and result["n_images"] == 66
    assert (
        "; warning: 44 of them belong to subjects numbered like ones that trained or selected it"
        in (result["note"])
    )


def test_a_checkpoint_without_its_frame_record_says_training_images_may_be_included(fit_runs, tmp_path):
    ckpt = torch.load(fit_runs.run_dir(UNET) / "checkpoints" / "best.ckpt", weights_only=True)
    for key in ("seen_fingerprints", "seen_subjects"):  # as written before the record existed
        del ckpt["nerve_bench"][key]
    torch.save(ckpt, tmp_path / "old.ckpt")
    subset = _copy_without(fit_runs.data, tmp_path / "subset", fit_runs.unet["per_image"]["stem"][:1])
    result = evaluate(tmp_path / "old.ckpt", subset)
    assert result["scope"] == "all_images" and result["note"] == (
        "warning: scoring all 65 images: the checkpoint does not record its training frames, training "
        "images may be included"
    )


def test_empty_model_on_real_sample_scores_its_empty_masks_exactly(uns_sample, tmp_path):
    summary = fit(dataclasses.replace(EMPTY, n_folds=2), uns_sample, tmp_path / "run")
    assert summary["status"] == "complete"
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    outer = evaluate(ckpt, uns_sample)
    assert outer["scope"] == "outer_fold" and outer["per_image"]["index"] == summary["per_image"]["index"]
    result = evaluate(ckpt, uns_sample, all_images=True)
    per = result["per_image"]
    assert result["n_images"] == 26 and len(per["stem"]) == 26
    empty = np.asarray(per["true_empty"])
    assert empty.sum() == 11
    assert np.all(np.asarray(per["dice"])[empty] == 1.0) and np.all(np.asarray(per["dice"])[~empty] == 0.0)
    assert result["metrics"]["raw"]["kaggle_dice"] == result["metrics"]["post"]["kaggle_dice"] == 11 / 26


def test_missing_or_invalid_checkpoint_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(NerveBenchError, match="checkpoint not found"):
        evaluate(tmp_path / "nope.ckpt", tmp_path)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(NerveBenchError, match=r"garbage\.ckpt: not a readable checkpoint"):
        evaluate(garbage, tmp_path)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(NerveBenchError, match="not a nerve-bench checkpoint"):
        evaluate(foreign, tmp_path)
    assert main(["evaluate", "--checkpoint", str(garbage), "--data-dir", str(tmp_path)]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err


def test_cli_evaluate_says_what_it_scores_and_writes_json(fit_runs, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    ckpt = str(fit_runs.run_dir(EMPTY) / "checkpoints" / "best.ckpt")
    assert main(["evaluate", "--checkpoint", ckpt, "--data-dir", str(fit_runs.data), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    result = json.loads(out.read_text())
    assert printed.out.splitlines()[0] == result["note"] and "only its outer fold" in result["note"]
    assert "kaggle_dice" in printed.out and f"{result['metrics']['post']['kaggle_dice']:.4f}" in printed.out
    assert result["metrics"]["post"]["kaggle_dice"] == float(np.mean(result["per_image"]["true_empty"]))
    argv = ["evaluate", "--checkpoint", ckpt, "--data-dir", str(fit_runs.data), "--all-images"]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert printed.err.count("warning: --all-images") == 1 and "66 images of" in printed.out


def test_reported_config_hash_is_the_runs_even_for_compiled_runs(fit_runs, tmp_path):
    """evaluate rebuilt the model with compile=False (and no pretrained download) and reported that
    config's hash, which matched no run when the run had compile or encoder_weights set."""
    import torch

    from benchmark.training.module import config_from_dict

    ckpt = torch.load(fit_runs.run_dir(UNET) / "checkpoints" / "best.ckpt", weights_only=True)
    ckpt["hyper_parameters"]["config"]["compile"] = True
    path = tmp_path / "compiled.ckpt"
    torch.save(ckpt, path)
    result = evaluate(path, fit_runs.data)
    trained = config_from_dict(ckpt["hyper_parameters"]["config"]).hash()
    assert result["config_hash"] == trained and trained != fit_runs.unet["config_hash"]


def test_fit_again_says_nothing_was_trained_and_prints_the_same_table(synthetic_dir, tmp_path, capsys):
    """A finished run asked again: one line saying so, then the same results in the same order (they
    used to come back without a word, their metrics in the alphabetical order of summary.json)."""
    args = ["fit", "--model", "empty", "--data-dir", str(synthetic_dir), "--out", str(tmp_path / "run"),
            "--n-folds", "3", "--image-size", "64", "--set", "accelerator=cpu"]  # fmt: skip
    assert main(args) == 0
    first = capsys.readouterr().out.splitlines()
    assert main(args) == 0
    again = capsys.readouterr().out.splitlines()
    assert again[0].startswith(f"{tmp_path / 'run'} already holds this run, complete (config hash ")
    assert again[0].endswith("): nothing trained") and again[1:] == first
    assert first[1].split()[0] == "metric" and first[2].split()[0] == "kaggle_dice"


def test_subjects_of_matching_frames_count_as_training_subjects_whatever_their_number():
    """A renumbered copy: frame 0 matches a frame the checkpoint saw (its subject 1); in this data
    it belongs to subject 11, so all of subject 11 is left out, beside the numbers it recorded."""
    from benchmark.evaluation.evaluate import UNSEEN, choose_images

    record = {"data_hash": "a", "outer_indices": [4, 5], "seen_fingerprints": [[0]], "seen_subjects": [1, 2]}
    subjects = np.array([11, 11, 12, 12, 2, 13])
    hit = np.array([True, False, False, False, False, False])
    kept, scope, note = choose_images(record, "b", 6, False, hit, subjects)
    assert scope == UNSEEN and kept.tolist() == [2, 3, 5]  # 11 by its frame, 2 by its number
    assert note == (
        "scoring 3 of 6 images: 1 of these 6 images match the frame that trained or selected it, 2 more "
        "belong to its training subjects (--all-images: all)"
    )


def test_data_of_training_subjects_only_has_nothing_to_score(fit_runs, tmp_path):
    """Every frame of the data trained or selected the checkpoint: one line naming the data."""
    ckpt = fit_runs.run_dir(UNET) / "checkpoints" / "best.ckpt"
    outer = set(json.loads((fit_runs.run_dir(UNET) / "summary.json").read_text())["split"]["outer_subjects"])
    copy = tmp_path / "seen"
    shutil.copytree(fit_runs.data, copy)
    for tif in (copy / "train").glob("*.tif"):
        if int(tif.name.split("_")[0]) in outer:
            tif.unlink()
    with pytest.raises(NerveBenchError, match=rf"^{copy}: every one of these \d+ images trained or selected"):
        evaluate(ckpt, copy)


def test_on_its_own_data_outer_frames_that_match_training_frames_are_pointed_out():
    """An unlinked split (link_subjects false, or an older version) can score a frame whose copy
    trained the checkpoint: the outer-fold score is then said not to be fully held out."""
    from benchmark.evaluation.evaluate import OUTER, choose_images

    record = {"data_hash": "a", "outer_indices": [3, 4, 5], "seen_fingerprints": [[0]], "seen_subjects": [1]}
    hit = np.array([False, False, False, True, False, False])
    kept, scope, note = choose_images(record, "a", 6, False, hit, np.array([1, 1, 1, 2, 2, 2]))
    assert scope == OUTER and kept.tolist() == [3, 4, 5]
    assert note.endswith(
        "; warning: 1 of them match frames that trained or selected it (subjects that share frames were "
        "split apart: link_subjects false), so this is not a fully held-out score"
    )
    clean = choose_images(record, "a", 6, False, np.zeros(6, bool), np.array([1, 1, 1, 2, 2, 2]))[2]
    assert "warning" not in clean


def test_a_resume_checkpoint_is_refused_with_the_checkpoint_to_evaluate(fit_runs, tmp_path):
    """last.ckpt has no scoring record: scored, it would count training frames as held out. (A
    finished run has deleted its last.ckpt; one of an interrupted run is the same weights without
    the record.)"""
    unfinished = torch.load(fit_runs.run_dir(UNET) / "checkpoints" / "best.ckpt", weights_only=True)
    del unfinished["nerve_bench"]  # best.ckpt gets its record when the run ends
    torch.save(unfinished, tmp_path / "best.ckpt")
    torch.save(unfinished, tmp_path / "last.ckpt")
    last = tmp_path / "last.ckpt"
    with pytest.raises(NerveBenchError, match=f"no scoring record .* evaluate {tmp_path / 'best.ckpt'}$"):
        evaluate(last, fit_runs.data)
    assert main(["evaluate", "--checkpoint", str(last), "--data-dir", str(fit_runs.data)]) == 2
    with pytest.raises(NerveBenchError, match="the run has not finished; finish it"):
        evaluate(tmp_path / "best.ckpt", fit_runs.data)


def test_a_cpu_run_trained_in_bf16_scores_as_evaluate_scores_it(fit_runs, tmp_path):
    """finalize scored a bf16-mixed CPU run under bf16 autocast, evaluate and predict in float32
    (presence AUC 0.573 vs 0.587 in a review): now both in float32 on a CPU, so they agree."""
    import dataclasses

    from benchmark.pipeline import fit
    from tests.benchmark.fitting import TINY, one_thread

    cfg = dataclasses.replace(TINY, precision="bf16-mixed", accelerator="cpu")
    with one_thread():
        summary = fit(cfg, fit_runs.data, tmp_path / cfg.run_name())
        result = evaluate(tmp_path / cfg.run_name() / "checkpoints" / "best.ckpt", fit_runs.data)
    assert result["per_image"]["index"] == summary["per_image"]["index"]
    for key in ("presence_prob", "dice_raw", "dice"):
        np.testing.assert_allclose(
            result["per_image"][key], summary["per_image"][key], atol=1e-6, err_msg=key
        )


def test_the_forward_pass_follows_the_stored_post_processings_tta(fit_runs, tmp_path, monkeypatch):
    """evaluate ran the config's tta where predict and export run the one the post-processing was
    tuned with; a checkpoint whose two differ (hand-edited) now scores as predict scores it."""
    from benchmark.evaluation import inference

    ckpt = torch.load(fit_runs.run_dir(UNET) / "checkpoints" / "best.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["config"]["tta"] is False
    ckpt["nerve_bench"]["postprocess"]["tta"] = True
    torch.save(ckpt, tmp_path / "edited.ckpt")
    ckpt["hyper_parameters"]["config"]["tta"] = True
    torch.save(ckpt, tmp_path / "both.ckpt")
    ran, predict_loader = [], inference.predict_loader
    monkeypatch.setattr(
        inference, "predict_loader", lambda m, *a, **k: ran.append(m.cfg.tta) or predict_loader(m, *a, **k)
    )
    edited, both = (evaluate(tmp_path / f"{n}.ckpt", fit_runs.data) for n in ("edited", "both"))
    assert ran == [True, True] and edited["postprocess"]["tta"] is True
    prob = edited["per_image"]["presence_prob"]
    np.testing.assert_allclose(prob, both["per_image"]["presence_prob"], atol=1e-6)
    plain = fit_runs.unet["per_image"]["presence_prob"]  # without the flip: another forward pass
    assert np.abs(np.subtract(prob, plain)).max() > 1e-4
