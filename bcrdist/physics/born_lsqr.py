"""The study's Born reconstruction (arXiv 2503.01596, "Born γ = d"): damped least squares on the Born matrix,
real part, computed exactly in closed form.

The study. On a Cartesian grid (pixel positions y_p, observation and incident directions x̂_o, d_s) the Born
matrix is
    A[(o, s), p] = h_s² γκ² e^{−iκ(x̂_o − d_s)·y_p},   γκ² = e^{iπ/4} √(κ³/(8π)),   h_s = image_extent/image_size,
in the sign convention of the data: as written for farfield_sign −1 (bcrdist's), its complex conjugate for +1.
So A = r·`cartesian_born_matrix(grid)`, r = (h_s/h)², h the grid's pixel spacing: r = 1 for cell centres; for
nodes h_s is the script's cell, 1 % off the node spacing at 100 pixels. (The script writes e^{iπ/4} with
e^{+iκ(x̂−d)·y}, i times the conjugate of ours: which one fits a data set is its Born fit's complex `scale`,
`bcrdist.physics.born.born_fit`.) The study takes
    x = scipy.sparse.linalg.lsqr(A, F, damp=d) = argmin_{x ∈ ℂ^P} ‖A x − F‖² + d²‖x‖²,   η = Re x.

Closed form. x = (AᴴA + d²I)⁻¹ AᴴF, and AᴴA[p, q] = |γκ²h_s²|² g_obs(y_p − y_q)·conj g_inc(y_p − y_q) with
g(z) = Σ_j e^{iκ θ̂_j·z}. When the observation and incident directions are the same set (n_obs = n_inc on one
angle grid: every bcrdist data set and the study) AᴴA = |γκ²h_s²|²|g|² is REAL, so is its inverse, and
    Re x = (Re AᴴA + d²I)⁻¹ Re(AᴴF),
the real-stacked Tikhonov estimate with the plain coefficient norm on the matrix r·A_bcrdist:
    Re x = (1/r)·η_λ,   λ = d²/r²,
η_λ the euclidean-norm Tikhonov estimate on bcrdist's own matrix (`CartesianBornInversion`, norm "euclidean").
`CartesianBlockSolve` applies it through the inversion's parity-block eigendecomposition with every eigenpair,
exact to rounding at any d > 0 (tests: scipy's lsqr on the dense matrix agrees to ~1e-12).
`DampedLsqrInversion` checks that AᴴA is real (on the offset table of g_obs·conj g_inc, relative imaginary part
≤ 1e-10: direction sets that differ but are both closed under θ → θ + π pass) and refuses otherwise; polar
targets and an unknown sign are refused too.

Shapes: F (B, n_obs, n_inc) complex [obs, src]; images (B, n, n) real (`GridInfo.image_index`); NumPy.
"""

from __future__ import annotations

import math

import numpy as np

from bcrdist.errors import ConfigError
from bcrdist.physics.born import CartesianBornInversion
from bcrdist.physics.layout import GridInfo

REAL_RTOL = 1e-10          # relative imaginary part of AᴴA below which it is real (rounding: ~1e-16)


def study_cell_size(grid: GridInfo) -> float:
    """h_s = image_extent / image_size, the study's quadrature cell (the pixel spacing for cell centres)."""
    return grid.image_extent / grid.image_size


def study_ratio(grid: GridInfo) -> float:
    """r = (h_s/h)²: the study's Born matrix is r times bcrdist's `cartesian_born_matrix`."""
    return (study_cell_size(grid) / grid.pixel_spacing()) ** 2


def normal_is_real(grid: GridInfo) -> bool:
    """Whether AᴴA is real: g_obs·conj g_inc (module docstring) on every pixel offset has relative imaginary part
    ≤ REAL_RTOL."""
    n = grid.image_size
    off = grid.pixel_spacing() * np.arange(1 - n, n)
    zx, zy = np.broadcast_arrays(off[:, None], off[None, :])

    def g_sum(angles):
        return sum(np.exp(1j * grid.k * (math.cos(t) * zx + math.sin(t) * zy)) for t in angles)

    table = g_sum(grid.obs_angles()) * np.conj(g_sum(grid.inc_angles()))
    return bool(np.abs(table.imag).max() <= REAL_RTOL * np.abs(table).max())


def check_lsqr_grid(grid: GridInfo, name: str = "method lsqr") -> None:
    """ConfigError (one line, naming `name`) unless the closed form applies to `grid`: a Cartesian target, a
    known far-field sign and a real normal matrix."""
    if not grid.cartesian:
        raise ConfigError(f"{name}: the study's damped least squares reconstructs Cartesian images; the grid's "
                          f"target is {grid.target}")
    if grid.farfield_sign not in (-1, 1):
        raise ConfigError(f"{name}: the far field's sign convention is unknown; detect it or record it")
    if not normal_is_real(grid):
        raise ConfigError(f"{name}: needs the same observation and incident directions (a real AᴴA), got "
                          f"{grid.n_obs} observation and {grid.n_inc} incident {grid.angles} directions")


