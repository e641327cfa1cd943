"""The scatterer families (`bcrdist.physics.scatterers`): non-negative inside the support, area-fraction
rasters, draws that depend on the seed only."""

import numpy as np
import pytest

from bcrdist.config import load_config
from bcrdist.physics.generation_config import GenerationConfig
from bcrdist.physics.sampling import SampleMaker
from bcrdist.physics.scatterers import sample_gaussian, sample_shapes, sample_shepp_logan

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("family", ["gaussian", "shapes", "shepp_logan"])
def test_families_nonnegative_inside_support(family):
    maker = SampleMaker(load_config(None, GenerationConfig, ["n=32", f"family.name={family}"]))
    x = np.linspace(-0.5, 0.5, 201)
    for index in range(5):
        s = maker.scatterer(index)
        values = s(x[:, None], x[None, :])
        assert values.min() >= 0 and values.max() > 0
        assert np.all(values[np.hypot(x[:, None], x[None, :]) > 0.45] == 0)
        raster = s.raster(32, 1.0, 8)
        assert raster.shape == (32, 32) and raster.min() >= 0
        assert np.array_equal(s.polar(8, 4, 0.5), s.rotated(0.0).polar(8, 4, 0.5))


def test_area_fraction_raster_of_polygon():
    s = sample_shapes(np.random.default_rng(5), count=(1, 1), contrast=(1.0, 1.0), size=(0.2, 0.2),
                      polygon_fraction=1.0, vertices=(5, 5), gap=0.0, support_radius=0.45)
    row = s.primitives[0]
    vx, vy = row[7:17:2], row[8:17:2]
    area = 0.5 * abs(np.dot(vx, np.roll(vy, -1)) - np.dot(vy, np.roll(vx, -1)))  # shoelace
    n = 64
    assert abs(s.raster(n, 1.0, 16).sum() / n ** 2 - area) < 2e-3 * area
    assert abs(s.raster(n, 1.0, 1).sum() / n ** 2 - area) > abs(s.raster(n, 1.0, 16).sum() / n ** 2 - area)


def test_families_depend_on_seed_only():
    a = sample_gaussian(np.random.default_rng([1, 2]), count=(2, 5), amplitude=(0.1, 0.2), width=(0.03, 0.05),
                        tail_sigmas=4.0, support_radius=0.45)
    b = sample_gaussian(np.random.default_rng([1, 2]), count=(2, 5), amplitude=(0.1, 0.2), width=(0.03, 0.05),
                        tail_sigmas=4.0, support_radius=0.45)
    assert np.array_equal(a.primitives, b.primitives)
    c = sample_shepp_logan(np.random.default_rng(0), contrast=(0.3, 0.3), jitter=0.05, support_radius=0.45)
    assert c(0.0, 0.0) >= 0 and c.primitives.shape == (10, 7)
