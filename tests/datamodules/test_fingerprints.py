"""Frame fingerprints: hand-computed bits, exact invariance to affine grey changes, robustness to
noise, separation of other frames, linked subjects, and the real pair of Kaggle subjects 17 and 18."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datamodules import fingerprints as fp
from datamodules.kaggle import load_train
from datamodules.synth import generate
from tests.conftest import SHARED_DATA

BITS = fp.bits_of((420, 580))


def _distance(a: np.ndarray, b: np.ndarray) -> int:
    """Hamming distance of two single-frame fingerprints (a reference for near_pairs)."""
    return int(np.unpackbits(a ^ b, count=BITS).sum())


def test_bits_by_hand_on_a_frame_of_equal_blocks():
    """42 x 58 px: one 2 x 2 block per bit. Blocks set to their own index, so exactly the upper
    half (index > median 304) is set; packbits puts the first block in the top bit of byte 0."""
    values = np.arange(609, dtype=np.uint16).reshape(21, 29) % 256  # 609 blocks, values wrap at 256
    frame = np.kron(values, np.ones((2, 2))).astype(np.uint8)[None]
    bits = np.unpackbits(fp.fingerprints(frame)[0], count=609)
    median = np.median(values)
    np.testing.assert_array_equal(bits, (values.ravel() > median).astype(np.uint8))
    assert fp.fingerprints(frame).shape == (1, 77)  # ceil(609 / 8)


def test_frames_smaller_than_the_grid_get_a_bit_per_pixel():
    frame = np.array([[[0, 10, 20], [30, 40, 50]]], np.uint8)  # median 25: the last three pixels
    assert fp.bits_of((2, 3)) == 6
    np.testing.assert_array_equal(np.unpackbits(fp.fingerprints(frame)[0], count=6), [0, 0, 0, 1, 1, 1])


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    gain=st.integers(1, 2),
    offset=st.integers(0, 50),
)
def test_an_affine_grey_change_leaves_the_fingerprint_exactly_as_it_was(seed, gain, offset):
    """gain * x + offset changes every block mean the same way, so no comparison with the median
    changes (values stay below 256: no clipping, no rounding)."""
    frame = np.random.default_rng(seed).integers(0, 101, (1, 420, 580), dtype=np.uint8)
    changed = (frame.astype(np.int64) * gain + offset).astype(np.uint8)
    np.testing.assert_array_equal(fp.fingerprints(changed), fp.fingerprints(frame))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[np.ndarray, np.ndarray]:
    out = tmp_path_factory.mktemp("fp")
    generate(out, subjects=6, per_subject=4, n_test=0, seed=0)
    ts = load_train(out)
    return np.asarray(ts.images), ts.subjects


def test_a_noisy_recontrasted_copy_is_near_and_other_subjects_are_far(synthetic):
    """The measured margins, on synthetic frames: noise of SD 8 grey levels and a contrast change
    stay within NEAR_FRACTION; every frame of another subject is at least 20% of the bits away."""
    images, subjects = synthetic
    noise = np.random.default_rng(0).normal(0, 8, images.shape)
    copies = np.clip(images * 0.9 + 12 + noise, 0, 255).astype(np.uint8)
    a, b = fp.fingerprints(images), fp.fingerprints(copies)
    worst_copy = max(_distance(a[k], b[k]) for k in range(len(a)))
    assert worst_copy <= fp.NEAR_FRACTION * BITS
    nearest_other = min(
        _distance(a[i], a[j]) for i in range(len(a)) for j in range(len(a)) if subjects[i] != subjects[j]
    )
    assert nearest_other >= 0.2 * BITS
    i, j = fp.near_pairs(b, a, BITS)
    assert (subjects[i] == subjects[j]).all() and set(i.tolist()) == set(range(len(a)))  # each finds itself


def test_subjects_that_share_a_frame_are_one_unit_transitively(synthetic):
    images, subjects = synthetic  # 6 subjects of 4 frames
    images = images.copy()
    noise = np.random.default_rng(1).normal(0, 6, images.shape[1:])
    images[4] = np.clip(0.9 * images[1] + 12 + noise, 0, 255)  # subject 2's first: 1's second, re-encoded
    images[13] = images[9]  # subject 4 shares a frame with subject 3
    images[8] = images[6]  # subject 3 shares one with subject 2: 1, 2, 3 and 4 are one unit
    units, links = fp.linked_units(subjects, fp.fingerprints(images), BITS)
    np.testing.assert_array_equal(units, np.where(subjects <= 4, 1, subjects))
    assert links == [(1, 2, 1, 1), (2, 3, 1, 1), (3, 4, 1, 1)]
    assert fp.link_records(links)[0] == {"subjects": [1, 2], "matching_frames": [1, 1]}
    assert (
        fp.describe(links[0])
        == "subjects 1 and 2 share frames (1 of 1's and 1 of 2's match, identical or re-encoded)"
    )
    assert (
        fp.counted_once(links[:2]) == " (subjects that share frames count once: 1+2, 2+3)"
        and fp.counted_once([]) == ""
    )
    plain, none = fp.linked_units(subjects, fp.fingerprints(synthetic[0]), BITS)
    np.testing.assert_array_equal(plain, subjects)  # no shared frame: units are the subjects
    assert none == []


def test_flat_frames_match_nothing():
    """A flat frame has no bit set (no block above the median): uninformative, never a link."""
    flat = np.full((2, 420, 580), 90, np.uint8)
    flat[1] = 30
    units, links = fp.linked_units(np.array([1, 2]), fp.fingerprints(flat), BITS)
    assert links == [] and units.tolist() == [1, 2]
    assert not fp.informative(fp.fingerprints(flat), BITS).any()


def test_fingerprints_do_not_depend_on_how_frames_are_chunked():
    frames = np.random.default_rng(3).integers(0, 256, (300, 42, 58), dtype=np.uint8)
    whole = fp.fingerprints(frames)
    np.testing.assert_array_equal(
        np.concatenate([fp.fingerprints(frames[:7]), fp.fingerprints(frames[7:])]), whole
    )
    odd = np.random.default_rng(4).integers(0, 256, (3, 43, 61), dtype=np.uint8)  # unequal blocks
    got = np.unpackbits(fp.fingerprints(odd), axis=1, count=609)
    rows, cols = -(-np.arange(21) * 43 // 21), -(-np.arange(29) * 61 // 29)  # ceil(i * size / blocks)
    for k in range(3):  # the slow way: each block's mean by slicing
        edges_r, edges_c = np.append(rows, 43), np.append(cols, 61)
        means = np.array(
            [
                [odd[k, edges_r[r] : edges_r[r + 1], edges_c[c] : edges_c[c + 1]].mean() for c in range(29)]
                for r in range(21)
            ]
        ).ravel()
        np.testing.assert_array_equal(got[k], (means > np.median(means)).astype(np.uint8))


def _restorer():
    """make_kaggle_layout.restore of ../shared/data/uns-positive (JPEG -> 580 x 420)."""
    script = SHARED_DATA / "uns-positive" / "make_kaggle_layout.py"
    if not script.is_file():
        pytest.skip(f"real data not found at {script.parent}")
    spec = importlib.util.spec_from_file_location("make_kaggle_layout", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.restore


@pytest.mark.realdata
def test_real_kaggle_subjects_17_and_18_are_one_patient():
    """Real frames: of subjects 17 to 20 (187 frames), only 17 and 18 share frames (24 pairs within
    5%, measured), and they become one unit."""
    restore = _restorer()
    jpegs = sorted(
        p
        for p in (SHARED_DATA / "uns-positive" / "images").glob("*.jpg")
        if p.stem.split("_")[0] in {"17", "18", "19", "20"}
    )
    images = np.stack([restore(p) for p in jpegs])
    subjects = np.array([int(p.stem.split("_")[0]) for p in jpegs])
    units, links = fp.linked_units(subjects, fp.fingerprints(images), BITS)
    assert links == [(17, 18, 12, 9)]  # measured: 12 of 17's 23 positive frames match 9 of 18's 28
    np.testing.assert_array_equal(units, np.where(subjects == 18, 17, subjects))


@pytest.mark.realdata
def test_real_frames_are_found_again_after_jpeg_and_restoration(uns_sample: Path):
    """The uns-sample tifs are the Kaggle originals; uns-positive holds 15 of them as 256-px JPEGs
    restored to 580 x 420 (about 31 dB PSNR). Each original finds its own copy."""
    restore = _restorer()
    train = load_train(uns_sample)
    stems = [s for s in train.stems if (SHARED_DATA / "uns-positive" / "images" / f"{s}.jpg").is_file()]
    assert len(stems) == 15
    originals = np.stack([train.images[train.stems.index(s)] for s in stems])
    copies = np.stack([restore(SHARED_DATA / "uns-positive" / "images" / f"{s}.jpg") for s in stems])
    a, b = fp.fingerprints(originals), fp.fingerprints(copies)
    assert max(_distance(a[k], b[k]) for k in range(15)) <= 8  # measured: at most 4 of 609 bits
    i, j = fp.near_pairs(a, b, BITS)
    assert set(zip(i.tolist(), j.tolist(), strict=True)) >= {(k, k) for k in range(15)}


def test_near_pairs_do_not_depend_on_the_chunk_size(synthetic):
    images, _ = synthetic
    noise = np.random.default_rng(2).normal(0, 6, images.shape)
    a, b = fp.fingerprints(images), fp.fingerprints(np.clip(images + noise, 0, 255).astype(np.uint8))
    whole = fp.near_pairs(a, b, BITS)
    for chunk in (1, 3, 7):
        got = fp.near_pairs(a, b, BITS, chunk=chunk)
        np.testing.assert_array_equal(got[0], whole[0])
        np.testing.assert_array_equal(got[1], whole[1])
    assert set(whole[0].tolist()) == set(range(len(a)))  # every frame found its copy, in every chunking


@pytest.mark.parametrize("rows_per_block", [257, 258])
def test_block_sums_do_not_overflow_at_the_fast_paths_bound(rows_per_block):
    """Equal blocks of up to 257 rows sum in uint16 (257 * 255 = 65535); 258 rows take the other path.
    Pixels of 254 and 255 overflow a uint16 column sum from 258 rows on."""
    frame = (254 + np.random.default_rng(5).integers(0, 2, (1, 21 * rows_per_block, 29))).astype(np.uint8)
    means = frame[0].reshape(21, rows_per_block, 29).mean(axis=1).ravel()  # one pixel per block column
    expected = (means > np.median(means)).astype(np.uint8)
    np.testing.assert_array_equal(np.unpackbits(fp.fingerprints(frame)[0], count=609), expected)
