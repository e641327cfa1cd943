"""The data layouts (`bcrdist.physics.layout`): `measure` from the far field, the polar grid, the angle and pixel
grids of the far-field/image layout, the port's column storage, and the grid record a manifest holds."""

import dataclasses
import json

import h5py
import numpy as np
import pytest

from bcrdist.config import load_config
from bcrdist.data.convert import shard_file
from bcrdist.data.format import read_manifest
from bcrdist.errors import DataError
from bcrdist.physics.generation_config import GenerationConfig
from bcrdist.physics.layout import (GridInfo, angle_grid, columns_from_samples, distinct_angles, grid_info_from_config,
                                    image_coordinates, measure_from_far_field, pixel_spacing, polar_grid,
                                    samples_from_columns)

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


def test_angle_grids():
    assert np.allclose(angle_grid("periodic", 4), [0, np.pi / 2, np.pi, 3 * np.pi / 2])
    # the port's grid: linspace(−π, π, Na), the first and last direction coincide
    port = angle_grid("endpoint", 100)
    np.testing.assert_allclose(port, np.linspace(-np.pi, np.pi, 100), rtol=0, atol=1e-15)
    assert port[0] == -np.pi and port[-1] == pytest.approx(np.pi, abs=1e-15)
    assert port[1] - port[0] == pytest.approx(2 * np.pi / 99)
    distinct, index = distinct_angles("endpoint", 5)
    np.testing.assert_array_equal(distinct, angle_grid("endpoint", 5)[:-1])
    np.testing.assert_array_equal(index, [0, 1, 2, 3, 0])
    distinct, index = distinct_angles("periodic", 6)
    np.testing.assert_array_equal(distinct, angle_grid("periodic", 6))
    np.testing.assert_array_equal(index, np.arange(6))
    with pytest.raises(ValueError, match="endpoint"):
        angle_grid("endpoint", 1)


def test_pixel_grids():
    # cell centres: the solver's grid; nodes: the port's 100×100 on [−1, 1]², both edges included
    np.testing.assert_allclose(image_coordinates(4, 1.0), [-0.375, -0.125, 0.125, 0.375])
    np.testing.assert_allclose(image_coordinates(100, 2.0, "nodes"), np.linspace(-1, 1, 100), atol=1e-15)
    assert pixel_spacing(4, 1.0) == 0.25 and pixel_spacing(100, 2.0, "nodes") == pytest.approx(2 / 99)
    grid = GridInfo(k=16.0, angles="endpoint", n_obs=5, n_inc=5, target="cartesian", image_size=3, image_extent=2.0,
                    image_points="nodes")
    y = grid.pixel_positions()
    assert y.shape == (9, 2) and np.allclose(y[5], [0.0, 1.0])            # image[1, 2] = η(x_1, y_2)
    yx = dataclasses.replace(grid, image_index="yx").pixel_positions()
    assert np.allclose(yx[5], [1.0, 0.0])                                   # image[1, 2] = η(x_2, y_1)


def test_port_columns_round_trip_and_agree_with_bcrdist_shard(tmp_path):
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(7, 5, 5))
    columns = columns_from_samples(samples)
    assert columns.shape == (25, 7)
    np.testing.assert_array_equal(columns[:, 3], samples[3].ravel())        # sample j = column j
    np.testing.assert_array_equal(samples_from_columns(columns), samples)
    np.testing.assert_array_equal(samples_from_columns(columns), columns.T.reshape(7, 5, 5))  # the port's reading
    with pytest.raises(ValueError, match="perfect square"):
        samples_from_columns(np.zeros((24, 3)))
    # `bcrdist shard` reads the port's file into the same per-sample arrays
    src = tmp_path / "port.hdf5"
    F = rng.normal(size=(7, 4, 4)) + 1j * rng.normal(size=(7, 4, 4))
    with h5py.File(src, "w") as fh:
        fh["farfield.real"] = columns_from_samples(F.real)
        fh["farfield.imag"] = columns_from_samples(F.imag)
        fh["image"] = columns
    shard_file(src, tmp_path / "ds", 4)
    manifest = read_manifest(tmp_path / "ds")
    parts = {"farfield": [], "image": []}
    for i in range(len(manifest.shards)):
        with h5py.File(manifest.shard_path(i)) as fh:
            for name in parts:
                parts[name].append(fh[name][...])
    np.testing.assert_array_equal(np.concatenate(parts["image"]), samples_from_columns(columns))
    with h5py.File(src) as fh:
        np.testing.assert_array_equal(np.concatenate(parts["farfield"]),
                                      samples_from_columns(fh["farfield.real"][...])
                                      + 1j * samples_from_columns(fh["farfield.imag"][...]))


def test_grid_info_from_config_and_its_record():
    fan = grid_info_from_config(load_config(None, GenerationConfig))
    assert (fan.target, fan.angles, fan.n_obs, fan.polar_nt, fan.polar_nr, fan.polar_radius) == \
        ("polar", "periodic", 64, 64, 16, 0.5)
    far = grid_info_from_config(load_config(None, GenerationConfig, ["layout=farfield", "angles=endpoint", "Na=100",
                                                                      "box=2", "k_over_pi=5", "n=48"]))
    assert (far.target, far.angles, far.image_size, far.image_extent, far.image_points, far.farfield_sign) == \
        ("cartesian", "endpoint", 48, 2.0, "centres", -1)
    assert far.k == pytest.approx(5 * np.pi)
    np.testing.assert_allclose(far.image_axis(), image_coordinates(48, 2.0))   # the solver's cells on its box
    for grid in (fan, far, far.with_sign(None)):
        record = json.loads(json.dumps(grid.to_record()))
        assert GridInfo.from_record(record) == grid and "conventions" in record
    assert "image" not in " ".join(fan.to_record()) and "polar" not in " ".join(far.to_record())
    record = far.to_record()
    with pytest.raises(DataError, match="manifest.json: grid: angles must be one of"):
        GridInfo.from_record({**record, "angles": "uniform"}, "manifest.json: grid")
    with pytest.raises(DataError, match="lacks k"):
        GridInfo.from_record({key: v for key, v in record.items() if key != "k"})
    with pytest.raises(DataError, match="version 7 is not supported"):
        GridInfo.from_record({**record, "version": 7})
    with pytest.raises(ValueError, match="polar target needs the periodic angle grid"):
        dataclasses.replace(fan, angles="endpoint")
