"""Synthetic Kaggle-layout ultrasound data: a stand-in when the real competition data is absent.

Each frame is a B-mode-like image built from an echogenicity map (bright, gently curved
horizontal fascia layers on streaky soft tissue), multiplied by spatially correlated Rayleigh
speckle (the fully developed speckle model, Goodman 1975; Burckhardt 1978) and by an exponential
depth attenuation. About ``positive_fraction`` of the frames contain the "nerve": a hypoechoic oval
with a bright echogenic rim, the brachial plexus' look in the Kaggle data; the mask is the oval.
Every frame also holds dark distractor blobs *without* a rim, so a model must learn the rim, not
just "find a dark blob". Frames of one subject share an anatomy (tissue map with its layers, nerve
position and size) with small frame-to-frame jitter, so subject-grouped splits matter as on Kaggle.

The output mirrors the competition layout exactly: ``train/<s>_<i>.tif``, ``train/<s>_<i>_mask.tif``
(uint8 {0, 255}, LZW), ``test/<n>.tif``, ``train_masks.csv`` and ``sample_submission.csv``.

**Same bytes on every machine, by construction.** Published results are keyed by the data's content
hash, so a fresh clone on any CPU (SSE/AVX2/AVX-512 x86-64, aarch64) must regenerate identical
files. numpy's SIMD transcendentals, float reductions, ``Generator.normal`` and scipy filters do not
guarantee that, so none of them is used. Every step that decides an output byte is one of:

* random draws from ``portable.Draws``: PCG64 raw integers only (uniforms, Irwin-Hall normals,
  noise bytes and permutations are derived with integer ops and exact int -> float conversions);
* Gaussian-like blurs as box / binomial filters on int64 (exact integer sums, any order);
* float64 ``+ - * /`` and ``sqrt``, which IEEE 754 rounds correctly on every CPU, one rounding per
  numpy ufunc call, so no FMA contraction is possible;
* ``portable.exp/log/sin/cos``: range reduction plus Horner polynomials made of those same ops;
* normalisers (texture std, speckle mean) computed analytically from the integer filter taps,
  never with ``mean()``/``std()``; the gamma-function value is a literal;
* exact operations: comparisons, min/max, clip, rint/round, slicing, float -> uint8 truncation of
  values already clipped to [0, 255]; no subnormals arise (``portable.exp`` clips its argument).

The speckle exponent is 0.75 (three square roots) rather than a ``power`` call for the same reason.
"""

from __future__ import annotations

import csv
import math
import numbers
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamodules.errors import DataError
from datamodules.io import write_tif
from datamodules.kaggle import LAYOUT_NAMES
from datamodules.portable import (
    NOISE_VARIANCE,
    Draws,
    binomial,
    box,
    box_small,
    cos,
    exp,
    kernel_energy,
    log,
    sin,
)
from datamodules.rle import KAGGLE_SHAPE, encode

H, W = KAGGLE_SHAPE
_MARGIN = 12  # tissue-map border, so frame-to-frame probe shifts need no wrap-around
_MAP_H, _MAP_W = H + 2 * _MARGIN, W + 2 * _MARGIN
_ROWS = np.arange(_MAP_H).astype(np.float64)  # integer arange converted exactly (float arange may not be)
_COLS = np.arange(_MAP_W).astype(np.float64)
_TEST_SUBJECT_BASE = 100_000  # test frames come from unseen "subjects", as on Kaggle

