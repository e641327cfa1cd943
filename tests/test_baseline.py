"""The Born-inversion baseline: exactness of the block solve, Born-regime recovery on solver data, λ selection,
noise, and the `bcrdist baseline` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bcrdist.cli import main
from bcrdist.data.splits import write_splits
from bcrdist.physics.born import BornInversion, born_matrix, noisy_far_field, sample_errors
from bcrdist.data.generate import generate
from bcrdist.physics.generation_config import FamilyConfig, GaussianFamily, GenerationConfig
from bcrdist.physics.sampling import SampleMaker
from bcrdist.physics.layout import polar_grid
from train_helpers import make_dataset

K = 4 * np.pi          # the demo tier: n = 32, k = 4π, Na = 32, Nr = 16, polar radius 0.5
NA, NR, RADIUS = 32, 16, 0.5
N_VAL = 24


def _config(amplitude, samples, **kw) -> GenerationConfig:
    gauss = GaussianFamily(count=(1, 3), amplitude=amplitude, width=(0.08, 0.1), tail_sigmas=3.5)
    return GenerationConfig(n=32, k_over_pi=4.0, Na=NA, Nr=NR, polar_radius=RADIUS, samples=samples, seed=5,
                      family=FamilyConfig(gaussian=gauss), **kw)


def _solver_data(amplitude, samples: int = 32):
    """Far fields from the real Lippmann–Schwinger solver and polar targets, (F, coe)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # the generator's setting: tiny solves are slower with a thread pool
    try:
        maker = SampleMaker(_config(amplitude, samples))
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


def test_cli_reports_metrics_and_lambda(tmp_path, capsys):
    data = tmp_path / "data"
    generate(_config((0.05, 0.1), 40, samples_per_shard=20), data, progress=False)
    write_splits(data, 0.75, val=10)
    out = tmp_path / "baseline.json"
    assert main(["baseline", "--data", str(data), "--noise", "1", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert set(doc["metrics"]) == {"weighted", "rel_l2", "psnr"}
    assert set(doc["metrics"]["weighted"]) == {"mean", "std", "max", "count"}
    assert doc["metrics"]["weighted"]["count"] == 10 and doc["val_count"] == 10
    assert 0 < doc["metrics"]["weighted"]["mean"] < 0.5
    assert np.isfinite(doc["lambda"]) and doc["lambda"] > 0
    assert doc["operator"] == {"k": pytest.approx(K), "Na": NA, "Nr": NR, "polar_radius": RADIUS}
    assert "Born baseline" in capsys.readouterr().out


def test_cli_one_line_error_without_farfield(tmp_path, capsys):
    data = make_dataset(tmp_path / "nofar", n=40, val=8)
    assert main(["baseline", "--data", str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no 'farfield' dataset" in err and err.startswith("bcrdist baseline: error:")
