"""Evaluation plots (`bcrdist.train.plots`): polar targets as (θ, ρ) wedges plus a resampled Cartesian view,
Cartesian targets as the images they are, the view chosen by the grid; both rendered to PNG."""

from __future__ import annotations

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest

from bcrdist.physics.layout import GridInfo
from bcrdist.train import plots


def _images(shape, k=2, seed=0):
    rng = np.random.default_rng(seed)
    true = rng.random((k, *shape))
    return true, true + 0.1 * rng.normal(size=true.shape), rng.uniform(0, 1, k)


def _grid(points="centres", index="xy", size=12):
    return GridInfo(k=16.0, angles="endpoint", n_obs=10, n_inc=10, target="cartesian", image_size=size,
                    image_extent=2.0, image_points=points, image_index=index)


def test_cartesian_images_are_shown_as_images():
    true, pred, errors = _images((12, 12))
    true[0, 2, 9] = 5.0                               # one marked pixel: η(x_2, y_9), left of centre and high up
    fig = plots.sample_figure(true, pred, errors, [4, 7], _grid())
    try:
        axes = fig.axes[:6]                           # the panels; their colour bars come after them
        assert len(fig.axes) == 12                    # true, predicted, error per sample, each with a colour bar
        shown = axes[0].images[0]
        np.testing.assert_array_equal(shown.get_array(), true[0].T)   # pixel for pixel: no resampling
        assert shown.get_extent() == [-1.0, 1.0, -1.0, 1.0] and shown.origin == "lower"
        np.testing.assert_allclose(axes[2].images[0].get_array(), (pred[0] - true[0]).T)
        assert "sample 4" in axes[0].get_title() and f"{errors[0]:.3f}" in axes[2].get_title()
        row, col = np.unravel_index(np.argmax(shown.get_array()), shown.get_array().shape)
        assert (row, col) == (9, 2)                   # drawn at y-row 9, x-column 2
    finally:
        plt.close(fig)
    fig = plots.sample_figure(true, pred, errors, [4, 7], _grid(points="nodes", index="yx"))
    try:
        shown = fig.axes[0].images[0]
        np.testing.assert_array_equal(shown.get_array(), true[0])     # image[i, j] = η(x_j, y_i): as stored
        half = 1.0 + 1.0 / 11                                         # node pixels reach half a spacing out
        np.testing.assert_allclose(shown.get_extent(), [-half, half, -half, half])
    finally:
        plt.close(fig)


def test_polar_images_keep_the_wedge_and_resampled_views():
    true, pred, errors = _images((16, 6))
    fig = plots.sample_figure(true, pred, errors, [0, 1])
    try:
        axes = fig.axes[:10]
        assert len(fig.axes) == 20
        np.testing.assert_array_equal(axes[0].images[0].get_array(), true[0].T)          # (θ, ρ)
        cart = axes[3].images[0].get_array()
        np.testing.assert_array_equal(np.ma.filled(cart, np.nan), plots.polar_to_cartesian(true[0]).T)
    finally:
        plt.close(fig)
    polar_grid = GridInfo(k=8.0, angles="periodic", n_obs=16, n_inc=16, target="polar", polar_nt=16, polar_nr=6,
                          polar_radius=0.5)
    fig = plots.sample_figure(true, pred, errors, [0, 1], polar_grid)
    try:
        assert len(fig.axes) == 20
    finally:
        plt.close(fig)


@pytest.mark.parametrize("kind", ["polar", "cartesian"])
def test_both_kinds_render_to_png(tmp_path, kind):
    shape, grid = ((16, 6), None) if kind == "polar" else ((12, 12), _grid())
    true, pred, errors = _images(shape, k=3)
    path = plots.plot_samples(true, pred, errors, [1, 2, 3], tmp_path / f"{kind}.png", grid)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = matplotlib.image.imread(path).shape[:2]
    # 5 panels a row (polar: 17 in) or 3 (Cartesian: 11 in), 90 dpi, three rows
    assert width == (17 if kind == "polar" else 11) * 90 and height == pytest.approx(3 * (3.2 if kind == "polar"
                                                                                         else 3.4) * 90, abs=1)
    hist = plots.plot_error_histogram(errors, tmp_path / "hist.png", label="relative L2 error")
    assert hist.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("kind", ["polar", "cartesian"])
def test_sample_figures_say_what_they_show(kind):
    """A title (checkpoint, split, noise), labelled colour bars, the error as prediction − truth on a diverging
    map centred at 0, the metric named beside each sample's value."""
    shape, grid, panels = ((16, 6), None, 5) if kind == "polar" else ((12, 12), _grid(), 3)
    true, pred, errors = _images(shape)
    title = "run/checkpoints/best.pt on split 'test' of data/demo, noise 5 % (fan)"
    fig = plots.sample_figure(true, pred, errors, [4, 7], grid, title=title, metric="rel_l2")
    try:
        assert fig._suptitle.get_text() == title
        axes, bars = fig.axes[:2 * panels], fig.axes[2 * panels:]
        assert [bar.get_ylabel() for bar in bars[:3]] == ["η", "η", "prediction − truth (η)"]
        error = axes[2].images[0]
        assert "prediction − truth" in axes[2].get_title() and error.get_cmap().name == "RdBu_r"
        low, high = error.get_clim()
        assert low == -high and high == pytest.approx(np.abs(pred[0] - true[0]).max())
        assert f"relative L2 error {errors[0]:.3f}" in axes[panels - 1].get_title()
    finally:
        plt.close(fig)


def test_the_histogram_names_its_metric_and_counts_in_whole_samples():
    errors = np.array([0.11, 0.12, 0.12, 0.3, 0.31])
    fig = plots.histogram_figure(errors, plots.metric_label("rel_l2"), title="best.pt on split 'test'")
    try:
        ax = fig.axes[0]
        fig.canvas.draw()
        assert ax.get_xlabel() == "relative L2 error" and ax.get_ylabel() == "samples"
        assert ax.get_title() == "best.pt on split 'test'"
        assert ax.get_legend().get_texts()[0].get_text() == f"mean {errors.mean():.4f} (5 samples)"
        ticks = [t for t in ax.get_yticks() if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
    finally:
        plt.close(fig)