# Texture: streaks blurred far more along x than y. Three boxes of width w have variance 3 (w*w - 1) / 12:
# widths 3 and 29 give sigma 1.41 px and 14.5 px. The texture is exp(0.7 z) with z of unit variance,
# z's scale known exactly from the taps: var = NOISE_VARIANCE * sum of squared taps.
_TEX_Y, _TEX_X = (3, 3, 3), (29, 29, 29)
_TEX_SCALE = 0.7 / math.sqrt(NOISE_VARIANCE * kernel_energy(list(_TEX_Y), 0) * kernel_energy(list(_TEX_X), 0))
# Speckle: a complex field blurred by two [1,2,1] along y (sigma 1.0) and boxes 5, 5 + one [1,2,1] along
# x (sigma 2.1). Scanners smooth speckle: |z|**0.75 instead of full Rayleigh contrast. For a complex
# Gaussian of per-part variance s2, E|z|**0.75 = (2 s2)**0.375 * Gamma(1.375); dividing by it gives mean 1.
_SPECKLE_S2 = NOISE_VARIANCE * kernel_energy([], 2) * kernel_energy([5, 5], 1)
_GAMMA_1_375 = 0.8889135691562253
_ROOT8 = math.sqrt(math.sqrt(math.sqrt(2 * _SPECKLE_S2)))  # (2 s2)**0.125 via exact-rounded sqrt
_SPECKLE_NORM = 1.0 / (_ROOT8 * _ROOT8 * _ROOT8 * _GAMMA_1_375)
_DISPLAY = 255.0 / float(log(7.0))  # log compression log1p(2 x) / log1p(6), scaled to 8 bits


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
        y0, y1 = int(min(max(self.cy - half, 0), H)), int(min(max(self.cy + half + 1, 0), H))
        x0, x1 = int(min(max(self.cx - half, 0), W)), int(min(max(self.cx + half + 1, 0), W))
        dy, dx = _ROWS[y0:y1, None] - self.cy, _COLS[None, x0:x1] - self.cx
        c, s = float(cos(self.angle)), float(sin(self.angle))
        u, v = (c * dx + s * dy) / self.a, (c * dy - s * dx) / self.b
        rho = np.sqrt(u * u + v * v)
        # sin(3 theta + phase) with theta = atan2(v, u), from cos/sin theta = u/rho, v/rho: no atan2.
        inv = 1.0 / np.maximum(rho, 1e-9)  # at rho = 0, u = v = 0, so the lobe term is just 0
        ct, st = u * inv, v * inv
        sin3, cos3 = st * (3.0 - 4.0 * st * st), ct * (4.0 * ct * ct - 3.0)
        lobes = sin3 * float(cos(self.phase)) + cos3 * float(sin(self.phase))
        return (slice(y0, y1), slice(x0, x1)), rho / (1.0 + self.wobble * lobes)

    def jitter(self, draws: Draws, shift: float, scale: float) -> Oval:
        k = 1.0 + draws.uniform(-scale, scale)
        return Oval(
            self.cx + draws.normal(shift),
            self.cy + draws.normal(shift),
            self.a * k,
            self.b * k * (1.0 + draws.uniform(-scale, scale)),
            self.angle + draws.normal(0.05),
            self.wobble,
            self.phase + draws.normal(0.3),
        )


@dataclass(frozen=True)
class Anatomy:
    """What stays fixed for one subject: tissue map (texture + fascia layers), nerve, distractors."""

    tissue: np.ndarray  # (H + 2m, W + 2m) float64 echogenicity; frames crop it where the probe is
    nerve: Oval
    distractors: tuple[Oval, ...]
    depth_gain: np.ndarray  # (H, 1): depth attenuation times the speckle normaliser


def _random_oval(draws: Draws, a_range: tuple[float, float], xy_box: tuple) -> Oval:
    a = draws.uniform(*a_range)
    return Oval(
        cx=draws.uniform(xy_box[0], xy_box[1]),
        cy=draws.uniform(xy_box[2], xy_box[3]),
        a=a,
        b=a * draws.uniform(0.5, 0.85),
        angle=draws.uniform(-0.5, 0.5),
        wobble=draws.uniform(0.0, 0.08),
        phase=draws.uniform(0.0, 2 * math.pi),
    )


def _texture(draws: Draws) -> np.ndarray:
    """Streaky soft tissue: log-normal (a few bright streaks) of anisotropically blurred noise."""
    pad_y, pad_x = sum(w - 1 for w in _TEX_Y), sum(w - 1 for w in _TEX_X)
    field = draws.noise((_MAP_H + pad_y, _MAP_W + pad_x)).astype(np.int64)  # row cumsums pass 2**31
    for w in _TEX_Y:
        field = box_small(field, w, 0)
    for w in _TEX_X:
        field = box(field, w, 1)
    return exp(field.astype(np.float64) * _TEX_SCALE) * 0.6


