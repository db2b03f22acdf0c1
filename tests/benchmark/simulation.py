"""Clustered per-image Dice whose subject effects depend on subject size, with its exact truth.

A subject has w frames, w uniform on 5..80, and size covariate s = (w - 42.5) / 37.5 in [-1, 1].
Model m's latent score on frame f of subject i is

    MU + (SIZE_EFFECT + slope_m) s_i + shift_m + (shared_i + shared_if) + (own_mi + own_mif)

with normal subject and frame effects (total sd SD, a share SHARED common to all models: image and
subject difficulty), and Dice = clip(latent, 0, 1): a mass at 1 (empty predicted on an empty truth, or
a perfect mask) and at 0 (a miss), as on Kaggle. Bigger subjects are easier (SIZE_EFFECT > 0), and a
model's ``slope`` makes it better on small or on big subjects, so the image-weighted mean (what the
board ranks) and the subject-weighted mean differ, for a model and for a difference of two.

Given w the latent is N(mu(w), SD^2), so E[Dice | w] is a clipped-normal mean in closed form and the
population truths are exact sums over w = 5..80:
    image-weighted   sum_w w E[Dice | w] / sum_w w        (the board's estimand)
    subject-weighted mean_w E[Dice | w]                   (what per-subject means estimate)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, special

MU, SD = 0.95, 0.5  # about half the frames at exactly 1, a few at 0
SIZE_EFFECT = 0.15  # latent gain from the middle to the biggest subject size
SHARED = 0.7  # share of the latent variance common to every model
SIZES = np.arange(5, 81)  # frames per subject, uniform


def covariate(sizes: np.ndarray) -> np.ndarray:
    return (np.asarray(sizes, dtype=float) - 42.5) / 37.5


def clip_mean(mu: np.ndarray, sd: float) -> np.ndarray:
    """E[clip(X, 0, 1)] for X ~ N(mu, sd^2): E[X; 0 < X < 1] + P(X >= 1)."""
    a, b = -mu / sd, (1 - mu) / sd
    pdf = lambda x: np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)  # noqa: E731 (scipy.stats is 50x slower)
    inside = mu * (special.ndtr(b) - special.ndtr(a)) + sd * (pdf(a) - pdf(b))
    return inside + special.ndtr(-b)


@dataclass(frozen=True)
class Model:
    shift: float = 0.0  # latent offset
    slope: float = 0.0  # extra latent gain per unit of the size covariate

    def given_size(self, sizes: np.ndarray) -> np.ndarray:
        return clip_mean(MU + self.shift + (SIZE_EFFECT + self.slope) * covariate(sizes), SD)

    def truth(self, weighting: str = "image") -> float:
        """The exact population mean, image- or subject-weighted."""
        per_size = self.given_size(SIZES)
        weights = SIZES if weighting == "image" else np.ones(SIZES.size)
        return float((weights * per_size).sum() / weights.sum())


def matched(slope: float, target: float) -> Model:
    """The model with this slope whose image-weighted truth is ``target`` (root of a monotone map)."""
    shift = optimize.brentq(lambda c: Model(c, slope).truth() - target, -3.0, 3.0, xtol=1e-13)
    return Model(float(shift), slope)


def _effects(rng: np.random.Generator, subjects: np.ndarray, n: int, sd: float, icc: float) -> np.ndarray:
    return rng.normal(0.0, sd * np.sqrt(icc), n)[subjects] + rng.normal(
        0.0, sd * np.sqrt(1 - icc), subjects.size
    )


def draw(
    rng: np.random.Generator, models: list[Model], n_subjects: int, icc: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Dice (models x images), subject of each image, frames per subject) for one data set."""
    sizes = rng.integers(SIZES[0], SIZES[-1] + 1, n_subjects)
    subjects = np.repeat(np.arange(n_subjects), sizes)
    s = covariate(sizes)[subjects]
    shared = _effects(rng, subjects, n_subjects, SD * np.sqrt(SHARED), icc)
    dice = np.empty((len(models), subjects.size))
    for m, model in enumerate(models):
        own = _effects(rng, subjects, n_subjects, SD * np.sqrt(1 - SHARED), icc)
        dice[m] = np.clip(MU + model.shift + (SIZE_EFFECT + model.slope) * s + shared + own, 0.0, 1.0)
    return dice, subjects, sizes


def totals(dice: np.ndarray, subjects: np.ndarray, n_subjects: int) -> np.ndarray:
    """Per-subject totals (models x subjects)."""
    return np.stack([np.bincount(subjects, weights=d, minlength=n_subjects) for d in dice])


def draw_runs(
    rng: np.random.Generator, n_subjects: int, folds: int, seeds: int, tau: float, models: int = 2
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """Equal architectures trained ``seeds`` times per outer fold: every run (seed x fold) is a new
    network that shifts its fold's latent scores by N(0, tau) and draws fresh per-frame noise.
    (per model its Dice (seeds x images), subject of each image, frames per subject, fold of each
    subject). The truth, integrated over runs, is the mean of Model(shift=g).truth() over g ~ N(0, tau)."""
    sizes = rng.integers(SIZES[0], SIZES[-1] + 1, n_subjects)
    subjects = np.repeat(np.arange(n_subjects), sizes)
    fold_of = rng.permutation(n_subjects) % folds
    base = MU + SIZE_EFFECT * covariate(sizes)[subjects] + rng.normal(0, SD * np.sqrt(SHARED), subjects.size)
    own = SD * np.sqrt(1 - SHARED)
    out = []
    for _ in range(models):
        runs = [base + rng.normal(0, tau, folds)[fold_of][subjects] + rng.normal(0, own, subjects.size)
                for _ in range(seeds)]  # fmt: skip
        out.append(np.clip(np.stack(runs), 0.0, 1.0))
    return out, subjects, sizes, fold_of
