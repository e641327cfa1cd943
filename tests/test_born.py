"""The Born-inversion baseline (`bcrdist.physics.born`): exactness of the block solve, Born-regime recovery on
solver data, λ selection and noise; on Cartesian targets: the factored operator and the parity-block solve
against dense references, the Born far field against the solver on both angle grids, recovery of weak
scatterers, and the far field's sign convention detected on conjugated data."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from bcrdist.physics.born import (BornInversion, CartesianBornInversion, CartesianBornOperator, born_fit, born_matrix,
                                  cartesian_born_matrix, detect_sign, noisy_far_field, sample_errors)
from bcrdist.physics.generation_config import GenerationConfig
from bcrdist.physics.layout import GridInfo, polar_grid
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


# ------------------------------------------------------------------------------------------ Cartesian targets
SMALL_GRIDS = [
    dict(angles="periodic", n_obs=12, n_inc=12, image_size=8, image_points="centres", image_index="xy", farfield_sign=-1),
    dict(angles="endpoint", n_obs=9, n_inc=10, image_size=7, image_points="nodes", image_index="yx", farfield_sign=1),
    dict(angles="periodic", n_obs=7, n_inc=7, image_size=6, image_points="centres", image_index="xy", farfield_sign=-1),
]


@pytest.mark.parametrize("spec", SMALL_GRIDS, ids=["periodic", "endpoint-nodes-yx-conj", "odd-Na"])
@pytest.mark.parametrize("norm", ["area", "euclidean"])
def test_cartesian_solve_equals_dense_tikhonov(spec, norm):
    grid = GridInfo(k=3 * np.pi, target="cartesian", image_extent=1.0, **spec)
    inv = CartesianBornInversion(grid, norm=norm)
    assert len(inv.blocks) == 4 and sum(inv.blocks) == grid.image_size ** 2   # the two reflections of the grid
    A = cartesian_born_matrix(grid)                   # dense, entry by entry, in the grid's sign convention
    n, (no, ni) = grid.image_size, (grid.n_obs, grid.n_inc)
    rng = np.random.default_rng(1)
    eta = rng.random((2, n, n))
    np.testing.assert_allclose(inv.forward(eta), (eta.reshape(2, -1) @ A.T).reshape(2, no, ni),
                               rtol=0, atol=1e-13 * np.abs(A).max() * n * n)
    weight = grid.pixel_spacing() ** 2 if norm == "area" else 1.0
    U, sigma, Vt = np.linalg.svd(np.concatenate([A.real, A.imag]) / np.sqrt(weight), full_matrices=False)
    assert inv.sigma_max == pytest.approx(sigma.max(), rel=1e-10)
    F = rng.standard_normal((3, no, ni)) + 1j * rng.standard_normal((3, no, ni))
    b = F.reshape(3, -1)
    b = np.concatenate([b.real, b.imag], axis=1)
    for rel, tol in ((1e-10, 1e-6), (1e-6, 1e-9), (1e-2, 1e-12)):
        lam = rel * sigma.max() ** 2
        reference = ((Vt.T * (sigma / (sigma ** 2 + lam))) @ (U.T @ b.T)).T.reshape(3, n, n) / np.sqrt(weight)
        np.testing.assert_allclose(inv.predict(F, lam), reference, rtol=0, atol=tol * np.abs(reference).max())


def _weak_farfield_data(angles: str, na: int, samples: int = 32, **extra):
    """Weak Gaussian bumps (η ≤ 2e-3) on the demo tier in the far-field/image layout: (grid, F, image)."""
    base = demo_gaussian_config((1e-3, 2e-3), samples)
    cfg = dataclasses.replace(base, Na=na, layout="farfield", angles=angles, **extra)
    cfg.validate()
    assert isinstance(cfg, GenerationConfig)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        maker = SampleMaker(cfg)
        arrays = [maker(i) for i in range(samples)]
    finally:
        torch.set_num_threads(threads)
    return maker.grid, np.stack([a["farfield"] for a in arrays]), np.stack([a["image"] for a in arrays])


@pytest.fixture(scope="module", params=[("periodic", 32), ("endpoint", 33)], ids=["periodic", "endpoint"])
def weak_cartesian(request):
    return _weak_farfield_data(*request.param)


def test_cartesian_born_matches_solver(weak_cartesian):
    grid, F, image = weak_cartesian
    predicted = CartesianBornOperator(grid).forward(image)
    err = np.linalg.norm(predicted - F) / np.linalg.norm(F)
    wrong_sign = np.linalg.norm(np.conj(predicted) - F) / np.linalg.norm(F)
    print(f"{grid.angles}: solver vs Cartesian Born {err:.2e}, vs the conjugate convention {wrong_sign:.2f}")
    assert err < 5e-3 and wrong_sign > 0.5


def test_cartesian_born_on_another_image_grid_matches_solver():
    # the image on its own 40² cell centres (not the solver's 32²) predicts the same far field
    grid, F, image = _weak_farfield_data("endpoint", 17, samples=8, image_size=40)
    assert image.shape[1:] == (40, 40)
    err = np.linalg.norm(CartesianBornOperator(grid).forward(image) - F) / np.linalg.norm(F)
    assert err < 5e-3, err


def test_cartesian_born_recovers_weak_scatterers(weak_cartesian):
    grid, F, image = weak_cartesian
    inv = CartesianBornInversion(grid)
    inv.fit_lambda(F[:N_VAL], image[:N_VAL])
    errors = sample_errors(inv.predict(F[N_VAL:]), image[N_VAL:], kind="cartesian")
    assert "weighted" not in errors
    print(f"{grid.angles}: relative L2 {errors['rel_l2'].mean():.4f}, L1 {errors['rel_l1'].mean():.4f}, "
          f"λ = {inv.lam / inv.sigma_max ** 2:.1e}·σ_max²")
    assert errors["rel_l2"].mean() < 0.03 and errors["rel_l1"].mean() < 0.06
    lambdas, curve = inv.val_curve
    assert lambdas[0] < inv.lam < lambdas[-1] and curve.min() < curve[0] and curve.min() < curve[-1]


def test_sign_convention_detected_on_conjugated_data(weak_cartesian):
    grid, F, image = weak_cartesian
    sign, fits = detect_sign(grid, F, image)
    assert sign == -1 and fits[-1]["score"] > 0.999 and abs(fits[-1]["scale"] - 1) < 0.01
    conj = np.conj(F)                        # the same data in the port's convention (kernel e^{+iκ(x̂−d)·y})
    sign, fits_conj = detect_sign(grid.with_sign(None), conj, image)
    assert sign == 1 and fits_conj[1]["score"] == pytest.approx(fits[-1]["score"], rel=1e-12)
    ours = CartesianBornInversion(grid)
    theirs = CartesianBornInversion(grid.with_sign(1))
    lam = 1e-6 * ours.sigma_max ** 2
    np.testing.assert_allclose(theirs.predict(conj, lam), ours.predict(F, lam), rtol=0, atol=1e-12)
    # read with the wrong convention, the conjugated data give no usable image
    wrong = sample_errors(ours.predict(conj, lam), image, kind="cartesian")["rel_l2"].mean()
    assert wrong > 0.5, wrong


def test_sign_of_centrally_symmetric_images_is_ambiguous():
    grid = GridInfo(k=4 * np.pi, angles="periodic", n_obs=16, n_inc=16, target="cartesian", image_size=16,
                    image_extent=1.0)
    x = grid.image_axis()
    bump = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / 0.02)[None]    # η(−y) = η(y): η̂ real, conj F = −i·F
    F = CartesianBornOperator(grid).forward(bump)
    fits = born_fit(grid, F, bump)
    assert fits[-1]["score"] == pytest.approx(fits[1]["score"], rel=1e-9)
    with pytest.raises(ValueError, match="ambiguous"):
        detect_sign(grid, F, bump)
    with pytest.raises(ValueError, match="sign convention is unknown"):
        CartesianBornInversion(grid.with_sign(None))
