"""Post-processing rules on hand cases; tuning finds the known fix and never loses to the defaults."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.core.config import ConfigError
from benchmark.scoring import metrics
from benchmark.scoring.postprocess import PostProcess, apply, to_u8, tune


def _blob(shape: tuple[int, int], n: int, value: float, start: int = 0) -> np.ndarray:
    """A (H,W) float32 map with n consecutive flat pixels (from start) set to value."""
    out = np.zeros(shape[0] * shape[1], dtype=np.float32)
    out[start : start + n] = value
    return out.reshape(shape)


def _kaggle(pred: np.ndarray, truth: np.ndarray) -> float:
    return metrics.compute_metrics(metrics.confusion_counts(pred, truth))["kaggle_dice"]


def test_threshold_is_strict():
    prob = np.array([[[0.2, 0.5, 0.51, 0.9]]], dtype=np.float32)
    assert apply(prob, PostProcess()).tolist() == [[[False, False, True, True]]]
    assert apply(prob, PostProcess(threshold=0.3)).tolist() == [[[False, True, True, True]]]


def test_min_area_empties_small_predictions():
    prob = np.stack([_blob((4, 5), 3, 0.9), _blob((4, 5), 5, 0.9)])  # areas 3 and 5
    out = apply(prob, PostProcess(min_area=4))
    assert out[0].sum() == 0 and out[1].sum() == 5  # area < min_area -> empty; area 5 kept whole
    assert apply(prob, PostProcess(min_area=3)).sum() == 8


def test_presence_gate_max_prob_and_presence_head():
    prob = np.stack([_blob((3, 3), 2, 0.6), _blob((3, 3), 2, 0.95)])  # max probs 0.6 and 0.95
    assert apply(prob, PostProcess(presence_tau=0.7)).sum((1, 2)).tolist() == [0, 2]
    assert apply(prob, PostProcess(presence_tau=0.6)).sum((1, 2)).tolist() == [2, 2]  # score >= tau kept
    head = np.array([0.9, 0.1])
    gated = apply(prob, PostProcess(presence_tau=0.5, presence_source="presence"), presence_prob=head)
    assert gated.sum((1, 2)).tolist() == [2, 0]
    # "max_prob" ignores the head; "presence" without a head falls back to the max prob.
    assert apply(prob, PostProcess(presence_tau=0.7), presence_prob=head).sum((1, 2)).tolist() == [0, 2]
    assert apply(prob, PostProcess(presence_tau=0.7, presence_source="presence")).sum((1, 2)).tolist() == [
        0,
        2,
    ]


def test_uint8_probabilities_match_float():
    rng = np.random.default_rng(1)
    prob = rng.random((5, 8, 9)).astype(np.float32)
    u8 = np.round(prob * 255).astype(np.uint8)
    params = PostProcess(threshold=0.5, min_area=20, presence_tau=0.99)
    np.testing.assert_array_equal(apply(u8, params), apply(u8.astype(np.float32) / 255, params))


def test_params_round_trip_and_validation():
    p = PostProcess(threshold=0.4, min_area=1500, presence_tau=0.3, presence_source="presence", tta=True)
    assert PostProcess.from_dict(p.to_dict()) == p
    assert PostProcess().to_dict() == {
        "threshold": 0.5, "min_area": 0, "presence_tau": 0.0, "presence_source": "max_prob", "tta": False,
    }  # fmt: skip
    with pytest.raises(ConfigError, match="unknown keys \\['thresh'\\]"):
        PostProcess.from_dict({"thresh": 0.5})
    with pytest.raises(ConfigError, match="postprocess: expected a mapping of .*, got str"):
        PostProcess.from_dict("x")  # its characters read as "unknown keys ['x']"
    for bad in ({"threshold": 1.5}, {"min_area": -1}, {"min_area": 2.5}, {"presence_source": "head"}):
        with pytest.raises(ConfigError, match="postprocess"):
            PostProcess(**bad)
    with pytest.raises(ValueError, match="differs"):
        tune(np.zeros((2, 3, 3), np.float32), np.zeros((2, 3, 4), bool))


def test_tune_finds_min_area_that_removes_small_false_positive():
    shape = (6, 6)
    prob = np.stack([_blob(shape, 5, 0.9), _blob(shape, 20, 0.9), _blob(shape, 0, 0.0)])
    truth = np.stack([_blob(shape, 0, 1), _blob(shape, 20, 1), _blob(shape, 0, 1)]).astype(bool)
    assert _kaggle(apply(prob, PostProcess()), truth) == pytest.approx(2 / 3)
    params, score = tune(prob, truth, min_areas=(0, 3, 10, 30), taus=(0.0,))
    assert params == PostProcess(threshold=0.5, min_area=10)  # 3 keeps the blob, 30 drops the nerve
    assert score == pytest.approx(1.0)


def test_tune_threshold_and_presence_tau_with_simplest_tie_break():
    shape = (6, 6)
    # Image 0: 30 px false positive (larger than the nerve) that only the presence head flags.
    prob = np.stack([_blob(shape, 30, 0.9), _blob(shape, 20, 0.4), _blob(shape, 0, 0.0)])
    truth = np.stack([_blob(shape, 0, 1), _blob(shape, 20, 1), _blob(shape, 0, 1)]).astype(bool)
    head = np.array([0.1, 0.9, 0.05])
    params, score = tune(prob, truth, head, thresholds=(0.3, 0.35, 0.6), min_areas=(0, 25), taus=(0.3, 0.5))
    # thresholds 0.3 and 0.35 tie (nearest 0.5 wins); taus 0.3 and 0.5 tie (lowest wins).
    assert params == PostProcess(threshold=0.35, min_area=0, presence_tau=0.3, presence_source="presence")
    assert score == pytest.approx(1.0)
    perfect = tune(truth.astype(np.float32), truth)[0]
    assert perfect == PostProcess()  # nothing to fix -> the identity


def test_tune_score_is_reproduced_by_apply_and_never_below_default():
    rng = np.random.default_rng(0)
    truth = np.zeros((40, 12, 14), dtype=bool)
    truth[::2, 3:8, 4:10] = True  # half the images have a nerve
    noise = rng.random(truth.shape).astype(np.float32)
    noisy = (rng.random((40, 1, 1)) > 0.5) & ~truth.any(axis=(1, 2), keepdims=True)
    prob = (0.9 * truth + 0.6 * noise * noisy).astype(np.float32)  # noise only on some empty truths
    params, score = tune(prob, truth, thresholds=(0.4, 0.5, 0.7), min_areas=(0, 10, 40), taus=(0.0, 0.8))
    assert score == pytest.approx(_kaggle(apply(prob, params), truth), abs=1e-12)
    default = _kaggle(apply(prob, PostProcess()), truth)
    assert score >= default
    assert score == pytest.approx(1.0) and default < 0.9  # the gate at 0.8 removes every noisy blob


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_tune_never_below_default_on_random_maps(seed: int):
    rng = np.random.default_rng(seed)
    truth = rng.random((12, 9, 11)) > 0.8
    truth[rng.random(12) > 0.5] = False
    prob = np.round(rng.random(truth.shape) * 255).astype(np.uint8)  # the compact uint8 form
    params, score = tune(prob, truth, thresholds=(0.45, 0.6, 0.9), min_areas=(0, 15), taus=(0.0, 0.99))
    assert score >= _kaggle(apply(prob, PostProcess()), truth)
    assert score == pytest.approx(_kaggle(apply(prob, params), truth), abs=1e-12)


@pytest.mark.parametrize("threshold", [0.35, 0.4, 0.45, 0.5, 0.55])
def test_float_and_uint8_probabilities_give_identical_masks(threshold):
    """Tuning sees uint8 round(p*255); applying to floats must cut at the same pixels.

    Before the fix 0.35 compared p*255 (float) with 89.25, so p in (0.3500, 0.3510) differed.
    """
    rng = np.random.default_rng(3)
    prob = rng.uniform(threshold - 0.004, threshold + 0.004, size=(4, 20, 30)).astype(np.float32)
    u8 = torch.ceil(torch.from_numpy(prob) * 255 - 0.5).to(torch.uint8).numpy()  # inference's formula
    pp = PostProcess(threshold=threshold, min_area=0, presence_tau=0.0)
    assert np.array_equal(apply(prob, pp), apply(u8, pp))
    assert np.array_equal(to_u8(prob), u8)


def test_the_device_path_gives_the_counts_of_apply_for_every_uint8_threshold():
    """post_counts keeps the maps on a GPU (an integer cut, areas and maxima to the host
    for the gate): its counts equal apply()'s masks counted on the host, for every threshold
    k/255 (whose float64 product with 255 may land a hair below or above k), float or uint8 input,
    min-area and both gate sources."""
    from benchmark.scoring.counts import confusion_counts_torch
    from benchmark.scoring.post_counts import post_counts

    rng = np.random.default_rng(0)
    prob = rng.random((12, 9, 11)).astype(np.float32) ** 3  # many low values, a few high
    prob[3] = 0.0  # an empty image
    truth = torch.from_numpy(rng.random((12, 9, 11)) > 0.8)
    presence = rng.random(12).astype(np.float32)
    exact = {k / 255 for k in range(255)}  # k / 255 * 255 == k in float64 for every k
    below = {float(np.nextafter(k / 255, 0)) for k in range(1, 255)}  # a hair under: p >= k is kept
    thresholds = sorted(exact | below | {0.2, 0.35, 0.5 + 1e-9})  # all in [0, 1)
    for i, threshold in enumerate(thresholds):
        pp = PostProcess(threshold=threshold, min_area=i % 7, presence_tau=(i % 5) / 5,
                         presence_source="presence" if i % 2 else "max_prob")  # fmt: skip
        for probs in (prob, to_u8(prob)):
            want = confusion_counts_torch(torch.from_numpy(apply(probs, pp, presence)), truth)
            for on_device in (True, False):  # the GPU's path, run here on CPU tensors; numpy's
                got = post_counts(torch.from_numpy(probs), torch.from_numpy(presence), truth, pp, on_device)
                assert torch.equal(got, want), (threshold, pp, on_device)


def test_both_quantisers_round_half_down_and_clip():
    """p * 255 = 127.5, 0.5 and 1.5 round half down to 127, 0 and 1 (torch.round, half to even, gives
    128, 0 and 2: p = 0.5 would turn foreground at threshold 0.5 on the device path); values outside
    [0, 1] clip instead of wrapping around in uint8 (-0.2 would give 205, 1.3 give 75)."""
    from benchmark.scoring import post_counts

    p = np.array([0.5, 1 / 510, 3 / 510, -0.2, 1.3], dtype=np.float32)
    assert to_u8(p).tolist() == [127, 0, 1, 0, 255]
    assert post_counts.to_u8(torch.from_numpy(p)).tolist() == [127, 0, 1, 0, 255]


def test_tune_cuts_strictly_above_the_threshold_like_apply():
    """Every pixel at 153 = 0.6 * 255 on an empty truth: threshold 0.6 keeps nothing (Dice 1), the
    identity's 0.5 keeps all (Dice 0). A tuning count with p >= 153 would score 0.6 as 0 too and,
    tied, pick 0.5."""
    prob, truth = np.full((1, 2, 2), 153, np.uint8), np.zeros((1, 2, 2), bool)
    params, score = tune(prob, truth, thresholds=(0.6,), min_areas=(0,), taus=(0.0,))
    assert params == PostProcess(threshold=0.6) and score == 1.0


def test_tune_keeps_an_image_whose_presence_score_equals_tau():
    """Image 0: a false positive the head scores 0.3; image 1: the nerve, head exactly 0.6. tau = 0.6
    empties image 0 and keeps image 1 (score >= tau, as apply does): 1.0. A tuning gate of score > tau
    would drop the nerve too (0.5, tied with tau 0) and miss the fix."""
    prob = np.stack([_blob((3, 3), 2, 0.9), _blob((3, 3), 2, 0.9)])
    truth = np.stack([_blob((3, 3), 0, 1), _blob((3, 3), 2, 1)]).astype(bool)
    head = np.array([0.3, 0.6])
    params, score = tune(prob, truth, head, thresholds=(0.5,), min_areas=(0,), taus=(0.6,))
    assert params == PostProcess(presence_tau=0.6, presence_source="presence") and score == 1.0
    assert _kaggle(apply(prob, params, head), truth) == 1.0


def test_tune_prefers_the_smaller_min_area_over_the_smaller_tau():
    """A 5 px false positive the head scores 0.1, beside a 20 px nerve scored 0.9: min_area 10 and
    tau 0.5 each fix it alone (Dice 1). Ties go to the lowest min_area first, so (0, 0.5), not (10, 0)."""
    shape = (6, 6)
    prob = np.stack([_blob(shape, 5, 0.9), _blob(shape, 20, 0.9)])
    truth = np.stack([_blob(shape, 0, 1), _blob(shape, 20, 1)]).astype(bool)
    params, score = tune(prob, truth, np.array([0.1, 0.9]), thresholds=(0.5,), min_areas=(10,), taus=(0.5,))
    assert (params.min_area, params.presence_tau, score) == (0, 0.5, 1.0)


def test_tune_adds_the_identity_to_custom_grids():
    """A 3 px nerve at 0.55: the custom grids (threshold 0.6, min_area 5, tau 0.7) each lose it, but the
    identity (0.5, 0, 0.0) is always searched too, so tuning never scores below the defaults."""
    prob = _blob((3, 3), 3, 0.55)[None]
    truth = _blob((3, 3), 3, 1)[None].astype(bool)
    assert tune(prob, truth, thresholds=(0.6,), min_areas=(5,), taus=(0.7,)) == (PostProcess(), 1.0)


def test_postprocess_counts_scores_a_last_chunk_of_one_image():
    """65 images are chunks of 64 and 1: the last image (2 px at 200 on a 1 px truth: tp 1, fp 1,
    fn 0, tn 2) must be counted too, and a single image is a chunk on its own."""
    from benchmark.scoring.post_counts import postprocess_counts

    prob = np.zeros((65, 2, 2), np.uint8)
    prob[64, 0] = 200
    truth = np.zeros((65, 2, 2), bool)
    truth[64, 0, 0] = True
    counts = postprocess_counts(prob, truth, None, PostProcess())
    assert counts.shape == (65, 4) and counts[0].tolist() == [0, 0, 0, 4]
    assert counts[64].tolist() == [1, 1, 0, 2]
    assert postprocess_counts(prob[64:], truth[64:], None, PostProcess()).tolist() == [[1, 1, 0, 2]]
