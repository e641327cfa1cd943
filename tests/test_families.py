"""The study's scatterer families (`bcrdist.physics.families`) and mixtures (`bcrdist.physics.sampling`):
areas of cell-average rasters against πr², s², the U's s²(1 − wd) and annulus areas, non-overlap, value
ranges, mixture frequencies against their weights, and draws that depend on (seed, index) only."""

import math
import re

import numpy as np
import pytest

from bcrdist.config import load_config
from bcrdist.errors import ConfigError
from bcrdist.physics.families import sample_discs, sample_rings, sample_squares, sample_u_shapes, u_polygon
from bcrdist.physics.generation_config import FAMILY_NAMES, GenerationConfig
from bcrdist.physics.sampling import SampleMaker
from bcrdist.physics.scatterers import BASE_COLUMNS, FAMILY_IDS

SUPPORT = 0.45


def raster_area(s, value, n=64, supersample=16):
    """∫ 1{η = value} dx from a fine cell-average raster: the mean over n²·supersample² points times h²."""
    x = (np.arange(n * supersample) + 0.5) / (n * supersample) - 0.5
    fine = s(x[:, None], x[None, :])
    return np.isclose(fine, value, rtol=0, atol=1e-12).sum() / (n * supersample) ** 2


def shoelace(vx, vy):
    return 0.5 * abs(np.dot(vx, np.roll(vy, -1)) - np.dot(vy, np.roll(vx, -1)))


def vertices(row):
    nv = int(row[4])
    return row[BASE_COLUMNS:BASE_COLUMNS + 2 * nv:2], row[BASE_COLUMNS + 1:BASE_COLUMNS + 2 * nv:2]


def test_disc_areas_non_overlap_and_ranges():
    for seed in range(5):
        s = sample_discs(np.random.default_rng(seed), count=(3, 3), contrast=(0.1, 0.8), radius=(0.05, 0.15),
                         gap=0.02, support_radius=SUPPORT)
        rows = s.primitives
        assert s.family == "discs" and 1 <= len(rows) <= 3 and np.all(rows[:, 4] == rows[:, 5])
        assert np.all((rows[:, 1] >= 0.1) & (rows[:, 1] <= 0.8)) and np.all((rows[:, 4] >= 0.05) & (rows[:, 4] <= 0.15))
        assert np.all(np.hypot(rows[:, 2], rows[:, 3]) + rows[:, 4] <= SUPPORT)
        for i in range(len(rows)):
            for j in range(i):
                assert math.hypot(*(rows[i, 2:4] - rows[j, 2:4])) >= rows[i, 4] + rows[j, 4] + 0.02
            area = math.pi * rows[i, 4] ** 2
            assert abs(raster_area(s, rows[i, 1]) - area) < 3e-3 * area
        # the solver's cell-average raster keeps the total ∫η = Σ η_j π r_j²
        total = np.sum(rows[:, 1] * math.pi * rows[:, 4] ** 2)
        assert abs(s.raster(64, 1.0, 16).sum() / 64 ** 2 - total) < 3e-3 * total


def test_square_areas_sides_and_non_overlap():
    for seed in range(5):
        s = sample_squares(np.random.default_rng(seed), count=(3, 3), contrast=(0.2, 0.4), side=(0.1, 0.2),
                           gap=0.01, support_radius=SUPPORT)
        sides = []
        for row in s.primitives:
            vx, vy = vertices(row)
            edges = np.hypot(np.diff(np.r_[vx, vx[0]]), np.diff(np.r_[vy, vy[0]]))
            side = edges[0]
            assert 0.1 <= side <= 0.2 and np.allclose(edges, side, rtol=1e-12)
            assert np.allclose(np.hypot(vx - row[2], vy - row[3]), side / math.sqrt(2), rtol=1e-12)
            assert np.all(np.hypot(vx, vy) <= SUPPORT) and 0.2 <= row[1] <= 0.4
            assert abs(raster_area(s, row[1]) - side ** 2) < 3e-3 * side ** 2
            sides.append(side)
        centres = s.primitives[:, 2:4]
        for i in range(len(sides)):
            for j in range(i):
                gap = np.hypot(*(centres[i] - centres[j])) - (sides[i] + sides[j]) / math.sqrt(2)
                assert gap >= 0.01 - 1e-12
        angles = [math.atan2(row[BASE_COLUMNS + 1] - row[3], row[BASE_COLUMNS] - row[2]) % (0.5 * math.pi)
                  for row in s.primitives]
        assert len(set(np.round(angles, 6))) == len(angles)  # randomly rotated


