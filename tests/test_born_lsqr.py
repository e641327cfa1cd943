"""The study's damped least squares (`bcrdist.physics.born_lsqr`) against an independent reference: scipy's
lsqr on the dense complex Born matrix built here from the study's formula (not from bcrdist), on both signs,
node and centre grids, endpoint and periodic angles, damp 0.1 and 1, the study's geometry included; refusals
of what the closed form does not cover."""

from __future__ import annotations

import numpy as np
import pytest

from bcrdist.errors import ConfigError
from bcrdist.physics.born_definition import BornDefinition, make_inversion
from bcrdist.physics.born_lsqr import DampedLsqrInversion, normal_is_real, study_cell_size, study_ratio
from bcrdist.physics.layout import GridInfo
from lsqr_reference import scipy_reference, study_matrix


def far_fields(seed, n_obs, n_inc, count=3):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, n_obs, n_inc)) + 1j * rng.standard_normal((count, n_obs, n_inc))


CASES = [  # (image points, angle grid, directions, sign, image index)
    ("nodes", "endpoint", 12, 1, "xy"),
    ("nodes", "periodic", 16, -1, "yx"),
    ("centres", "endpoint", 10, -1, "xy"),
    ("centres", "periodic", 14, 1, "xy"),
]


@pytest.mark.parametrize("damp", [0.1, 1.0])
@pytest.mark.parametrize("points, angles, na, sign, index", CASES,
                         ids=["nodes-endpoint-conj", "nodes-periodic-yx", "centres-endpoint", "centres-periodic-conj"])
def test_closed_form_equals_scipy_lsqr(points, angles, na, sign, index, damp):
    k, extent, size = 16.0, 2.0, 12
    grid = GridInfo(k=k, angles=angles, n_obs=na, n_inc=na, target="cartesian", image_size=size,
                    image_extent=extent, image_points=points, image_index=index, farfield_sign=sign)
    A = study_matrix(k, extent, size, points, angles, na, na, sign, index)
    F = far_fields(7, na, na)
    reference = scipy_reference(A, F, damp, (size, size))
    mine = DampedLsqrInversion(grid, damp).predict(F)
    assert mine.shape == reference.shape
    np.testing.assert_allclose(mine, reference, rtol=0, atol=1e-8 * np.abs(reference).max())
    via_definition = make_inversion(BornDefinition(grid, "lsqr", damp)).predict(F)
    np.testing.assert_allclose(via_definition, mine, rtol=0, atol=1e-12 * np.abs(mine).max())


def test_study_geometry_small_instance():
    # κ = 16 on [−1, 1]² at the nodes, endpoint directions: the study's set-up at 24² pixels and 24 directions,
    # h_s = 2/24 (the script's cell) against the node spacing 2/23
    size, na = 24, 24
    grid = GridInfo(k=16.0, angles="endpoint", n_obs=na, n_inc=na, target="cartesian", image_size=size,
                    image_extent=2.0, image_points="nodes", farfield_sign=1)
    assert study_cell_size(grid) == pytest.approx(2 / 24) and study_ratio(grid) == pytest.approx((23 / 24) ** 2)
    A = study_matrix(16.0, 2.0, size, "nodes", "endpoint", na, na, 1)
    x = grid.image_axis()
    disc = 0.5 * (x[:, None] ** 2 + (x[None, :] - 0.3) ** 2 < 0.2 ** 2)
    F = (A @ disc.ravel()).reshape(1, na, na)
    F = np.concatenate([F, far_fields(3, na, na, count=1)])
    for damp in (0.1, 1.0):
        reference = scipy_reference(A, F, damp, (size, size))
        mine = DampedLsqrInversion(grid, damp).predict(F)
        np.testing.assert_allclose(mine, reference, rtol=0, atol=1e-8 * np.abs(reference).max())


def test_different_direction_sets_with_a_real_normal_matrix():
    # 8 and 12 periodic directions: both sets are closed under θ → θ + π, so g_obs and g_inc are real and so is
    # AᴴA; the closed form applies although the sets differ
    grid = GridInfo(k=8.0, angles="periodic", n_obs=8, n_inc=12, target="cartesian", image_size=10, image_extent=2.0,
                    farfield_sign=-1)
    assert normal_is_real(grid)
    A = study_matrix(8.0, 2.0, 10, "centres", "periodic", 8, 12, -1)
    F = far_fields(4, 8, 12, count=2)
    reference = scipy_reference(A, F, 0.3, (10, 10))
    np.testing.assert_allclose(DampedLsqrInversion(grid, 0.3).predict(F), reference, rtol=0,
                               atol=1e-8 * np.abs(reference).max())


def test_refusals_are_one_line_config_errors():
    base = dict(k=16.0, target="cartesian", image_size=8, image_extent=2.0, farfield_sign=1)
    unequal = GridInfo(angles="endpoint", n_obs=9, n_inc=10, **base)
    assert not normal_is_real(unequal)
    with pytest.raises(ConfigError, match=r"^method lsqr: needs the same observation and incident directions"):
        DampedLsqrInversion(unequal, 1.0)
    with pytest.raises(ConfigError, match="method lsqr: the far field's sign convention is unknown"):
        DampedLsqrInversion(GridInfo(angles="endpoint", n_obs=9, n_inc=9, **{**base, "farfield_sign": None}), 1.0)
    polar = GridInfo(k=16.0, angles="periodic", n_obs=8, n_inc=8, target="polar", polar_nt=8, polar_nr=4,
                     polar_radius=0.5)
    with pytest.raises(ConfigError, match="reconstructs Cartesian images"):
        DampedLsqrInversion(polar, 1.0)
    for damp in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="damp: must be finite and > 0"):
            DampedLsqrInversion(GridInfo(angles="endpoint", n_obs=9, n_inc=9, **base), damp)
