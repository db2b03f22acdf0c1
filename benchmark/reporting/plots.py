"""Leaderboard figures: Dice bar chart, validation overlays, training curves.

Rendered with matplotlib's Agg backend at a fixed dpi and with PNG metadata stripped, so the same
inputs give byte-identical files (the report is checked that way). Each PNG is written to a temp
name and renamed into place (benchmark.core.files), so a failed save leaves the previous figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from benchmark.core.files import atomic_path  # noqa: E402

DPI = 100
OVERLAY_DPI = 80  # speckle images barely compress: keep the committed overlay figure small
# No software/version or creation-time chunks: they would make equal figures differ in bytes.
_PNG_METADATA = {"Software": None}
_RED = matplotlib.colors.ListedColormap(["red"])
_RC = {"font.family": "DejaVu Sans", "font.size": 9, "svg.hashsalt": "nerve-bench", "path.simplify": True}


def _save(fig: plt.Figure, path: Path, dpi: int = DPI) -> Path:
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png", metadata=_PNG_METADATA)
    finally:
        plt.close(fig)
    return path


def _save_palette(fig: plt.Figure, path: Path, colors: int = 128) -> Path:
    """Save as an 8-bit palette PNG: photo-like speckle panels are ~3x smaller than RGBA."""
    from PIL import Image

    fig.set_dpi(OVERLAY_DPI)
    fig.canvas.draw()
    rgb = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])
    plt.close(fig)
    # Median cut without dithering is deterministic, so equal figures stay equal in bytes.
    palette = rgb.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    with atomic_path(path) as tmp:
        palette.save(tmp, format="PNG", optimize=True)
    return path


def leaderboard_png(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Horizontal bars of out-of-fold Kaggle Dice with subject-bootstrap 95% CIs; the baseline as a line.

    Dark bars: the top group, the 95% confidence set for the best model; light bars: the rest.
    """
    rows = [r for r in rows if r["metrics"]["kaggle_dice"]["mean"] is not None]
    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.6))
        y = np.arange(len(rows))[::-1]
        means = np.array([r["metrics"]["kaggle_dice"]["mean"] for r in rows])
        lo = np.array([_or(r["metrics"]["kaggle_dice"]["lo"], m) for r, m in zip(rows, means)])
        hi = np.array([_or(r["metrics"]["kaggle_dice"]["hi"], m) for r, m in zip(rows, means)])
        colors = [
            "0.6" if r["baseline"] else "tab:blue" if r.get("top_group") else "lightsteelblue" for r in rows
        ]
        ax.barh(y, means, xerr=np.vstack([means - lo, hi - means]), color=colors, capsize=3)
        ax.set_yticks(y, [r["model"] for r in rows])
        for r in rows:
            if r["baseline"]:
                mean = r["metrics"]["kaggle_dice"]["mean"]
                ax.axvline(mean, color="tab:red", ls="--", lw=1, label="empty-mask baseline")
                ax.legend(loc="lower right")
        ax.set_xlim(0, 1)
        ax.set_xlabel(
            "Kaggle Dice (post-processed, out-of-fold): mean, 95% CI (subject bootstrap)\n"
            "dark blue: the top group (95% confidence set for the best model)"
        )
        ax.set_title(title)
        fig.tight_layout()
        return _save(fig, path)


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def overlays_png(panels: list[tuple[str, dict[str, np.ndarray]]], path: Path, title: str) -> Path:
    """One row per model, one column per outer-fold image: image, truth contour (green), prediction (red)."""
    n_cols = max((len(p["stem"]) for _, p in panels), default=1)
    n_rows = max(len(panels), 1)
    # 1.7 x 1.3 in per panel (the 128x177 overlays' aspect) plus fixed margins for labels and title.
    width, height = 1.7 * n_cols + 0.3, 1.3 * n_rows + 0.7
    with plt.rc_context(_RC):
        fig, axes = plt.subplots(n_rows, n_cols, figsize=(width, height), squeeze=False)
        fig.subplots_adjust(
            left=0.3 / width,
            right=0.995,
            bottom=0.05 / height,
            top=1 - 0.65 / height,
            wspace=0.04,
            hspace=0.12,
        )
        for ax in axes.flat:
            ax.set_axis_off()
        for r, (model, p) in enumerate(panels):
            for c, stem in enumerate(p["stem"]):
                ax = axes[r, c]
                ax.imshow(p["image"][c], cmap="gray", vmin=0, vmax=255, interpolation="antialiased")
                ax.imshow(
                    np.ma.masked_equal(p["pred"][c], 0),
                    cmap=_RED,
                    alpha=0.45,
                    vmin=0,
                    vmax=1,
                    interpolation="nearest",
                )
                if p["truth"][c].any():
                    ax.contour(p["truth"][c], levels=[0.5], colors="lime", linewidths=0.8)
                if r == 0:
                    ax.set_title(str(stem), fontsize=8)
                if c == 0:
                    ax.text(-0.04, 0.5, model, transform=ax.transAxes, rotation=90, ha="right", va="center")
        fig.suptitle(title + "\ngreen: truth contour, red: prediction", fontsize=9, y=1 - 0.05 / height)
        return _save_palette(fig, path)


def curves_png(histories: list[tuple[str, dict[str, list]]], path: Path, title: str) -> Path:
    """Train loss, selection-set loss and selection-set Dice per epoch, one line per model.

    The per-epoch validation history is computed on the inner selection set (what picks the epoch).
    """
    panels = (
        ("train_loss", "train loss (log)"),
        ("val_loss", "inner selection set loss (log)"),
        ("val_kaggle_dice", "inner selection set Kaggle Dice (raw, threshold 0.5)"),  # before tuning
    )
    with plt.rc_context(_RC):
        fig, axes = plt.subplots(1, 3, figsize=(13.5, 3.6))
        cmap = plt.get_cmap("tab10")
        for i, (model, hist) in enumerate(histories):
            epochs = hist.get("epoch") or []
            for ax, (key, _) in zip(axes, panels):
                values = [np.nan if v is None else v for v in hist.get(key) or []]
                if values and len(values) == len(epochs):
                    ax.plot(epochs, values, marker=".", color=cmap(i % 10), label=model)
        for ax, (key, label) in zip(axes, panels):
            if key.endswith("loss"):
                ax.set_yscale("log")  # a first-epoch spike would flatten every other curve
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.set_xlabel("epoch")
            ax.set_title(label)
            ax.grid(alpha=0.3)
        if axes[2].get_legend_handles_labels()[0]:  # imported methods have no training curves
            axes[2].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        fig.suptitle(title)
        fig.tight_layout()
        return _save(fig, path)
