"""KaggleScores: per-image rows kept as torchmetrics state, de-duplicated, sorted, scored by hand values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmark.scoring.counts import dedupe_sorted, score_counts
from benchmark.scoring.kaggle_scores import KaggleScores


def _masks(*pixel_sets: list[tuple[int, int]], shape=(6, 8)) -> torch.Tensor:
    out = torch.zeros(len(pixel_sets), *shape)
    for i, pixels in enumerate(pixel_sets):
        for r, c in pixels:
            out[i, r, c] = 1.0
    return out


def test_rows_are_deduplicated_sorted_and_scored_with_the_kaggle_empty_rule():
    m = KaggleScores()
    # Image 7: predicted 2 pixels, 1 of them true -> tp=1, fp=1, fn=1: Dice 2/4 = 0.5.
    # Image 3: nothing predicted, nothing true -> Dice 1 (empty rule).
    prob = _masks([(0, 0), (0, 1)], [])
    truth = _masks([(0, 0), (1, 1)], [])
    m.update(prob * 0.9, truth, torch.tensor([7, 3]), torch.tensor([0.9, 0.2]))
    # Image 7 again (a DistributedSampler repeat) and image 1: one false-positive pixel on an empty truth.
    m.update(_masks([(0, 0), (0, 1)], [(5, 7)]) * 0.9, _masks([(0, 0), (1, 1)], []),
             torch.tensor([7, 1]), torch.tensor([0.9, 0.6]))  # fmt: skip
    out = m.compute()
    assert out["index"].tolist() == [1, 3, 7]
    assert out["counts"].tolist() == [[0, 1, 0, 47], [0, 0, 0, 48], [1, 1, 1, 45]]
    assert out["dice"].tolist() == [0.0, 1.0, 0.5]
    assert out["true_empty"].tolist() == [True, True, False]
    assert out["presence_prob"].tolist() == pytest.approx([0.6, 0.2, 0.9])
    assert out["metrics"]["kaggle_dice"] == pytest.approx(0.5)
    assert out["metrics"]["dice_positive"] == pytest.approx(0.5)
    assert out["metrics"]["presence_accuracy"] == pytest.approx(2 / 3)  # image 1 wrongly "present"


def test_threshold_is_strictly_above_one_half():
    m = KaggleScores()
    truth = _masks([(0, 0)])
    m.update(torch.full((1, 6, 8), 0.5), truth, torch.tensor([0]), torch.tensor([0.5]))
    assert m.compute()["counts"].tolist() == [[0, 0, 1, 47]]


def test_reset_starts_a_new_pass_and_an_empty_pass_scores_nan():
    m = KaggleScores()
    m.update(_masks([]), _masks([]), torch.tensor([4]), torch.tensor([0.1]))
    assert m.compute()["index"].tolist() == [4]
    m.reset()
    with pytest.warns(UserWarning, match="compute"):
        out = m.compute()
    assert out["index"].shape == (0,) and out["counts"].shape == (0, 4)
    assert math.isnan(out["metrics"]["kaggle_dice"])


def test_update_rejects_mismatched_inputs():
    m = KaggleScores()
    with pytest.raises(ValueError, match="one .B, H, W. shape"):
        m.update(torch.zeros(2, 6, 8), torch.zeros(2, 6, 9), torch.tensor([0, 1]), torch.zeros(2))
    with pytest.raises(ValueError, match="1 indices and 2 presences for 2 images"):
        m.update(torch.zeros(2, 6, 8), torch.zeros(2, 6, 8), torch.tensor([0]), torch.zeros(2))


def test_state_is_not_in_the_state_dict():
    """Checkpoints of modules holding the metric keep exactly the model's keys."""
    m = KaggleScores()
    m.update(_masks([]), _masks([]), torch.tensor([0]), torch.tensor([0.0]))
    assert m.state_dict() == {}


def test_counts_stay_int64_on_the_device_of_the_inputs():
    m = KaggleScores()
    m.update(_masks([(1, 1)]), _masks([(1, 1)]), torch.tensor([2], dtype=torch.int32), torch.tensor([0.7]))
    assert m.counts[0].dtype == torch.int64 and m.index[0].dtype == torch.int64
    assert np.array_equal(m.compute()["counts"], [[1, 0, 0, 47]])


def test_dedupe_keeps_the_first_row_of_a_repeated_index_even_when_sorted():
    """Index 1, 2, 2, 3 is sorted but not unique (a sampler repeat next to its original): the fast
    path must not take it as done. The first row of index 2 (x = 1) is kept."""
    out = dedupe_sorted({"index": np.array([1, 2, 2, 3]), "x": np.arange(4)})
    assert out["index"].tolist() == [1, 2, 3] and out["x"].tolist() == [0, 1, 3]


def test_score_counts_judges_presence_by_the_presence_probability():
    """Counts (tp, fp, fn, tn): image 0 a found nerve, image 1 an empty truth left empty. Presence
    probabilities 0.9 and 0.6 say both present: accuracy 1/2 (from the masks it would be 1)."""
    counts = np.array([[5, 0, 0, 15], [0, 0, 0, 20]])
    assert score_counts(counts, np.array([0.9, 0.6]))["presence_accuracy"] == 0.5
    assert score_counts(counts, None)["presence_accuracy"] == 1.0
