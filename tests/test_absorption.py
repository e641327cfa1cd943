"""Absorbing scatterers (complex contrast η·(1 + iα)): an absorbing disk against the Mie series with complex
interior wavenumber, the energy balance extinction = scattering + absorption for a smooth absorbing
scatterer, and `bcrdist generate` with absorption levels writing complex `eta`, `absorption` and `residual`.

The references are written here from the formulas (docs/physics.md, Absorption), not taken from the code
under test."""

import numpy as np
import pytest

from bcrdist.cli import main as cli_main
from bcrdist.physics.scatterers import KIND_ELLIPSE, Scatterer
from bcrdist.physics.solver import ScatteringSolver, grid_coordinates
from generation_helpers import TINY, read_dataset, write_config
from scattering_reference import mie_far_field

K = 8 * np.pi

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def angles(na):
    return 2 * np.pi * np.arange(na) / na


def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def test_absorbing_disk_matches_complex_mie_series():
    a, eta0, alpha, centre = 0.3, 0.2, 1.0, np.array([0.05, -0.03])
    rec = angles(32)
    inc = rec[::4]
    ref = mie_far_field(K, a, eta0 * (1 + 1j * alpha), centre, rec, inc)
    lossless = mie_far_field(K, a, eta0, centre, rec, inc)
    assert rel(ref, lossless) > 0.1        # absorption changes the far field well beyond the errors below
    disk = Scatterer("discs", np.array([[KIND_ELLIPSE, eta0, *centre, a, a, 0.0]]), 0.45, clip=False, smooth=False,
                     absorption=alpha)
    errors = [rel(ScatteringSolver(n, K, inc, rec, tol=1e-10).far_field(disk.contrast_raster(n, 1.0, 8)), ref)
              for n in (32, 64, 128)]
    print("absorbing disk (η = 0.2(1 + i)) vs Mie, n = 32, 64, 128: " + ", ".join(f"{e:.2e}" for e in errors))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-3


def energy_balance(eta, n, k, na=128, tol=1e-12):
    """(extinction, scattering, absorption) for the incident directions 0 and 37 of `na`, each (2,):
    E = −√(8π/k) Re(e^{iπ/4} u_∞(d; d)), S = ∫|u_∞|² ds (trapezoidal on na receivers, spectral),
    A = k ∫ Im η |u|² dx with u = w/η inside the scatterer (w the solver's contrast source)."""
    rec = angles(na)
    inc = rec[[0, 37]]
    solver = ScatteringSolver(n, k, inc, rec, tol=tol)
    f = solver.far_field(eta)
    w = solver.contrast_source(eta)
    extinction = -np.sqrt(8 * np.pi / k) * np.real(np.exp(0.25j * np.pi) * f[[0, 1], [0, 37]])
    scattering = (2 * np.pi / na) * np.sum(np.abs(f) ** 2, axis=1)
    inside = eta != 0
    u2 = np.abs(w[:, inside]) ** 2 / np.abs(eta[inside]) ** 2
    absorption = k * (1.0 / n) ** 2 * np.sum(eta.imag[inside] * u2, axis=1)
    return extinction, scattering, absorption


def radial_gaussian(n, alpha, amp=0.4, sigma=0.08, c=(0.05, -0.03)):
    x = grid_coordinates(n, 1.0)
    xx, yy = np.meshgrid(x, x, indexing="ij")
    return amp * np.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / (2 * sigma ** 2)) * (1 + 1j * alpha)


@pytest.mark.parametrize("n", [32, 64])
def test_energy_balance_of_an_absorbing_gaussian(n):
    extinction, scattering, absorption = energy_balance(radial_gaussian(n, alpha=1.0), n, K)
    defect = np.abs(extinction - scattering - absorption) / extinction
    print(f"n = {n}, α = 1: extinction {extinction[0]:.6f} = scattering {scattering[0]:.6f} + absorption "
          f"{absorption[0]:.6f}; relative defect {defect.max():.1e}")
    assert np.all(absorption > 0.3 * extinction)      # a genuine loss, not a rounding-level term
    assert defect.max() < 1e-10
    lossless = energy_balance(radial_gaussian(n, alpha=0.0), n, K)
    assert np.all(lossless[2] == 0) and np.abs(lossless[0] - lossless[1]).max() < 1e-10 * lossless[0].max()


def test_generate_with_absorption_writes_complex_eta_absorption_and_residual(tmp_path):
    cfg = {**TINY, "family": {**TINY["family"], "absorption": [0.0, 1.0]}}
    out = tmp_path / "data"
    assert cli_main(["generate", "--config", str(write_config(tmp_path / "abs.yaml", cfg)), "--out", str(out),
                     "--quiet"]) == 0
    data = read_dataset(out)
    eta, alpha = data["eta"], data["absorption"]
    assert eta.dtype == np.complex64 and eta.shape == (6, 16, 16)
    assert alpha.dtype == np.float32 and alpha.shape == (6,) and set(alpha.tolist()) == {0.0, 1.0}
    np.testing.assert_allclose(eta.imag, alpha[:, None, None] * eta.real, rtol=1e-6)
    assert data["coe"].dtype == np.float32 and data["coe"].min() >= 0          # the target stays Re η
    assert data["residual"].dtype == np.float32 and np.all(data["residual"] > 0)
    assert np.all(data["residual"] <= 1.1e-8)    # solver.tol (default 1e-8), to the accuracy of GMRES's estimate
    plain = tmp_path / "plain"
    assert cli_main(["generate", "--config", str(write_config(tmp_path / "plain.yaml", TINY)), "--out", str(plain),
                     "--quiet"]) == 0
    lossless = read_dataset(plain)
    assert "absorption" not in lossless and lossless["eta"].dtype == np.float32
    np.testing.assert_array_equal(lossless["eta"], eta.real)                  # the same scatterers
    absorbing = alpha > 0
    assert not np.allclose(lossless["farfield"][absorbing], data["farfield"][absorbing])
    np.testing.assert_array_equal(lossless["farfield"][~absorbing], data["farfield"][~absorbing])


@pytest.mark.parametrize("compress", [False, True])
def test_last_residuals_are_the_directions_residuals(compress):
    n, na = 40, 64
    eta = radial_gaussian(n, alpha=1.0)
    solver = ScatteringSolver(n, K, angles(na), angles(na), tol=1e-8, compress=compress)
    w = solver.contrast_source(eta)
    # the residual of w − k²η(Φ∗w) = η u_in per direction, from the kernel's convolution on the whole grid
    x = grid_coordinates(n, 1.0)
    xx, yy = np.meshgrid(x, x, indexing="ij")
    d = angles(na)
    rhs = eta * np.exp(1j * K * (np.cos(d)[:, None, None] * xx + np.sin(d)[:, None, None] * yy))
    residual = rhs - w + K ** 2 * eta * solver.kernel.convolve(w)
    expected = np.linalg.norm(residual, axis=(1, 2)) / np.linalg.norm(rhs, axis=(1, 2))
    assert solver.last_residuals.shape == (na,)
    np.testing.assert_allclose(solver.last_residuals, expected, rtol=1e-4)
    assert expected.max() <= 1.1e-8 and expected.min() > 0
    if compress:
        assert len(solver.last_iterations) < na      # fewer modes solved than directions