class CartesianBlockSolve:
    """The estimate factor · N^{−1/2} (N^{−1/2} Re(AᴴA) N^{−1/2} + λ)^{−1} N^{−1/2} Re(AᴴF) of a
    `CartesianBornInversion` at λ, exact to rounding: F (B, n_obs, n_inc) → image (B, n, n) float64.

    Block by block in the inversion's parity basis (eigenpairs (σ², V_m)): z_m = V_m diag(f_m) V_mᵀ u_m with
    f = factor·col_scale²/(σ² + λ) on EVERY eigenpair when λ > 0. (The inversion's own `predict` drops the pairs
    whose eigenvalue rounding made negative; at λ > 0 their data part, ~√ε·σ_max·c, still counts ~σ/√λ: 1e-7 at
    the study's geometry with d = 0.1.) At λ = 0 the inversion's kept pairs (its pseudo-inverse). Used by
    `DampedLsqrInversion` and, for both methods, by `bcrdist.physics.born_definition.BornEstimator`;
    `block_matrices` gives the symmetric blocks V_m diag(f_m) V_mᵀ for the torch layer.
    """

    def __init__(self, inversion: CartesianBornInversion, lam: float, factor: float = 1.0):
        if not (math.isfinite(lam) and lam >= 0):
            raise ValueError(f"CartesianBlockSolve: λ must be finite and ≥ 0, got {lam}")
        self.inversion, self.lam, self.factor = inversion, float(lam), float(factor)
        s = inversion.s
        use = np.ones_like(s, dtype=bool) if lam > 0 else inversion._kept(lam)
        self.filters = np.divide(self.factor * inversion.col_scale ** 2, s ** 2 + lam, out=np.zeros_like(s),
                                 where=use)                                    # (M, r)

    def _eigenvectors(self, m: int) -> np.ndarray:
        r = self.inversion.blocks[m]
        return self.inversion.Vh[m, :r, :r].T

    def predict(self, F: np.ndarray) -> np.ndarray:
        """image (B, n, n) float64 for far fields F (B, n_obs, n_inc) complex in the grid's convention."""
        inv = self.inversion
        F = np.asarray(F)
        F = F[None] if F.ndim == 2 else F
        if F.shape[1:] != inv.data_shape:
            raise ValueError(f"far field must be (B, {inv.data_shape[0]}, {inv.data_shape[1]}) [obs, src], got "
                             f"{F.shape}")
        rhs = inv.op.adjoint_real(inv.ours(F)).reshape(len(F), inv.n, inv.n)      # Re(AᴴF), image-shaped
        u = inv.bases[0].T @ rhs @ inv.bases[1]
        out = np.zeros_like(u)
        for m, (rows, cols) in enumerate(inv.selections):
            V, r = self._eigenvectors(m), inv.blocks[m]
            z = ((u[:, rows][:, :, cols].reshape(len(F), r) @ V) * self.filters[m, :r]) @ V.T
            out[:, rows[:, None], cols[None, :]] = z.reshape(len(F), len(rows), len(cols))
        return inv.bases[0] @ out @ inv.bases[1].T

    def block_matrices(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """[(rows, cols, K_m)]: block m acts on u[rows][:, cols] (u = bases[0]ᵀ g bases[1], g the image-shaped
        Re(AᴴF)) as the symmetric K_m = V_m diag(f_m) V_mᵀ (r_m × r_m) float64."""
        out = []
        for m, (rows, cols) in enumerate(self.inversion.selections):
            V = self._eigenvectors(m)
            out.append((rows, cols, (V * self.filters[m, :len(V)]) @ V.T))
        return out


class DampedLsqrInversion:
    """Re of scipy's lsqr(A, F, damp) on the study's Born matrix, in closed form: F (B, n_obs, n_inc) → image
    (B, n, n) float64.

    grid: Cartesian, known farfield_sign, a real AᴴA (`check_lsqr_grid`); damp: d > 0. `inversion` is the
    euclidean-norm `CartesianBornInversion` of bcrdist's matrix on `grid` (made here unless given, to reuse
    one), `lam` = d²/r² its λ, `scale` = 1/r the factor on its estimate (module docstring) and `solve` the
    exact `CartesianBlockSolve` at (lam, scale).
    """

    def __init__(self, grid: GridInfo, damp: float, inversion: CartesianBornInversion | None = None):
        if not (math.isfinite(damp) and damp > 0):
            raise ConfigError(f"damp: must be finite and > 0, got {damp}")
        check_lsqr_grid(grid)
        if inversion is not None and (inversion.grid != grid or inversion.norm != "euclidean"):
            raise ValueError("DampedLsqrInversion: the given inversion is not the euclidean one of this grid")
        self.grid, self.damp = grid, float(damp)
        ratio = study_ratio(grid)
        self.inversion = inversion if inversion is not None else CartesianBornInversion(grid, norm="euclidean")
        self.lam = self.damp ** 2 / ratio ** 2
        self.scale = 1 / ratio
        self.solve = CartesianBlockSolve(self.inversion, self.lam, self.scale)

    def predict(self, F: np.ndarray) -> np.ndarray:
        """Re x (B, n, n) float64 for far fields F (B, n_obs, n_inc) in the grid's sign convention."""
        return self.solve.predict(F)
