"""PNG plots of evaluation results (matplotlib, Agg backend).

The target's grid (`bcrdist.physics.layout.GridInfo`) chooses the view. Polar images are (Nt, Nr) arrays on
θ_j = 2πj/Nt, ρ_i = (i + ½)·R/Nr, shown as (θ, ρ) wedges and in a Cartesian view that resamples them onto an
n×n grid of [−R, R]² (bilinear in (θ, ρ), periodic in θ, NaN outside the disk). Cartesian images (n, n) are
shown as they are, pixel for pixel, on their square [−L/2, L/2]² with x to the right and y up. Every figure
says what it shows: a title (checkpoint, split, noise), labelled colour bars, the error as prediction − truth
on a diverging colour map centred at 0, and the histogram's metric on its axis with whole-number counts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from bcrdist.fileio import atomic_write  # noqa: E402
from bcrdist.physics.layout import GridInfo  # noqa: E402

METRIC_LABELS = {"weighted": "radius-weighted relative error", "rel_l2": "relative L2 error",
                 "rel_l1": "relative L1 error", "psnr": "PSNR (dB)"}
ERROR_CMAP = "RdBu_r"                      # diverging, centred at 0 by symmetric limits: red = predicted too high
ERROR_LABEL = "prediction − truth (η)"


def polar_to_cartesian(img: np.ndarray, n: int = 96) -> np.ndarray:
    """(Nt, Nr) polar image → (n, n) Cartesian image on [−R, R]² (R = 1 in grid units), NaN outside."""
    nt, nr = img.shape
    c = (np.arange(n) + 0.5) / n * 2 - 1
    x, y = np.meshgrid(c, c, indexing="ij")
    rho = np.hypot(x, y) * nr - 0.5                       # fractional radial index
    theta = (np.arctan2(y, x) % (2 * math.pi)) / (2 * math.pi) * nt
    t0 = np.floor(theta).astype(int)
    ft = theta - t0
    r0 = np.clip(np.floor(rho).astype(int), 0, nr - 1)
    r1 = np.clip(r0 + 1, 0, nr - 1)
    fr = np.clip(rho - np.floor(rho), 0, 1)
    fr = np.where(rho < 0, 0, fr)
    t0m, t1m = t0 % nt, (t0 + 1) % nt
    out = ((1 - ft) * ((1 - fr) * img[t0m, r0] + fr * img[t0m, r1])
           + ft * ((1 - fr) * img[t1m, r0] + fr * img[t1m, r1]))
    out[np.hypot(x, y) > 1] = np.nan
    return out


def metric_label(name: str) -> str:
    """The axis label of a metric of `bcrdist.metrics` ("rel_l2" → "relative L2 error")."""
    return METRIC_LABELS.get(name, name)


def sample_figure(true: np.ndarray, pred: np.ndarray, errors: np.ndarray, indices, grid: GridInfo | None = None,
                  title: str | None = None, metric: str = "weighted"):
    """The figure of `plot_samples` (rows: samples): polar (θ, ρ) and resampled Cartesian views of polar images
    (`grid` None or polar), or true / predicted / error images as they are on a Cartesian grid. The error is
    prediction − truth on a diverging colour map centred at 0 (red: too high, blue: too low); every colour bar
    is labelled; `errors` are the samples' values of `metric`; `title` (the checkpoint, split and noise) heads
    the figure."""
    if grid is not None and grid.cartesian:
        return _cartesian_figure(true, pred, errors, indices, grid, title, metric)
    k = len(true)
    fig, axes = plt.subplots(k, 5, figsize=(17, 3.2 * k), squeeze=False)
    for row in range(k):
        t, p = true[row], pred[row]
        lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
        err = p - t
        bound = float(np.abs(err).max()) or 1.0
        panels = [(t.T, "true η (polar)", "viridis", lo, hi, "η"),
                  (p.T, "predicted η (polar)", "viridis", lo, hi, "η"),
                  (err.T, "error: prediction − truth (polar)", ERROR_CMAP, -bound, bound, ERROR_LABEL)]
        for col, (im, name, cmap, vmin, vmax, unit) in enumerate(panels):
            ax = axes[row, col]
            h = ax.imshow(im, origin="lower", aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax,
                          extent=(0, 360, 0, 1))
            ax.set_title(f"sample {indices[row]}: {name}" if col == 0 else name, fontsize=9)
            ax.set_xlabel("θ (degrees)")
            ax.set_ylabel("ρ / R")
            fig.colorbar(h, ax=ax, fraction=0.046).set_label(unit)
        for col, (im, name) in enumerate(((t, "true η (Cartesian)"), (p, "predicted η (Cartesian)")), start=3):
            ax = axes[row, col]
            h = ax.imshow(polar_to_cartesian(im).T, origin="lower", cmap="viridis", vmin=lo, vmax=hi,
                          extent=(-1, 1, -1, 1))
            ax.set_title(name + (f"\n{metric_label(metric)} {errors[row]:.3f}" if col == 4 else ""), fontsize=9)
            ax.set_xlabel("x / R")
            ax.set_ylabel("y / R")
            fig.colorbar(h, ax=ax, fraction=0.046).set_label("η")
    return _headed(fig, title)


def _cartesian_figure(true, pred, errors, indices, grid: GridInfo, title: str | None, metric: str):
    """True / predicted / error of (K, n, n) Cartesian images; image[i, j] = η(x_i, y_j) is drawn transposed so
    that x runs to the right (`grid.image_index` "yx": as stored)."""
    k = len(true)
    half = 0.5 * grid.image_extent
    pad = 0.5 * grid.pixel_spacing() if grid.image_points == "nodes" else 0.0   # node pixels straddle the edges
    extent = (-half - pad, half + pad, -half - pad, half + pad)
    fig, axes = plt.subplots(k, 3, figsize=(11, 3.4 * k), squeeze=False)
    for row in range(k):
        t, p = true[row], pred[row]
        lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
        err = p - t
        bound = float(np.abs(err).max()) or 1.0
        panels = [(t, f"sample {indices[row]}: true η", "viridis", lo, hi, "η"),
                  (p, "predicted η", "viridis", lo, hi, "η"),
                  (err, f"prediction − truth, {metric_label(metric)} {errors[row]:.3f}", ERROR_CMAP, -bound, bound,
                   ERROR_LABEL)]
        for col, (im, name, cmap, vmin, vmax, unit) in enumerate(panels):
            ax = axes[row, col]
            h = ax.imshow(im.T if grid.image_index == "xy" else im, origin="lower", cmap=cmap, vmin=vmin,
                          vmax=vmax, extent=extent, interpolation="nearest")
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("x")
            ax.set_ylabel("y")
            fig.colorbar(h, ax=ax, fraction=0.046).set_label(unit)
    return _headed(fig, title)


def _headed(fig, title: str | None):
    """`fig` laid out, under `title` when one is given."""
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_figure(fig, path: Path) -> None:
    """Write `fig` to `path` (format from its suffix) atomically, never through a symbolic link, and close it."""
    try:
        atomic_write(path, lambda fh: fig.savefig(fh, dpi=90, format=Path(path).suffix.lstrip(".") or "png"))
    finally:
        plt.close(fig)


def plot_samples(true: np.ndarray, pred: np.ndarray, errors: np.ndarray, indices, path: Path,
                 grid: GridInfo | None = None, title: str | None = None, metric: str = "weighted") -> Path:
    """True / predicted / error for each sample (rows) as a PNG, in the views of the target's grid
    (`sample_figure`; None: polar).

    true, pred (K, Nt, Nr) or (K, n, n); errors (K,) the per-sample values of `metric`; indices the global sample
    ids; title: what the figure shows (checkpoint, split, noise).
    """
    fig = sample_figure(true, pred, errors, indices, grid, title, metric)
    save_figure(fig, path)
    return path


def histogram_figure(errors: np.ndarray, label: str = METRIC_LABELS["weighted"], title: str | None = None):
    """The figure of `plot_error_histogram`: errors (N,) per sample, counted in bins along an x axis named
    `label` (the metric), with integer counts on the y axis and their mean marked."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(errors, bins=min(50, max(10, len(errors) // 5)), color="tab:blue", alpha=0.8)
    mean = float(np.mean(np.asarray(errors, dtype=np.float64)))
    ax.axvline(mean, color="k", linestyle="--", label=f"mean {mean:.4f} ({len(errors)} samples)")
    ax.set_xlabel(label)
    ax.set_ylabel("samples")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_error_histogram(errors: np.ndarray, path: Path, label: str = METRIC_LABELS["weighted"],
                         title: str | None = None) -> Path:
    """Histogram of per-sample errors (N,) as a PNG (label: the metric, e.g. "relative L2 error" on a Cartesian
    target; title: the checkpoint, split and noise)."""
    save_figure(histogram_figure(errors, label, title), path)
    return path


def plot_training_curves(metrics_path: Path, path: Path) -> Path | None:
    """Training loss and validation errors per epoch from a run's metrics.jsonl; None if it is absent."""
    metrics_path = Path(metrics_path)
    if not metrics_path.is_file():
        return None
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    if not rows:
        return None
    epochs = [r["epoch"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.semilogy(epochs, [r["train_loss"] if r["train_loss"] is not None else np.nan for r in rows])
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss (MSE)")
    ax2.semilogy(epochs, [r["val_error"] for r in rows], label="output")
    ax2.semilogy(epochs, [r["val_error_aux"] for r in rows], label="auxiliary head", alpha=0.7)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation error")
    ax2.legend()
    for r0, r1 in zip(rows, rows[1:]):
        if (r1["phase"], r1["stage"]) != (r0["phase"], r0["stage"]):
            for ax in (ax1, ax2):
                ax.axvline(r0["epoch"], color="gray", lw=0.5, ls=":")
    fig.tight_layout()
    save_figure(fig, path)
    return path
