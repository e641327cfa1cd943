"""The data layout (`bcrdist.physics.layout`): `measure` from the far field and the polar grid."""

import numpy as np
import pytest

from bcrdist.physics.layout import measure_from_far_field, polar_grid

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_measure_layout_and_polar_grid():
    na = 8
    f = np.arange(na)[:, None] * 100 + np.arange(na)[None, :]  # F[obs, src] = 100·obs + src
    m = measure_from_far_field(f)
    assert m.shape == (na, na // 2)
    for i in range(na):
        for j in range(na // 2):
            assert m[i, j] == f[(i + j) % na, (i - j) % na]
    # shifting both angles by one step (a rotation of the scatterer) rolls the rows of measure by one
    assert np.array_equal(measure_from_far_field(np.roll(f, 1, axis=(0, 1))), np.roll(m, 1, axis=0))
    theta, rho = polar_grid(4, 2, 0.5)
    assert np.allclose(theta, [0, np.pi / 2, np.pi, 3 * np.pi / 2]) and np.allclose(rho, [0.125, 0.375])
