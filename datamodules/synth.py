"""Synthetic Kaggle-layout ultrasound data: a stand-in when the real competition data is absent.

Each frame is a B-mode-like image built from an echogenicity map (bright, gently curved
horizontal fascia layers on streaky soft tissue), multiplied by spatially correlated Rayleigh
speckle (the fully developed speckle model, Goodman 1975; Burckhardt 1978) and by an exponential
depth attenuation. About ``positive_fraction`` of the frames contain the "nerve": a hypoechoic oval
with a bright echogenic rim, the brachial plexus' look in the Kaggle data; the mask is the oval.
Every frame also holds dark distractor blobs *without* a rim, so a model must learn the rim, not
just "find a dark blob". Frames of one subject share an anatomy (layer layout, nerve position and
size) with small frame-to-frame jitter, so subject-grouped splits matter as they do on Kaggle.

The output mirrors the competition layout exactly: ``train/<s>_<i>.tif``, ``train/<s>_<i>_mask.tif``
(uint8 {0, 255}, LZW), ``test/<n>.tif``, ``train_masks.csv`` and ``sample_submission.csv``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from datamodules.errors import DataError
from datamodules.io import write_tif
from datamodules.rle import KAGGLE_SHAPE, encode

H, W = KAGGLE_SHAPE
_YY, _XX = np.mgrid[0:H, 0:W].astype(np.float32)
_MARGIN = 12  # texture border, so frame-to-frame probe shifts need no wrap-around
_TEST_SUBJECT_BASE = 100_000  # test frames come from unseen "subjects", as on Kaggle


@dataclass(frozen=True)
class Oval:
    cx: float
    cy: float
    a: float  # horizontal semi-axis (px)
    b: float  # vertical semi-axis (px)
    angle: float  # radians
    wobble: float  # amplitude of a 3-lobed boundary perturbation (fraction of the radius)
    phase: float

    def radius(self, reach: float = 1.6) -> tuple[tuple[slice, slice], np.ndarray]:
        """Normalised elliptic radius (<= 1 inside the wobbly oval) on the window where r < reach.

        Working on that window only keeps generation fast; outside it r >= reach everywhere.
        """
        half = max(self.a, self.b) * reach * (1.0 + self.wobble) + 2.0
        y0, y1 = int(np.clip(self.cy - half, 0, H)), int(np.clip(self.cy + half + 1, 0, H))
        x0, x1 = int(np.clip(self.cx - half, 0, W)), int(np.clip(self.cx + half + 1, 0, W))
        win = (slice(y0, y1), slice(x0, x1))
        dx, dy = _XX[win] - self.cx, _YY[win] - self.cy
        c, s = np.cos(self.angle), np.sin(self.angle)
        u, v = (c * dx + s * dy) / self.a, (-s * dx + c * dy) / self.b
        r = np.sqrt(u * u + v * v)
        return win, r / (1.0 + self.wobble * np.sin(3.0 * np.arctan2(v, u) + self.phase))

    def jitter(self, rng: np.random.Generator, shift: float, scale: float) -> Oval:
        k = 1.0 + rng.uniform(-scale, scale)
        return Oval(
            self.cx + rng.normal(0, shift),
            self.cy + rng.normal(0, shift),
            self.a * k,
            self.b * k * (1.0 + rng.uniform(-scale, scale)),
            self.angle + rng.normal(0, 0.05),
            self.wobble,
            self.phase + rng.normal(0, 0.3),
        )


@dataclass(frozen=True)
class Anatomy:
    """What stays fixed for one subject: tissue texture, fascia layers, nerve and distractors."""

    texture: np.ndarray  # (H + 2m, W + 2m) float32 streaky tissue echogenicity; frames crop it
    layers: np.ndarray  # (n, 5): depth, amplitude, period, phase, thickness
    brightness: np.ndarray  # (n,)
    nerve: Oval
    distractors: tuple[Oval, ...]
    attenuation: float


def _random_oval(rng: np.random.Generator, a_range: tuple[float, float], xy_box: tuple) -> Oval:
    a = rng.uniform(*a_range)
    return Oval(
        cx=rng.uniform(xy_box[0], xy_box[1]),
        cy=rng.uniform(xy_box[2], xy_box[3]),
        a=a,
        b=a * rng.uniform(0.5, 0.85),
        angle=rng.uniform(-0.5, 0.5),
        wobble=rng.uniform(0.0, 0.08),
        phase=rng.uniform(0, 2 * np.pi),
    )


def _anatomy(rng: np.random.Generator) -> Anatomy:
    # Horizontal streaks: white noise blurred far more along x than along y.
    noise = rng.standard_normal((H + 2 * _MARGIN, W + 2 * _MARGIN)).astype(np.float32)
    texture = gaussian_filter(noise, sigma=(1.5, 14.0))
    texture = np.exp(0.7 * texture / (texture.std() + 1e-6))  # log-normal: a few bright streaks
    n = int(rng.integers(6, 11))
    layers = np.stack(
        [
            np.sort(rng.uniform(15, H - 20, n)),
            rng.uniform(3, 25, n),
            rng.uniform(300, 1200, n),
            rng.uniform(0, 2 * np.pi, n),
            rng.uniform(2, 6, n),
        ],
        1,
    )
    nerve = _random_oval(rng, (36, 70), (170, W - 170, 120, 280))
    distractors = tuple(_random_oval(rng, (18, 45), (60, W - 60, 80, H - 60)) for _ in range(3))
    return Anatomy(
        texture.astype(np.float32),
        layers.astype(np.float32),
        rng.uniform(1.2, 3.0, n).astype(np.float32),
        nerve,
        distractors,
        attenuation=float(rng.uniform(0.5, 1.1)),
    )


def _echogenicity(anat: Anatomy, rng: np.random.Generator, nerve: Oval | None) -> np.ndarray:
    """Noise-free tissue reflectivity for one frame (before speckle and attenuation)."""
    dy, dx = np.clip(rng.normal(0, [3.0, 4.0]), -_MARGIN, _MARGIN)  # the probe moves a little
    y0, x0 = _MARGIN + int(round(dy)), _MARGIN + int(round(dx))
    tissue = anat.texture[y0 : y0 + H, x0 : x0 + W] * 0.6
    x = np.arange(W, dtype=np.float32)
    for (depth, amp, period, phase, thick), bright in zip(anat.layers, anat.brightness):
        centre = depth + dy + amp * np.sin(2 * np.pi * (x + dx) / period + phase)
        rows = slice(max(int(centre.min() - 4 * thick), 0), min(int(centre.max() + 4 * thick) + 1, H))
        tissue[rows] += bright * np.exp(-(((_YY[rows] - centre[None, :]) / thick) ** 2))
    for blob in anat.distractors:  # dark, rimless: the negatives' hard cases
        win, r = blob.jitter(rng, 4.0, 0.06).radius()
        tissue[win] *= 1.0 - 0.8 / (1.0 + np.exp((r - 1.0) * 12.0))
    if nerve is not None:
        win, r = nerve.radius()
        inside = 1.0 / (1.0 + np.exp((r - 1.0) * 25.0))
        tissue[win] = tissue[win] * (1.0 - 0.8 * inside) + 1.6 * np.exp(-(((r - 1.12) / 0.13) ** 2))
    return tissue


def _speckle(rng: np.random.Generator) -> np.ndarray:
    """Correlated Rayleigh speckle with unit mean: |blurred complex Gaussian|."""
    re, im = rng.standard_normal((2, H, W)).astype(np.float32)
    re, im = gaussian_filter(re, (1.0, 2.2)), gaussian_filter(im, (1.0, 2.2))
    mag = np.sqrt(re * re + im * im)
    return (mag / mag.mean()) ** 0.7  # scanners smooth speckle; full Rayleigh contrast looks too grainy


def render(anat: Anatomy, rng: np.random.Generator, positive: bool) -> tuple[np.ndarray, np.ndarray]:
    """One frame: (image uint8, mask uint8 {0, 255}) of shape (420, 580)."""
    nerve = anat.nerve.jitter(rng, 6.0, 0.08) if positive else None
    img = _echogenicity(anat, rng, nerve) * _speckle(rng)
    img *= np.exp(-anat.attenuation * _YY / H)
    img = np.log1p(2.0 * img) / np.log1p(2.0 * 3.0)  # log compression, like a scanner's display
    out = np.clip(img * 255.0 * rng.uniform(0.85, 1.05), 0, 255).astype(np.uint8)
    mask = np.zeros((H, W), np.uint8)
    if nerve is not None:
        win, r = nerve.radius()
        mask[win] = (r <= 1.0) * 255
    return out, mask


def _check_args(out_dir: Path, subjects: int, per_subject: int, n_test: int, frac: float) -> None:
    if subjects < 1 or per_subject < 1 or n_test < 0:
        raise DataError(
            out_dir,
            f"need subjects >= 1, per_subject >= 1, n_test >= 0 (got {subjects}, {per_subject}, {n_test})",
        )
    if not 0.0 <= frac <= 1.0:
        raise DataError(out_dir, f"positive_fraction={frac} is outside [0, 1]")
    for sub in ("train", "test"):
        if (out_dir / sub).is_dir() and any((out_dir / sub).iterdir()):
            raise DataError(out_dir / sub, "already exists and is not empty; choose a new output directory")


def _positives(rng: np.random.Generator, n: int, frac: float) -> np.ndarray:
    """Exactly round(n * frac) positive frames, in random order (keeps folds balanced)."""
    flags = np.zeros(n, bool)
    flags[: int(round(n * frac))] = True
    return rng.permutation(flags)


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def generate(
    out_dir: str | Path,
    subjects: int = 8,
    per_subject: int = 12,
    n_test: int = 10,
    seed: int = 0,
    positive_fraction: float = 0.5,
) -> dict:
    """Write a synthetic dataset in the full Kaggle layout and return a summary dict."""
    out = Path(out_dir)
    _check_args(out, subjects, per_subject, n_test, positive_fraction)
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "test").mkdir(parents=True, exist_ok=True)
    rows, n_pos = [], 0
    for s in range(1, subjects + 1):
        anat = _anatomy(np.random.default_rng([seed, s]))
        flags = _positives(np.random.default_rng([seed, s, 0]), per_subject, positive_fraction)
        for i, positive in enumerate(flags, start=1):
            img, mask = render(anat, np.random.default_rng([seed, s, i]), bool(positive))
            write_tif(out / "train" / f"{s}_{i}.tif", img)
            write_tif(out / "train" / f"{s}_{i}_mask.tif", mask)
            rows.append([s, i, encode(mask)])
            n_pos += int(positive)
    _write_csv(out / "train_masks.csv", ["subject", "img", "pixels"], rows)
    test_flags = _positives(np.random.default_rng([seed, _TEST_SUBJECT_BASE]), n_test, positive_fraction)
    for n, positive in enumerate(test_flags, start=1):
        anat = _anatomy(np.random.default_rng([seed, _TEST_SUBJECT_BASE + n]))
        img, _ = render(anat, np.random.default_rng([seed, _TEST_SUBJECT_BASE + n, 1]), bool(positive))
        write_tif(out / "test" / f"{n}.tif", img)
    _write_csv(out / "sample_submission.csv", ["img", "pixels"], [[n, ""] for n in range(1, n_test + 1)])
    return {
        "out_dir": str(out),
        "n_train": len(rows),
        "n_subjects": subjects,
        "n_positive": n_pos,
        "n_test": n_test,
        "seed": seed,
        "shape": [H, W],
    }
