"""`BornDefinition` (`bcrdist.physics.born_definition`): a JSON record that rebuilds the same reconstruction,
one-line errors on bad records and combinations, and the estimator of each method against the inversions of
`bcrdist.physics.born` it is defined by."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bcrdist.errors import ConfigError, DataError
from bcrdist.physics.born import BornInversion, CartesianBornInversion
from bcrdist.physics.born_definition import BornDefinition, make_inversion
from bcrdist.physics.layout import GridInfo

GRID = GridInfo(k=16.0, angles="endpoint", n_obs=10, n_inc=10, target="cartesian", image_size=12, image_extent=2.0,
                image_points="nodes", farfield_sign=1)
POLAR = GridInfo(k=4 * np.pi, angles="periodic", n_obs=12, n_inc=12, target="polar", polar_nt=12, polar_nr=5,
                 polar_radius=0.5)


@pytest.mark.parametrize("definition", [BornDefinition(GRID, "lsqr", 0.1), BornDefinition(GRID, "tikhonov", 2.5),
                                        BornDefinition(POLAR, "tikhonov", 1e-3, "euclidean", "measure")],
                         ids=["lsqr", "tikhonov", "polar-measure"])
def test_record_round_trip(definition):
    record = json.loads(json.dumps(definition.to_record()))
    assert BornDefinition.from_record(record) == definition
    assert record["grid"] == definition.grid.to_record()


def test_norm_defaults_per_method():
    assert BornDefinition(GRID, "lsqr", 1.0).norm == "euclidean"
    assert BornDefinition(GRID, "tikhonov", 1.0).norm == "area"


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="gauss"), "born method: expected one of tikhonov, lsqr"),
    (dict(method="lsqr", parameter=0.0), "born parameter: the damping d must be > 0"),
    (dict(parameter=-1.0), "born parameter: λ must be ≥ 0"),
    (dict(parameter=float("nan")), "born parameter"),
    (dict(method="lsqr", parameter=1.0, norm="area"), "born norm: lsqr minimises the plain coefficient norm"),
    (dict(norm="l1"), "born norm: expected one of area, euclidean"),
    (dict(entries="measure"), "born entries: 'measure' applies to the polar tikhonov reconstruction only"),
    (dict(grid=GRID.with_sign(None)), "born grid: the far field's sign convention is unknown"),
    (dict(grid=POLAR, method="lsqr", parameter=1.0), "born method lsqr: reconstructs Cartesian images"),
])
def test_bad_combinations_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        BornDefinition(**{"grid": GRID, **kwargs})


@pytest.mark.parametrize("change, message", [
    (lambda r: "not a mapping", "born: expected a mapping"),
    (lambda r: {**r, "version": 2}, "born: version 2 is not supported"),
    (lambda r: {k: v for k, v in r.items() if k != "parameter"}, "born: lacks parameter"),
    (lambda r: {**r, "parameter": "1"}, "born: parameter must be a number"),
    (lambda r: {**r, "method": "svd"}, "born: born method: expected one of"),
    (lambda r: {**r, "grid": {**r["grid"], "k": -1}}, "born: grid: k must be finite and > 0"),
])
def test_bad_records_are_data_errors(change, message):
    record = BornDefinition(GRID, "lsqr", 0.1).to_record()
    with pytest.raises(DataError, match=message):
        BornDefinition.from_record(change(record))


def test_estimators_are_the_inversions_they_name():
    rng = np.random.default_rng(0)
    F = rng.standard_normal((2, 10, 10)) + 1j * rng.standard_normal((2, 10, 10))
    inv = CartesianBornInversion(GRID)
    lam = 1e-3 * inv.sigma_max ** 2
    want = inv.predict(F, lam)
    got = make_inversion(BornDefinition(GRID, "tikhonov", lam)).predict(F)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10 * np.abs(want).max())
    polar = BornInversion(POLAR.k, 12, 5, 0.5, entries="measure")
    Fp = rng.standard_normal((2, 12, 12)) + 1j * rng.standard_normal((2, 12, 12))
    want = polar.predict(Fp, 1e-4)
    got = make_inversion(BornDefinition(POLAR, "tikhonov", 1e-4, entries="measure")).predict(Fp)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())
    # a polar grid in the conjugate convention reads conj F
    got = make_inversion(BornDefinition(POLAR.with_sign(1), "tikhonov", 1e-4, entries="measure")).predict(np.conj(Fp))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())