def _add_layers(tissue: np.ndarray, draws: Draws) -> None:
    """Bright, gently curved fascia layers, in tissue-map coordinates."""
    n = draws.integer(6, 11)
    depth = np.sort(draws.uniform(15, H - 20, n)) + _MARGIN
    amp, period = draws.uniform(3, 25, n), draws.uniform(300, 1200, n)
    phase, thick, bright = (
        draws.uniform(0, 2 * math.pi, n),
        draws.uniform(2, 6, n),
        draws.uniform(1.2, 3.0, n),
    )
    for i in range(n):
        arg = (_COLS - _MARGIN) * (2 * math.pi / float(period[i])) + float(phase[i])
        centre = depth[i] + amp[i] * sin(arg)
        reach = 4.0 * float(thick[i])
        rows = slice(max(int(centre.min() - reach), 0), min(int(centre.max() + reach) + 1, _MAP_H))
        d = (_ROWS[rows, None] - centre[None, :]) / thick[i]
        tissue[rows] += bright[i] * exp(-(d * d))


def _anatomy(draws: Draws) -> Anatomy:
    tissue = _texture(draws)
    _add_layers(tissue, draws)
    nerve = _random_oval(draws, (36, 70), (170, W - 170, 120, 280))
    distractors = tuple(_random_oval(draws, (18, 45), (60, W - 60, 80, H - 60)) for _ in range(3))
    attenuation = draws.uniform(0.5, 1.1)
    depth_gain = exp(_ROWS[:H, None] * (-attenuation / H)) * _SPECKLE_NORM
    return Anatomy(tissue, nerve, distractors, depth_gain)


def _probe_view(anat: Anatomy, draws: Draws) -> np.ndarray:
    """A private copy of the tissue map where the (slightly moving) probe looks, with distractors."""
    dy, dx = (int(min(max(round(draws.normal(sd)), -_MARGIN), _MARGIN)) for sd in (3.0, 4.0))
    y0, x0 = _MARGIN + dy, _MARGIN + dx
    tissue = anat.tissue[y0 : y0 + H, x0 : x0 + W].copy()
    for blob in anat.distractors:  # dark, rimless: the negatives' hard cases
        win, r = blob.jitter(draws, 4.0, 0.06).radius()
        tissue[win] *= 1.0 - 0.8 / (1.0 + exp((r - 1.0) * 12.0))
    return tissue


def _speckle(draws: Draws) -> np.ndarray:
    """Correlated Rayleigh-like speckle |z|**0.75 (unnormalised; see _SPECKLE_NORM).

    Built as (part, x, y) so the wider x blurs run over whole rows (fast); |values| stay below
    255 * 25 * 4 * 16 < 2**19, well inside int32.
    """
    field = draws.noise((2, W + 10, H + 4))
    field = binomial(box_small(box_small(field, 5, 1), 5, 1), 1)
    field = binomial(binomial(field, 2), 2)
    re, im = field.astype(np.float64)
    fourth_root = np.sqrt(np.sqrt(re * re + im * im))  # re * re + im * im is an exact integer < 2**53
    return (fourth_root * np.sqrt(fourth_root)).T


def render(anat: Anatomy, draws: Draws, positive: bool) -> tuple[np.ndarray, np.ndarray]:
    """One frame: (image uint8, mask uint8 {0, 255}) of shape (420, 580)."""
    nerve = anat.nerve.jitter(draws, 6.0, 0.08) if positive else None
    tissue = _probe_view(anat, draws)
    mask = np.zeros((H, W), np.uint8)
    if nerve is not None:
        win, r = nerve.radius()
        inside = 1.0 / (1.0 + exp((r - 1.0) * 25.0))
        rim = (r - 1.12) / 0.13
        tissue[win] = tissue[win] * (1.0 - 0.8 * inside) + 1.6 * exp(-(rim * rim))
        mask[win] = (r <= 1.0) * 255
    img = tissue * _speckle(draws) * anat.depth_gain
    scale = draws.uniform(0.85, 1.05) * _DISPLAY
    return np.clip(log(img * 2.0 + 1.0) * scale, 0.0, 255.0).astype(np.uint8), mask


