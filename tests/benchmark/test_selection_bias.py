"""Selection bias of post-processing tuning, measured with predictions that carry NO signal.

Simulated data (small 24x32 frames so it runs in seconds): each subject has a positive fraction
q ~ U(0.2, 0.7); a positive frame's truth is a box near the typical nerve location. The "model"
predicts a box from the same location prior with a per-frame intensity sigmoid(a_subject + b_frame),
drawn independently of the truth: its masks look plausible but say nothing about the truth.
Clustering (a and q per subject) is what makes tuning on few subjects overfit.

Because prediction and truth are independent, the TRUE expected Kaggle Dice of any rule
(threshold t, min area A, presence tau) is known in closed form up to box geometry:
``(1 - Q) (1 - P_I P_A) + Q P_I E[dice(box_pred, box_true); area >= A]`` with Q = E[q] = 0.45,
P_I = P(intensity > max(t, tau)) from the normal level, and the box terms from 20k box pairs.

* Nested protocol: tune on an inner set of subjects, score the outer set once. Its reported score
  must equal the chosen rule's true score within noise.
* In-sample tuning (the old protocol): tune and score on the same outer set. It overstates: its
  excess over the nested score on the SAME outer set (which cancels that set's sampling error,
  and whose expectation is the in-sample bias since the nested error has mean 0) is positive.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from benchmark.scoring import postprocess
from benchmark.scoring.metrics import confusion_counts, image_dice

H, W = 24, 32
Q_MEAN = 0.45  # mean of U(0.2, 0.7): the population's positive fraction
SUBJECT_SD, FRAME_SD = 1.2, 0.5  # logit-scale intensity effects of the no-signal "model"
LEVEL_SD = float(np.hypot(SUBJECT_SD, FRAME_SD))  # marginal sd of one frame's level
GRID = {"min_areas": (0, 30, 45, 60, 80)}  # box areas are 30..108 px; thresholds and taus default
N_REPS = 150


def _boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, H, W) masks of boxes 5-9 x 6-12 px around the typical location, always fully inside."""
    h, w = rng.integers(5, 10, n), rng.integers(6, 13, n)
    top = np.clip(np.round(12 + rng.normal(0, 3, n) - h / 2), 0, H - h).astype(int)
    left = np.clip(np.round(16 + rng.normal(0, 4, n) - w / 2), 0, W - w).astype(int)
    rows, cols = np.arange(H)[None, :, None], np.arange(W)[None, None, :]
    in_rows = (rows >= top[:, None, None]) & (rows < (top + h)[:, None, None])
    return in_rows & (cols >= left[:, None, None]) & (cols < (left + w)[:, None, None])


def _dataset(rng: np.random.Generator, n_subjects: int) -> tuple[np.ndarray, np.ndarray]:
    """(prob, truth) for ``n_subjects`` subjects of 20-40 frames; prob independent of truth."""
    subjects = np.repeat(np.arange(n_subjects), rng.integers(20, 41, n_subjects))
    q = rng.uniform(0.2, 0.7, n_subjects)[subjects]
    truth = _boxes(rng, subjects.size) & (rng.random(subjects.size) < q)[:, None, None]
    level = rng.normal(0, SUBJECT_SD, n_subjects)[subjects] + rng.normal(0, FRAME_SD, subjects.size)
    intensity = 1.0 / (1.0 + np.exp(-level))
    prob = np.where(_boxes(rng, subjects.size), intensity[:, None, None], 0.05).astype(np.float32)
    return prob, truth


def _score(prob: np.ndarray, truth: np.ndarray, params: postprocess.PostProcess) -> float:
    return float(image_dice(confusion_counts(postprocess.apply(prob, params), truth)).mean())


def _dice(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return 2.0 * (a & b).sum(axis=(1, 2)) / (a.sum(axis=(1, 2)) + b.sum(axis=(1, 2)))


@pytest.fixture(scope="module")
def true_score():
    """Closed-form expected Kaggle Dice of a rule on the population (see the module docstring)."""
    rng = np.random.default_rng(99)
    pred_box, true_box = _boxes(rng, 20000), _boxes(rng, 20000)
    area, dice = pred_box.sum(axis=(1, 2)), _dice(pred_box, true_box)

    def score(params: postprocess.PostProcess) -> float:
        cut = max(params.threshold, params.presence_tau)  # kept iff intensity > t and >= tau
        p_level = 1.0 if cut <= 0 else float(sps.norm.sf(np.log(cut / (1 - cut)) / LEVEL_SD))
        big = area >= params.min_area
        return (1 - Q_MEAN) * (1 - p_level * big.mean()) + Q_MEAN * p_level * float((dice * big).mean())

    return score


def test_true_score_matches_direct_simulation(true_score):
    # 4000 independent frames (one per subject: no clustering noise) vs the closed form.
    rng = np.random.default_rng(5)
    n = 4000
    truth = _boxes(rng, n) & (rng.random(n) < rng.uniform(0.2, 0.7, n))[:, None, None]
    intensity = 1.0 / (1.0 + np.exp(-rng.normal(0, LEVEL_SD, n)))
    prob = np.where(_boxes(rng, n), intensity[:, None, None], 0.05).astype(np.float32)
    for params in (postprocess.PostProcess(), postprocess.PostProcess(0.4, 60, 0.7)):
        assert _score(prob, truth, params) == pytest.approx(true_score(params), abs=0.02)


def test_nested_tuning_is_unbiased_in_sample_tuning_is_not(true_score):
    rng = np.random.default_rng(2024)
    nested, in_sample = np.empty(N_REPS), np.empty(N_REPS)
    for rep in range(N_REPS):
        inner, outer = _dataset(rng, 6), _dataset(rng, 8)  # ~15% of ~40 training subjects; a fold
        chosen, _ = postprocess.tune(*inner, **GRID)
        nested[rep] = _score(*outer, chosen) - true_score(chosen)
        chosen_here, reported = postprocess.tune(*outer, **GRID)
        in_sample[rep] = reported - true_score(chosen_here)
    # The same outer set's sampling error hits both protocols; their per-rep difference cancels
    # most of it, so the optimism of in-sample tuning is measured far more precisely.
    gap = in_sample - nested
    se_nested, se_gap = nested.std(ddof=1) / np.sqrt(N_REPS), gap.std(ddof=1) / np.sqrt(N_REPS)
    print(
        f"reported - true Dice over {N_REPS} reps: nested {nested.mean():+.4f} (se {se_nested:.4f}), "
        f"in-sample {in_sample.mean():+.4f} (worst {in_sample.max():+.4f}); "
        f"in-sample - nested {gap.mean():+.4f} (se {se_gap:.4f})"
    )
    assert abs(nested.mean()) <= 3 * se_nested  # equal to the truth within noise
    assert gap.mean() > 3 * se_gap and gap.mean() > 0.01  # in-sample tuning overstates
    assert in_sample.max() > 0.1  # and by far more than typical architecture gaps at worst