def test_u_shape_area_and_notch():
    vx, vy = u_polygon(0.2, 0.4, 0.5)
    assert shoelace(vx, vy) == pytest.approx(0.04 * (1 - 0.2), rel=1e-12)
    for seed in range(5):
        s = sample_u_shapes(np.random.default_rng(seed), count=(1, 1), contrast=(0.3, 0.3), side=(0.2, 0.3),
                            notch_width=(0.3, 0.5), notch_depth=(0.4, 0.7), gap=0.01, support_radius=SUPPORT)
        row = s.primitives[0]
        vx, vy = vertices(row)
        side = math.hypot(vx[1] - vx[0], vy[1] - vy[0])
        area = shoelace(vx, vy)
        assert 0.2 <= side <= 0.3 and side ** 2 * (1 - 0.5 * 0.7) <= area <= side ** 2 * (1 - 0.3 * 0.4)
        assert abs(raster_area(s, 0.3) - area) < 3e-3 * area
        # non-convex: the middle of the notch (between vertices 4 and 5, towards the open edge) is outside
        notch = 0.5 * (vx[3] + vx[6]) + 0.25 * (vx[4] - vx[3]), 0.5 * (vy[3] + vy[6]) + 0.25 * (vy[4] - vy[3])
        assert s(*notch) == 0
        # the centre of the solid base (a quarter side from the bottom edge) is inside
        base = 0.5 * (vx[0] + vx[1]) + 0.25 * (vx[7] - vx[0]), 0.5 * (vy[0] + vy[1]) + 0.25 * (vy[7] - vy[0])
        assert s(*base) == 0.3


@pytest.mark.parametrize("bands", [2, 3, 4])
def test_ring_band_areas(bands):
    s = sample_rings(np.random.default_rng(bands), count=(1, 1), contrast=(0.2, 0.6), radius=(0.15, 0.2),
                     bands=(bands, bands), gap=0.01, support_radius=SUPPORT)
    rows = s.primitives
    assert s.family == "rings" and len(rows) == bands
    r = rows[0, 4]
    values = np.cumsum(rows[:, 1])                       # band j's value: the sum of the first j + 1 discs
    assert np.allclose(values[1::2], 0, atol=1e-15) and np.all((values[::2] >= 0.2) & (values[::2] <= 0.6))
    for j in range(0, bands, 2):                          # band j: (bands − j − 1)·r/B < |x − c| ≤ (bands − j)·r/B
        outer, inner = (bands - j) * r / bands, (bands - j - 1) * r / bands
        area = math.pi * (outer ** 2 - inner ** 2)
        assert abs(raster_area(s, values[j], supersample=24) - area) < 5e-3 * area
    x = np.linspace(-0.5, 0.5, 301)
    assert s(x[:, None], x[None, :]).min() >= 0


def config(*overrides):
    return load_config(None, GenerationConfig, ["n=16", *overrides])


def test_mixture_frequencies_match_weights():
    weights = {"gaussian": 1.0, "discs": 2.0, "squares": 1.0, "rings": 0.0}
    maker = SampleMaker(config("family.name=mixture", f"family.mixture={weights}".replace("'", "")))
    draws = [maker.family(i) for i in range(4000)]
    assert "rings" not in draws
    for name, weight in weights.items():
        p = weight / 4.0
        count = draws.count(name)
        assert abs(count - 4000 * p) <= 4 * math.sqrt(4000 * p * (1 - p)) + 1e-9, (name, count)
    # the sample's stored family is the drawn one, and a member's sample is that family's own sample
    alone = SampleMaker(config("family.name=discs"))
    for i in range(40):
        s = maker.scatterer(i)
        assert s.family == draws[i]
        if draws[i] == "discs":
            assert np.array_equal(s.primitives, alone.scatterer(i).primitives)


