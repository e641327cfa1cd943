"""The Born-inversion baseline (`bcrdist.physics.born`): exactness of the block solve, Born-regime recovery on
solver data, λ selection and noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bcrdist.physics.born import BornInversion, born_matrix, noisy_far_field, sample_errors
from bcrdist.physics.layout import polar_grid
from bcrdist.physics.sampling import SampleMaker
from generation_helpers import NA, NR, RADIUS, K, demo_gaussian_config

N_VAL = 24


def _solver_data(amplitude, samples: int = 32):
    """Far fields from the real Lippmann–Schwinger solver and polar targets, (F, coe)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # the generator's setting: tiny solves are slower with a thread pool
    try:
        maker = SampleMaker(demo_gaussian_config(amplitude, samples))
        arrays = [maker(i) for i in range(samples)]
    finally:
        torch.set_num_threads(threads)
    return np.stack([a["farfield"] for a in arrays]), np.stack([a["coe"] for a in arrays])


@pytest.fixture(scope="module")
def weak():
    return _solver_data((1e-3, 2e-3))


@pytest.fixture(scope="module")
def weak_inversion(weak):
    F, coe = weak
    inv = BornInversion(K, NA, NR, RADIUS)
    inv.fit_lambda(F[:N_VAL], coe[:N_VAL])
    return inv


@pytest.mark.parametrize("entries", ["farfield", "measure"])
@pytest.mark.parametrize("norm", ["area", "euclidean"])
def test_block_solve_equals_dense_tikhonov(entries, norm):
    k, na, nr, radius = 3 * np.pi, 12, 5, 0.5
    inv = BornInversion(k, na, nr, radius, entries=entries, norm=norm)
    A = born_matrix(k, na, nr, radius)
    rows = np.ones(na * na, dtype=bool)
    if entries == "measure":
        o, s = np.meshgrid(np.arange(na), np.arange(na), indexing="ij")
        rows = (((o - s) % na) % 2 == 0).ravel()
    Ar = np.concatenate([A[rows].real, A[rows].imag])
    _, rho = polar_grid(na, nr, radius)
    weight = np.tile(rho * (radius / nr) * (2 * np.pi / na), na) if norm == "area" else np.ones(na * nr)
    sigma = np.linalg.svd(Ar / np.sqrt(weight), compute_uv=False)
    assert inv.sigma_max == pytest.approx(sigma.max(), rel=1e-10)
    rng = np.random.default_rng(0)
    F = rng.standard_normal((3, na, na)) + 1j * rng.standard_normal((3, na, na))
    b = F.reshape(3, -1)[:, rows]
    b = np.concatenate([b.real, b.imag], axis=1)
    for rel in (1e-6, 1e-2):
        lam = rel * sigma.max() ** 2
        dense = np.linalg.solve(Ar.T @ Ar + lam * np.diag(weight), Ar.T @ b.T).T.reshape(3, na, nr)
        np.testing.assert_allclose(inv.predict(F, lam), dense, atol=1e-9 * np.abs(dense).max())
    eta = rng.random((2, na, nr))
    np.testing.assert_allclose(inv.forward(eta), (eta.reshape(2, -1) @ A.T).reshape(2, na, na), rtol=1e-12)


def test_born_model_matches_solver_on_weak_scatterers(weak):
    F, coe = weak
    predicted = BornInversion(K, NA, NR, RADIUS).forward(coe)
    assert np.linalg.norm(predicted - F) / np.linalg.norm(F) < 0.02


def test_born_regime_recovery(weak, weak_inversion):
    F, coe = weak
    err = sample_errors(weak_inversion.predict(F[N_VAL:]), coe[N_VAL:])["weighted"]
    assert err.mean() < 0.05, err
    # bumps 150× stronger (η up to ≈ 0.3–0.6) leave the Born regime: the linear inversion is much worse, even
    # with λ chosen on strong validation samples
    F_strong, coe_strong = _solver_data((0.15, 0.3), samples=16)
    inv = BornInversion(K, NA, NR, RADIUS)
    inv.fit_lambda(F_strong[:10], coe_strong[:10])
    err_strong = sample_errors(inv.predict(F_strong[10:]), coe_strong[10:])["weighted"]
    assert err_strong.mean() > 2 * err.mean(), (err_strong.mean(), err.mean())


def test_lambda_selection_is_interior(weak, weak_inversion):
    lambdas, errors = weak_inversion.val_curve
    assert np.isfinite(weak_inversion.lam) and weak_inversion.lam > 0
    best = errors[list(lambdas).index(weak_inversion.lam)]
    assert best == errors.min()
    assert best < errors[0] and best < errors[-1]
    assert lambdas[0] < weak_inversion.lam < lambdas[-1]


def test_noise_increases_error_and_is_seeded(weak):
    F, coe = weak
    idx = np.arange(len(F))
    np.testing.assert_array_equal(noisy_far_field(F, 5, idx, seed=1), noisy_far_field(F, 5, idx, seed=1))
    assert not np.array_equal(noisy_far_field(F, 5, idx, seed=1), noisy_far_field(F, 5, idx, seed=2))
    assert noisy_far_field(F, 0, idx) is F
    inv = BornInversion(K, NA, NR, RADIUS)
    means = []
    for noise in (0, 10, 30):
        noisy = noisy_far_field(F, noise, idx)
        inv.fit_lambda(noisy[:N_VAL], coe[:N_VAL])
        means.append(sample_errors(inv.predict(noisy[N_VAL:]), coe[N_VAL:])["weighted"].mean())
    assert means[0] < means[1] < means[2], means