# The generator's parameters: type and allowed range (a config's synthetic.generator is checked too).
PARAMETERS = {
    "subjects": (int, lambda v: v >= 1, ">= 1"),
    "per_subject": (int, lambda v: v >= 1, ">= 1"),
    "n_test": (int, lambda v: v >= 0, "0 or more"),
    "seed": (int, lambda v: v >= 0, "0 or more"),
    "positive_fraction": (float, lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
}


def parameter_problem(params: dict) -> str | None:
    """What is wrong with :func:`generate`'s keyword arguments ``params`` (absent ones keep their
    defaults), in words; None when nothing is."""
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        return f"unknown generator parameter(s) {unknown} (known: {', '.join(PARAMETERS)})"
    for key, value in params.items():
        kind, ok, allowed = PARAMETERS[key]
        if isinstance(value, bool) or not isinstance(
            value, numbers.Real if kind is float else numbers.Integral
        ):
            return f"{key}={value!r} should be {'a number' if kind is float else 'an integer'}"
        if not ok(value):
            return f"{key} must be {allowed}, got {value}"
    return None


def _check_args(out_dir: Path, subjects: int, per_subject: int, n_test: int, frac: float, seed: int) -> None:
    args = dict(subjects=subjects, per_subject=per_subject, n_test=n_test, seed=seed, positive_fraction=frac)
    problem = parameter_problem(args)
    if problem:
        raise DataError(out_dir, problem)
    for sub in ("train", "test"):
        if (out_dir / sub).is_dir() and any((out_dir / sub).iterdir()):
            raise DataError(out_dir / sub, "already exists and is not empty; choose a new output directory")


def _positives(draws: Draws, n: int, frac: float) -> np.ndarray:
    """Exactly round(n * frac) positive frames, in random order (keeps folds balanced)."""
    flags = np.zeros(n, bool)
    flags[: int(round(n * frac))] = True
    return flags[draws.permutation(n)]


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
    """Write a synthetic dataset in the full Kaggle layout and return a summary dict.

    Written into a hidden folder inside ``out_dir`` and renamed into place: an interrupted call left
    a partial train/ that the same call then refused ("already exists and is not empty")."""
    out = Path(out_dir)
    _check_args(out, subjects, per_subject, n_test, positive_fraction, seed)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".synth-", dir=out))
    try:
        n_train, n_pos = _write_all(tmp, subjects, per_subject, n_test, seed, positive_fraction)
        for name in LAYOUT_NAMES:
            os.replace(tmp / name, out / name)  # train/ and test/ replace empty folders of theirs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"out_dir": str(out), "n_train": n_train, "n_subjects": subjects, "n_positive": n_pos,
            "n_test": n_test, "seed": seed, "shape": [H, W]}  # fmt: skip


def _write_all(
    out: Path, subjects: int, per_subject: int, n_test: int, seed: int, positive_fraction: float
) -> tuple[int, int]:
    """The layout's files in ``out``: (training frames, positive ones)."""
    (out / "train").mkdir()
    (out / "test").mkdir()
    rows, n_pos = [], 0
    for s in range(1, subjects + 1):
        anat = _anatomy(Draws(seed, s))
        flags = _positives(Draws(seed, s, 0), per_subject, positive_fraction)
        for i, positive in enumerate(flags, start=1):
            img, mask = render(anat, Draws(seed, s, i), bool(positive))
            write_tif(out / "train" / f"{s}_{i}.tif", img)
            write_tif(out / "train" / f"{s}_{i}_mask.tif", mask)
            rows.append([s, i, encode(mask)])
            n_pos += int(positive)
    _write_csv(out / "train_masks.csv", ["subject", "img", "pixels"], rows)
    test_flags = _positives(Draws(seed, _TEST_SUBJECT_BASE), n_test, positive_fraction)
    for n, positive in enumerate(test_flags, start=1):
        anat = _anatomy(Draws(seed, _TEST_SUBJECT_BASE + n))
        img, _ = render(anat, Draws(seed, _TEST_SUBJECT_BASE + n, 1), bool(positive))
        write_tif(out / "test" / f"{n}.tif", img)
    _write_csv(out / "sample_submission.csv", ["img", "pixels"], [[n, ""] for n in range(1, n_test + 1)])
    return len(rows), n_pos