def test_mixture_table_holds_every_member_and_draws_are_deterministic():
    members = {name: 1.0 for name in FAMILY_NAMES}
    maker = SampleMaker(config("family.name=mixture", f"family.mixture={members}".replace("'", ""),
                               "family.shapes.vertices=[3, 9]", "family.rings.bands=[2, 5]"))
    assert maker.columns == BASE_COLUMNS + 2 * 9 and maker.max_primitives == 10     # Shepp–Logan's 10 ellipses
    again = SampleMaker(maker.cfg)
    seen = set()
    for i in range(150):
        s = maker.scatterer(i)
        seen.add(s.family)
        assert s.padded(maker.max_primitives, maker.columns).shape == (10, BASE_COLUMNS + 18)
        assert np.array_equal(s.primitives, again.scatterer(i).primitives) and FAMILY_IDS[s.family] >= 0
    assert seen == set(FAMILY_NAMES)
    other_seed = SampleMaker(config("family.name=mixture", f"family.mixture={members}".replace("'", ""), "seed=1"))
    assert any(not np.array_equal(maker.scatterer(i).primitives, other_seed.scatterer(i).primitives)
               for i in range(5))


def test_absorption_drawn_uniformly_from_the_list():
    maker = SampleMaker(config("family.absorption=[0.0, 0.1, 1.0, 10.0]"))
    alphas = [maker.absorption(i) for i in range(4000)]
    assert set(alphas) == {0.0, 0.1, 1.0, 10.0}
    for level in (0.0, 0.1, 1.0, 10.0):
        assert abs(alphas.count(level) - 1000) <= 4 * math.sqrt(4000 * 0.25 * 0.75)
    s = maker.scatterer(3)
    assert s.absorption == alphas[3]
    assert np.array_equal(s.primitives, SampleMaker(config()).scatterer(3).primitives)  # its own stream
    eta = s.contrast_raster(16, 1.0)
    assert np.iscomplexobj(eta) == (alphas[3] > 0)
    np.testing.assert_array_equal(eta.real, s.raster(16, 1.0))
    np.testing.assert_allclose(eta.imag, alphas[3] * s.raster(16, 1.0), rtol=1e-15)


@pytest.mark.parametrize("name", ["discs", "squares", "u_shapes", "rings"])
def test_study_families_from_config_stay_in_support(name):
    maker = SampleMaker(config(f"family.name={name}", "box=2.0", "family.support_radius=0.5"))
    x = np.linspace(-1, 1, 401)
    for i in range(4):
        s = maker.scatterer(i)
        values = s(x[:, None], x[None, :])
        assert s.family == name and values.max() > 0 and values.min() >= 0
        assert np.all(values[np.hypot(x[:, None], x[None, :]) > 1.0] == 0)
        assert s.padded(maker.max_primitives, maker.columns).shape == (maker.max_primitives, maker.columns)


@pytest.mark.parametrize("override, message", [
    (["family.name=mixture"], "family.mixture: name `mixture` needs at least one family of positive weight"),
    (["family.name=mixture", "family.mixture={discs: 1, circles: 1}"], "family.mixture: unknown family 'circles'"),
    (["family.name=mixture", "family.mixture={discs: -1}"], "family.mixture.discs: weight must be a finite number ≥ 0"),
    (["family.mixture={discs: 1}"], "family.mixture: applies to family.name: mixture only"),
    (["family.absorption=[]"], "family.absorption: expected a non-empty list"),
    (["family.absorption=[-0.1]"], "family.absorption[0]: must be a finite number ≥ 0"),
    (["family.name=discs", "family.discs.radius=[0.1, 0.5]"], "family.discs.radius: the largest shape"),
    (["family.name=rings", "family.rings.bands=[1, 3]"], "family.rings.bands[0]: must be an integer ≥ 2"),
    (["family.name=u_shapes", "family.u_shapes.notch_width=[0.3, 1.0]"], "family.u_shapes.notch_width[1]: must lie"),
    (["family.name=squares", "family.squares.side=[0.3, 0.2]"], "lower bound 0.3 exceeds upper bound 0.2"),
])
def test_bad_family_settings_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        config(*override)
