"""Linear baseline: Tikhonov-regularised inversion of the Born operator, far field → η on the polar grid
(`BornInversion`) or on Cartesian pixels (`CartesianBornInversion`), both by the spectral filter of
`TikhonovInversion`.

POLAR TARGET (Fan's layout).

Model. In the Born approximation (u ≈ u_in) the far field is linear in η:
    F[o, s] = u_∞^B(x̂_o; d_s) = γ k² ∫ e^{−ik(x̂_o − d_s)·y} η(y) dy,   γ = e^{iπ/4}/√(8πk),
with x̂_o = (cos θ_o, sin θ_o), d_s = (cos θ_s, sin θ_s), θ_j = 2πj/Na — the data sets' F[obs, src]. η is
discretised on the polar target cells of `coe` (Nt = Na angles, Nr radii), y_{ji} = ρ_i (cos θ_j, sin θ_j),
ρ_i = (i + ½)R/Nr, R = polar_radius, with the midpoint weights w_i = ρ_i Δρ Δθ (Δρ = R/Nr, Δθ = 2π/Na):
    A[(o, s), (j, i)] = γ k² e^{−ik(x̂_o − d_s)·y_{ji}} w_i,     F ≈ A η,
A complex (Na·Na) × (Nt·Nr), rows row-major over F[o, s], columns row-major over coe[j, i] (`born_matrix`).

Estimate. η real, so the least-squares problem is the real-stacked one,
    η_λ = argmin_η ‖[Re A; Im A] η − [Re F; Im F]‖² + λ‖η‖²_N,
solved with the SVD [Re A; Im A] N^{−1/2} = U diag(σ) Vᵀ, computed once and reused for every λ and sample:
    η_λ = N^{−1/2} V diag(σ/(σ² + λ)) Uᵀ b,   b = [Re F; Im F].
The norm (`norm=`): "area" (default) ‖η‖²_N = Σ_{ji} w_i η_{ji}² ≈ ∫ η², the L² norm of the function, N =
diag(w); "euclidean" the plain Σ η_{ji}² of the coefficients (N = I). The euclidean norm makes the small inner
cells expensive (their data effect is ∝ w_i ∝ ρ_i), so the minimiser pushes mass outwards: on weak scatterers
(the Born regime, demo tier, Gaussian bumps of width 0.06–0.12) it leaves 21–29 % radius-weighted error where
the area norm leaves 1–6 %, and on the demo test split 29 % against 17 %. λ is chosen on a validation split
(`fit_lambda`: a log grid λ = σ_max² · 10^t, t ∈ [−12, 0], minimising the mean radius-weighted relative error
`bcrdist.metrics.weighted_relative_error`).

What limits it: the data see only the Fourier disk |ξ| ≤ 2k of η (resolution ≈ half a wavelength), and for
stronger scatterers multiple scattering, which the linear model cannot explain.

The SVD is taken block by block, which is exact and makes the Fan–Ying size (Na = 160, Nr = 80, where the dense
real-stacked A would be 51 200 × 12 800) cheap: rotating η by 2π/Na shifts both indices of F by one, so with
G[s, q] = F[(s + q) mod Na, s] (source s, offset q = o − s) the operator is a circular correlation in (s, j):
    Ĝ[m, :] = B_m η̂[m, :],   B_m[q, i] = Σ_t a[t, q, i] e^{+2πimt/Na},   a[t, q, i] = A[(q, 0), (t, i)],
where ^ is the DFT over s (resp. j); N is diagonal per radius, so it commutes with the DFT and is folded into
the columns of B_m. By Parseval the objective is (1/Na) Σ_m ‖B_m η̂_m − Ĝ_m‖² + λ‖η̂_m‖²,
and η real means η̂_{Na−m} = conj(η̂_m): mode pairs (m, Na − m) become one complex Tikhonov problem in
z = η̂_m with matrix C_m = [B_m; conj B_{Na−m}] (2·Nq × Nr) and regulariser 2λ; the self-conjugate modes m = 0
(and Na/2) are real-stacked [Re B_m; Im B_m] with regulariser λ. One batched SVD of the ⌊Na/2⌋ + 1 blocks is
the SVD of [Re A; Im A] N^{−1/2} up to orthogonal changes of basis (σ = s/√2 on the pair blocks); the tests
compare with the dense solve. Set-up takes 3 s at Na = 160, Nr = 80, milliseconds at the demo tier.

`entries="measure"` restricts the data to the even offsets q = 2j, i.e. exactly the entries of BCR-Net's input
`measure`/`measure_imag`; the default "farfield" uses all Na² entries.

Noise: a model of `bcrdist.noise` (`fan`: X(1 + σε) on Re F and Im F separately; `complex`: (1 + δZ)·F;
`additive`: F + δ‖F‖/√n·Z) with the fixed per-sample draw of the evaluation splits (`bcrdist.noise.noisy_samples`
seeded by (the model's fixed stream, seed, global sample index)), so that on the far-field layout the baseline and
`bcrdist evaluate` see the same noisy far field (`noisy_far_field`).

CARTESIAN TARGET (the far-field/image layout, any angle grids, `bcrdist.physics.layout.GridInfo`). With pixel
positions y_p, spacing h (weight h²), observation and incident directions x̂_o, d_s:
    A[(o, s), p] = γ k² h² e^{−ik(x̂_o − d_s)·y_p} = γk²h² conj(E_obs[o, p]) E_inc[s, p],   E[·, p] = e^{ik(·)·y_p},
applied in factored form (`CartesianBornOperator`: O(n_obs·n_inc·P) per sample, A never formed). A data set with
farfield_sign +1 (the port's kernel e^{+iκ(x̂−d)·y}) is conjugated first (conj F ≈ Aη for real η). The spectrum
comes from the normal matrix: Re(AᴴA)[p, q] = |γk²h²|² Re(g_obs(y_p − y_q)·conj g_inc(y_p − y_q)),
g(z) = Σ_j e^{ik θ̂_j·z}, a function of the pixel offset (a (2n−1)² table), even in the offset. When the
direction sets are symmetric under θ → −θ (both grids; checked on the table, else one block) it is also even in
each offset component, so it commutes with flipping the pixel index along either axis and the even/odd
combinations (e_i ± e_{n−1−i})/√2 split it into four blocks of ≈ n²/4 (16× less work than one n² eigenproblem),
each diagonalised by eigh: η_λ = N^{−1/2} V diag(1/(σ² + λ)) Vᵀ N^{−1/2} Re(AᴴF), N = h² (area norm) or 1. The
normal matrix gives σ² to ~10⁻¹⁶·σ_max², so every λ of the grid (≥ 10⁻¹²·σ_max²) is resolved: against the SVD of
the dense operator 7·10⁻⁸ at λ = 10⁻¹⁰·σ_max², 10⁻¹⁴ at 10⁻²·σ_max² (tests). λ is chosen on validation by the
mean relative L2 error.

SIGN. `born_fit` compares F and its conjugate with the Born prediction of the true images (F ≈ c·Aη by least
squares over the samples): the right convention has the larger score |⟨Aη, F⟩|/(‖Aη‖‖F‖) (weak scatterers: 1.000
against 0.83 for the conjugate; equal for centrally symmetric η, whose η̂ is real); `detect_sign` picks it.

Shapes: F (B, n_obs, n_inc) complex [obs, src]; η, coe (B, Nt, Nr) real [angle, radius]; image (B, n, n) real
(`GridInfo.image_index`); arrays are NumPy.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from bcrdist.noise import noisy_samples
from bcrdist.physics.layout import GridInfo, polar_grid
from bcrdist.metrics import per_sample_error, psnr, relative_l1, relative_l2, weighted_relative_error

ENTRIES = ("farfield", "measure")
NORMS = ("area", "euclidean")
DEFAULT_LOG10_RANGE = (-12.0, 0.0)
DEFAULT_GRID_SIZE = 49


def _gamma(k: float) -> complex:
    return np.exp(0.25j * np.pi) / math.sqrt(8 * math.pi * k)


def _unit(angles: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def born_matrix(k: float, Na: int, Nr: int, polar_radius: float) -> np.ndarray:
    """The dense Born operator A: complex128 (Na·Na, Na·Nr), rows (o, s) of F[o, s], columns (j, i) of coe.

    For reference and tests; `BornInversion` never forms it (5 GB at Na = 160, Nr = 80).
    """
    theta, rho = polar_grid(Na, Nr, polar_radius)
    unit = _unit(theta)                                                          # (Na, 2)
    y = (unit[:, None, :] * rho[None, :, None]).reshape(-1, 2)                   # (Na·Nr, 2), (j, i)
    w = np.tile(rho * (polar_radius / Nr) * (2 * np.pi / Na), Na)                # (Na·Nr,)
    diff = (unit[:, None, :] - unit[None, :, :]).reshape(-1, 2)                  # (Na·Na, 2), (o, s)
    return _gamma(k) * k ** 2 * np.exp(-1j * k * (diff @ y.T)) * w


def cartesian_born_matrix(grid: GridInfo) -> np.ndarray:
    """The dense Born operator of a Cartesian grid in the grid's sign convention: complex128
    (n_obs·n_inc, n²), rows (o, s) of F[o, s], columns (i, j) of image[i, j]. For reference and tests."""
    diff = (_unit(grid.obs_angles())[:, None, :] - _unit(grid.inc_angles())[None, :, :]).reshape(-1, 2)
    a = _gamma(grid.k) * grid.k ** 2 * grid.pixel_spacing() ** 2 * np.exp(-1j * grid.k * (diff @ grid.pixel_positions().T))
    return np.conj(a) if grid.farfield_sign == 1 else a


def noisy_far_field(F: np.ndarray, noise_percent: float, indices, seed: int = 0, model: str = "fan") -> np.ndarray:
    """F (B, n_obs, n_inc) complex with noise `model` (`bcrdist.noise.MODELS`) at `noise_percent`, in F's complex
    dtype (at least complex64).

    Sample b's draw is the evaluation splits' fixed one, seeded by (the model's fixed stream, seed, indices[b])
    (`bcrdist.noise.noisy_samples` with no epoch): reproducible, independent of batching, and the draw the data
    pipeline gives the complex far field of the same sample and seed. Returns F itself (not a copy) when
    noise_percent is 0.
    """
    if noise_percent < 0:
        raise ValueError(f"noise must be ≥ 0 (percent), got {noise_percent}")
    if not noise_percent:
        return F
    F = np.asarray(F)
    return noisy_samples(F.astype(np.result_type(F.dtype, np.complex64), copy=False), model, noise_percent,
                         indices, seed)


def sample_errors(pred: np.ndarray, target: np.ndarray, out_scale: float = 1.0, kind: str = "polar"
                  ) -> dict[str, np.ndarray]:
    """Per-sample metrics of (B, …) predictions, as `bcrdist evaluate` computes them.

    weighted (polar `kind` only) / rel_l2 / rel_l1: scale-free relative errors; psnr in the training units of
    BCR-Net (both images divided by `out_scale`, pixel_max 2), so pass the model's output scale to compare PSNR
    with `bcrdist evaluate`.
    """
    p = torch.from_numpy(np.asarray(pred, dtype=np.float64) / out_scale)
    t = torch.from_numpy(np.asarray(target, dtype=np.float64) / out_scale)
    out = {"weighted": weighted_relative_error(p, t).numpy()} if kind == "polar" else {}
    out.update({"rel_l2": relative_l2(p, t).numpy(), "rel_l1": relative_l1(p, t).numpy(), "psnr": psnr(p, t).numpy()})
    return out


def linear_map_matrix(predict, data_shape: tuple[int, int], chunk: int = 256) -> np.ndarray:
    """The dense real matrix M (n_out, 2·n_obs·n_inc) float64 of an R-linear map `predict` of far fields
    (B, n_obs, n_inc) → (B, …): predict(F)[b].ravel() = M @ concat(Re F[b].ravel(), Im F[b].ravel()). Column c
    is the image of the unit far field (entry c, real part; entry c − n_entries, imaginary part), `chunk`
    columns at a time."""
    n_obs, n_inc = data_shape
    n = n_obs * n_inc
    columns = []
    for start in range(0, 2 * n, chunk):
        c = np.arange(start, min(start + chunk, 2 * n))
        unit = np.zeros((len(c), n), dtype=np.complex128)
        unit[np.arange(len(c)), c % n] = np.where(c < n, 1.0, 1j)
        columns.append(predict(unit.reshape(-1, n_obs, n_inc)).reshape(len(c), -1))
    return np.concatenate(columns).T


class TikhonovInversion:
    """The spectral Tikhonov filter shared by the Born inversions, on a block-diagonalised operator.

    The scaled real operator [Re A; Im A] N^{−1/2} is, up to orthogonal changes of basis, block diagonal with
    blocks C_m = U_m diag(s_m) Vh_m; data project to c_m = U_mᴴ h_m (`project`, per subclass) and
        z_m = Vh_mᴴ diag(s_m / (s_m² + λ r_m)) c_m
    are the image's coordinates, which the subclass maps back (`_assemble`). s (M, r) and Vh (M, r, C) may be
    zero-padded (s = 0 is dropped); r_m (`reg_factor`, (M,)) is the regulariser's weight on block m.
    λ is chosen on validation data by the mean of `selection_metric` (`fit_lambda`). Subclasses give the far
    fields' shape (n_obs, n_inc) as `data_shape`.
    """

    selection_metric = "weighted"
    rank_rtol = 1e-12          # relative singular values below this are rank deficiency (λ = 0: pseudo-inverse)

    def _set_spectrum(self, s: np.ndarray, Vh: np.ndarray, reg_factor: np.ndarray) -> None:
        self.s, self.Vh, self.reg_factor = s, Vh, reg_factor
        self._Vh_conj = Vh.conj() if np.iscomplexobj(Vh) else Vh
        self.lam: float | None = None
        self.val_curve: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def sigma_max(self) -> float:
        """Largest singular value of the real-stacked [Re A; Im A] N^{−1/2} (rows: the entries used)."""
        # pair blocks carry η̂_m twice in ‖η‖² = (1/Na)Σ‖η̂_m‖², hence the √2 relative to the real blocks
        scaled = self.s / np.sqrt(self.reg_factor)[:, None]
        return float(scaled.max())

    def lambda_grid(self, num: int = DEFAULT_GRID_SIZE, log10_range=DEFAULT_LOG10_RANGE) -> np.ndarray:
        """Log grid σ_max² · 10^t, t = linspace(*log10_range, num)."""
        return self.sigma_max ** 2 * np.logspace(log10_range[0], log10_range[1], num)

    def solve(self, c: np.ndarray, lam: float) -> np.ndarray:
        """η_λ (B, …) from projected data c (`project`)."""
        if not lam >= 0:
            raise ValueError(f"λ must be ≥ 0, got {lam}")
        s = self.s
        denom = s ** 2 + lam * self.reg_factor[:, None]
        keep = self._kept(lam)
        filt = np.divide(s, denom, out=np.zeros_like(s), where=keep)            # (M, r)
        z = np.matmul((c * filt).transpose(1, 0, 2), self._Vh_conj).transpose(1, 0, 2)  # (B, M, C)
        return self._assemble(z)

    def _kept(self, lam: float) -> np.ndarray:
        """The singular values (M, r) that enter the filter."""
        return self.s > self.rank_rtol * self.s.max()

    def fit_lambda(self, F_val: np.ndarray, target_val: np.ndarray, lambdas=None) -> float:
        """Choose λ minimising the mean `selection_metric` on validation data.

        F_val (B, n_obs, n_inc) (noisy if the evaluation is), target_val the true images. lambdas: the candidates
        (default `lambda_grid()`). Stores λ in `self.lam` and (lambdas, mean errors) in `self.val_curve`.
        """
        target = torch.from_numpy(self._check_target(target_val))
        lambdas = self.lambda_grid() if lambdas is None else np.asarray(lambdas, dtype=np.float64).reshape(-1)
        if lambdas.size == 0 or not np.all(np.isfinite(lambdas)) or (lambdas < 0).any():
            raise ValueError("lambdas: need a non-empty list of finite values ≥ 0")
        c = self.project(F_val)
        errors = np.array([per_sample_error(self.selection_metric, torch.from_numpy(self.solve(c, lam)),
                                            target).numpy().mean() for lam in lambdas])
        if not np.isfinite(errors).any():
            raise ValueError("validation errors are not finite for any λ (all-zero targets?)")
        best = int(np.nanargmin(errors))
        self.lam = float(lambdas[best])
        self.val_curve = (lambdas, errors)
        return self.lam

    def predict(self, F: np.ndarray, lam: float | None = None) -> np.ndarray:
        """η (B, …) float64 for far fields F (B, n_obs, n_inc); λ from `fit_lambda` unless given."""
        return self.solve(self.project(F), self._lambda(lam))

    def reconstruction_matrix(self, lam: float | None = None, chunk: int = 256) -> np.ndarray:
        """The estimate at λ as one dense real matrix (η_λ is R-linear in F): M (n_pixels, 2·n_entries) float64,
            predict(F, λ)[b].ravel() = M @ concat(Re F[b].ravel(), Im F[b].ravel()),
        F[b].ravel() row-major over [obs, src], the image row-major as `predict` returns it. Column c is the
        estimate of the unit far field (entry c, real part; entry c − n_entries, imaginary part), computed
        `chunk` at a time; λ from `fit_lambda` unless given."""
        lam = self._lambda(lam)
        return linear_map_matrix(lambda F: self.predict(F, lam), self.data_shape, chunk)

    def _lambda(self, lam: float | None) -> float:
        lam = self.lam if lam is None else lam
        if lam is None:
            raise ValueError("no λ: call fit_lambda first or pass lam")
        return lam

    def _check_far_field(self, F, shape: tuple[int, int]) -> np.ndarray:
        F = np.asarray(F)
        if F.ndim == 2:
            F = F[None]
        if F.shape[1:] != shape:
            raise ValueError(f"far field must be (B, {shape[0]}, {shape[1]}) [obs, src], got {F.shape}")
        return F

    def _check_images(self, images, shape: tuple[int, int], what: str) -> np.ndarray:
        images = np.asarray(images, dtype=np.float64)
        if images.ndim == 2:
            images = images[None]
        if images.shape[1:] != shape:
            raise ValueError(f"{what} must be (B, {shape[0]}, {shape[1]}), got {images.shape}")
        return images


class BornInversion(TikhonovInversion):
    """Tikhonov-regularised Born inversion F (B, Na, Na) → η (B, Nt = Na, Nr) on the polar grid.

    k: wavenumber (absolute units, k = k_over_pi·π); Na: angles of sources, receivers and the polar grid;
    Nr: radii; polar_radius: R of the polar grid (polar_radius·box of the data config); entries: "farfield"
    (all of F) or "measure" (the even offsets BCR-Net sees); norm: "area" (‖η‖² = Σ w_i η², default) or
    "euclidean" (Σ η²). See the module docstring for the formulas.
    """

    def __init__(self, k: float, Na: int, Nr: int, polar_radius: float, *, entries: str = "farfield",
                 norm: str = "area"):
        if not k > 0 or not polar_radius > 0 or Na < 2 or Nr < 1:
            raise ValueError(f"BornInversion: need k > 0, polar_radius > 0, Na ≥ 2, Nr ≥ 1; got k={k}, "
                             f"Na={Na}, Nr={Nr}, polar_radius={polar_radius}")
        if entries not in ENTRIES:
            raise ValueError(f"entries: expected one of {ENTRIES}, got {entries!r}")
        if norm not in NORMS:
            raise ValueError(f"norm: expected one of {NORMS}, got {norm!r}")
        if entries == "measure" and Na % 2:
            raise ValueError(f"entries='measure' needs an even Na, got {Na}")
        self.k, self.Na, self.Nr, self.R = float(k), int(Na), int(Nr), float(polar_radius)
        self.entries, self.norm = entries, norm
        self.offsets = np.arange(0, Na, 2) if entries == "measure" else np.arange(Na)

        # a[t, q, i] = A[(o = q, s = 0), (t, i)]
        theta, rho = polar_grid(Na, Nr, polar_radius)
        unit = _unit(theta)
        diff = unit[self.offsets] - unit[0]                                     # x̂_q − d_0, (Nq, 2)
        proj = np.einsum("qc,tc->tq", diff, unit)                               # (x̂_q − d_0)·(cos θ_t, sin θ_t)
        w = rho * (polar_radius / Nr) * (2 * np.pi / Na)
        a = _gamma(k) * k ** 2 * np.exp(-1j * k * proj[:, :, None] * rho) * w   # (Na, Nq, Nr)
        self.col_scale = w ** -0.5 if norm == "area" else np.ones(Nr)          # N^{−1/2}, per radius
        B = Na * np.fft.ifft(a, axis=0) * self.col_scale                        # B[m] N^{−1/2}, (Nq, Nr)

        self.modes = np.arange(Na // 2 + 1)                                     # m = 0 … ⌊Na/2⌋
        self.real_mode = (self.modes == 0) | (2 * self.modes == Na)             # self-conjugate modes
        blocks = []
        for m in self.modes:
            if self.real_mode[m]:
                blocks.append(np.concatenate([B[m].real, B[m].imag]).astype(np.complex128))
            else:
                blocks.append(np.concatenate([B[m], np.conj(B[(Na - m) % Na])]))
        C = np.stack(blocks)                                                    # (M, 2·Nq, Nr)
        U, s, Vh = np.linalg.svd(C, full_matrices=False)
        self.U = U                                                              # (M, 2Nq, r)
        # λ on real blocks, 2λ on pairs
        self._set_spectrum(s, Vh, np.where(self.real_mode, 1.0, 2.0))

    @property
    def data_shape(self) -> tuple[int, int]:
        return self.Na, self.Na

    def forward(self, eta: np.ndarray) -> np.ndarray:
        """Born far field of polar-grid η (B, Nt, Nr) → F (B, Na, Na) complex128 [obs, src]."""
        eta = self._check_target(eta)
        A = born_matrix(self.k, self.Na, self.Nr, self.R)
        return (eta.reshape(len(eta), -1) @ A.T).reshape(-1, self.Na, self.Na)

    def project(self, F: np.ndarray) -> np.ndarray:
        """The data in the SVD basis, c = U^H h per block: (B, M, r) complex. Depends on F only."""
        F = self._check_far_field(F, (self.Na, self.Na))
        na = self.Na
        s = np.arange(na)[:, None]
        G = F[:, (s + self.offsets[None, :]) % na, s]                          # G[b, s, q], (B, Na, Nq)
        Gh = np.fft.fft(G.astype(np.complex128), axis=1)                        # Ĝ[b, m, q]
        H = np.empty((len(F), len(self.modes), 2 * len(self.offsets)), dtype=np.complex128)
        for m in self.modes:
            if self.real_mode[m]:
                H[:, m] = np.concatenate([Gh[:, m].real, Gh[:, m].imag], axis=1)
            else:
                H[:, m] = np.concatenate([Gh[:, m], np.conj(Gh[:, (na - m) % na])], axis=1)
        return np.matmul(H.transpose(1, 0, 2), self.U.conj()).transpose(1, 0, 2)

    def _assemble(self, z: np.ndarray) -> np.ndarray:
        """η (B, Nt, Nr) from its Fourier modes η̂_m N^{1/2} over the angle, m = 0 … ⌊Na/2⌋ (B, M, Nr)."""
        na = self.Na
        eta_hat = np.zeros((len(z), na, self.Nr), dtype=np.complex128)
        eta_hat[:, self.modes] = z
        upper = self.modes[(self.modes > 0) & ~self.real_mode]
        eta_hat[:, na - upper] = np.conj(z[:, upper])
        for m in self.modes[self.real_mode]:                                    # real by construction
            eta_hat[:, m] = z[:, m].real
        return np.fft.ifft(eta_hat, axis=1).real * self.col_scale

    def _check_target(self, eta) -> np.ndarray:
        return self._check_images(eta, (self.Na, self.Nr), "polar image [angle, radius]")


class CartesianBornOperator:
    """The Born far field of η on a grid's Cartesian pixels, in our convention (sign −1):
        F[o, s] = γk²h² Σ_p e^{−ik(x̂_o − d_s)·y_p} η_p = γk²h² Σ_p conj(E_obs[o, p]) η_p E_inc[s, p],
    E_obs (n_obs, P) = e^{ik x̂_o·y_p}, E_inc (n_inc, P) = e^{ik d_s·y_p}, P = n² pixels row-major over image[i, j].
    """

    def __init__(self, grid: GridInfo):
        if not grid.cartesian:
            raise ValueError(f"CartesianBornOperator: the grid's target is {grid.target}, not cartesian")
        self.grid = grid
        self.n = grid.image_size
        y = grid.pixel_positions()
        self.weight = _gamma(grid.k) * grid.k ** 2 * grid.pixel_spacing() ** 2
        self.e_obs = np.exp(1j * grid.k * (_unit(grid.obs_angles()) @ y.T))
        self.e_inc = np.exp(1j * grid.k * (_unit(grid.inc_angles()) @ y.T))
        # samples per product, so that the (chunk, n_obs, P) intermediate stays near 128 MB
        self.chunk = max(1, (1 << 23) // (self.e_obs.size + 1))

    def forward(self, images: np.ndarray) -> np.ndarray:
        """Born far fields F (B, n_obs, n_inc) complex128 [obs, src] of images (B, n, n)."""
        eta = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
        out = np.empty((len(eta), *self.shape), dtype=np.complex128)
        left, right = np.conj(self.e_obs), self.e_inc.T
        for a in range(0, len(eta), self.chunk):
            out[a:a + self.chunk] = self.weight * np.matmul(left[None] * eta[a:a + self.chunk, None, :], right)
        return out

    def adjoint_real(self, F: np.ndarray) -> np.ndarray:
        """Re(Aᴴ F) (B, P) for far fields F (B, n_obs, n_inc): the right-hand side of the normal equations."""
        out = np.empty((len(F), self.n * self.n))
        for a in range(0, len(F), self.chunk):
            t = np.matmul(np.asarray(F[a:a + self.chunk], dtype=np.complex128), np.conj(self.e_inc))  # (b, n_obs, P)
            out[a:a + self.chunk] = (np.conj(self.weight) * np.einsum("op,bop->bp", self.e_obs, t)).real
        return out

    @property
    def shape(self) -> tuple[int, int]:
        return self.e_obs.shape[0], self.e_inc.shape[0]

    def normal_offsets(self) -> np.ndarray:
        """Re(AᴴA) by pixel-index offset: (2n − 1, 2n − 1) real, entry [a + n − 1, b + n − 1] = Re(AᴴA)[p, q] for
        pixels p = (i + a, j + b), q = (i, j)."""
        g = self.grid
        off = g.pixel_spacing() * np.arange(1 - self.n, self.n)
        zx, zy = (off[:, None], off[None, :]) if g.image_index == "xy" else (off[None, :], off[:, None])
        zx, zy = np.broadcast_arrays(zx, zy)

        def g_sum(angles):       # Σ_j e^{ik θ̂_j·z} on the offset table
            return np.exp(1j * g.k * (np.cos(angles)[:, None, None] * zx + np.sin(angles)[:, None, None] * zy)).sum(0)

        return abs(self.weight) ** 2 * (g_sum(g.obs_angles()) * np.conj(g_sum(g.inc_angles()))).real


def _parity_basis(n: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An orthonormal basis of Rⁿ, column c = Σ_t coef[c, t]·e_{index[c, t]}: (index (n, 2), coef (n, 2),
    parity (n,)). Symmetric: even (e_i + e_{n−1−i})/√2, e_m (odd n), odd (e_i − e_{n−1−i})/√2; else e_i."""
    if not symmetric:
        ar = np.arange(n)
        return np.stack([ar, ar], 1), np.stack([np.ones(n), np.zeros(n)], 1), np.zeros(n, dtype=int)
    half, r = n // 2, 1 / math.sqrt(2)
    i = np.arange(half)
    pairs = np.stack([i, n - 1 - i], 1)
    index = [pairs] + ([np.array([[half, half]])] if n % 2 else []) + [pairs]
    coef = [np.full((half, 2), r)] + ([np.array([[1.0, 0.0]])] if n % 2 else []) + [np.stack([np.full(half, r),
                                                                                             np.full(half, -r)], 1)]
    parity = np.r_[np.zeros(half + n % 2, dtype=int), np.ones(half, dtype=int)]
    return np.concatenate(index), np.concatenate(coef), parity


def _basis_matrix(index: np.ndarray, coef: np.ndarray) -> np.ndarray:
    basis = np.zeros((len(index), len(index)))
    for t in range(2):
        np.add.at(basis, (index[:, t], np.arange(len(index))), coef[:, t])
    return basis


class CartesianBornInversion(TikhonovInversion):
    """Tikhonov-regularised Born inversion F (B, n_obs, n_inc) → image (B, n, n) on a grid's Cartesian pixels.

    grid: a Cartesian `GridInfo` with a known farfield_sign (data with sign +1 are conjugated); norm: "area"
    (‖η‖² = h²Σ η², default) or "euclidean" (Σ η²), the same estimates on the relative λ grid. See the module
    docstring; `blocks` holds the parity blocks' sizes.
    """

    selection_metric = "rel_l2"
    rank_rtol = 1e-7            # σ from the normal matrix: its eigenvalues are exact to ~1e-16·σ_max²

    def __init__(self, grid: GridInfo, *, norm: str = "area"):
        if grid.farfield_sign not in (-1, 1):
            raise ValueError("CartesianBornInversion: the far field's sign convention is unknown; detect it "
                             "(detect_sign) or record it")
        if norm not in NORMS:
            raise ValueError(f"norm: expected one of {NORMS}, got {norm!r}")
        self.grid, self.norm = grid, norm
        self.op = CartesianBornOperator(grid)
        n = self.n = grid.image_size
        self.col_scale = 1 / grid.pixel_spacing() if norm == "area" else 1.0   # N^{−1/2}
        table = self.op.normal_offsets() * self.col_scale ** 2
        tol = 1e-12 * np.abs(table).max()
        axes = [_parity_basis(n, bool(np.abs(table - np.flip(table, axis)).max() <= tol)) for axis in (0, 1)]
        self.bases = [_basis_matrix(index, coef) for index, coef, _ in axes]
        self.selections = []
        spectra = []
        for p0 in np.unique(axes[0][2]):
            for p1 in np.unique(axes[1][2]):
                sel = [np.flatnonzero(axes[0][2] == p0), np.flatnonzero(axes[1][2] == p1)]
                block = self._normal_block(table, axes, sel)
                w, V = np.linalg.eigh(block)
                spectra.append((np.sqrt(np.clip(w, 0, None)), V))
                self.selections.append(sel)
        self.blocks = [len(v) for _, v in spectra]
        r = max(self.blocks)
        s = np.zeros((len(spectra), r))
        Vh = np.zeros((len(spectra), r, r))
        for m, (sm, V) in enumerate(spectra):
            s[m, :len(sm)], Vh[m, :len(sm), :len(sm)] = sm, V.T
        self._set_spectrum(s, Vh, np.ones(len(spectra)))

    @staticmethod
    def _normal_block(table, axes, sel) -> np.ndarray:
        """Bᵀ N^{−1/2} Re(AᴴA) N^{−1/2} B on the basis vectors of one parity block, (r, r), from the offset table:
        (u_a ⊗ v_b)ᵀ K (u_c ⊗ v_d) = Σ coef·coef·coef·coef · table[i_a − i_c, j_b − j_d] over the ≤ 16 terms."""
        n1 = (table.shape[0] + 1) // 2
        (i0, c0, _), (i1, c1, _) = axes
        s0, s1 = sel
        out = np.zeros((len(s0), len(s1), len(s0), len(s1)))
        for t1 in range(2):
            for t3 in range(2):
                w0 = c0[s0, t1][:, None] * c0[s0, t3][None, :]
                if not w0.any():
                    continue
                d0 = i0[s0, t1][:, None] - i0[s0, t3][None, :] + n1 - 1
                for t2 in range(2):
                    for t4 in range(2):
                        w1 = c1[s1, t2][:, None] * c1[s1, t4][None, :]
                        if not w1.any():
                            continue
                        d1 = i1[s1, t2][:, None] - i1[s1, t4][None, :] + n1 - 1
                        out += (w0[:, None, :, None] * w1[None, :, None, :]
                                * table[d0[:, None, :, None], d1[None, :, None, :]])
        size = len(s0) * len(s1)
        return out.reshape(size, size)

    def _kept(self, lam: float) -> np.ndarray:
        """Every σ > 0 when λ > 0: c·σ/(σ² + λ) = Vᵀg/(σ² + λ) stays accurate where σ itself is not; only the
        pseudo-inverse (λ = 0) drops σ below the accuracy of the normal matrix."""
        return self.s > (self.rank_rtol * self.s.max() if lam == 0 else 0)

    def ours(self, F: np.ndarray) -> np.ndarray:
        """F in our sign convention (conjugated when the grid records +1)."""
        return np.conj(F) if self.grid.farfield_sign == 1 else F

    def forward(self, images: np.ndarray) -> np.ndarray:
        """Born far fields (B, n_obs, n_inc) of images (B, n, n), in the grid's sign convention."""
        return self.ours(self.op.forward(self._check_target(images)))

    @property
    def data_shape(self) -> tuple[int, int]:
        return self.op.shape

    def reconstruction_matrix(self, lam: float | None = None, chunk: int = 256) -> np.ndarray:
        """As `TikhonovInversion.reconstruction_matrix`, factored through the normal equations:
            M = K_λ [Re A; Im A]ᵀ,   K_λ = N^{−1/2} (N^{−1/2} Re(AᴴA) N^{−1/2} + λ)^{−1} N^{−1/2}  (P × P),
        A = `cartesian_born_matrix` in the grid's convention (so Re(A_oursᴴ F_ours) = Re Aᵀ Re F + Im Aᵀ Im F for
        either sign); K_λ's columns are the estimates of the unit right-hand sides."""
        lam = self._lambda(lam)
        P = self.n * self.n
        K = np.concatenate([self.solve(self._project_rhs(np.eye(P)[a:a + chunk]), lam).reshape(-1, P)
                            for a in range(0, P, chunk)]).T
        A = cartesian_born_matrix(self.grid)                                     # (n_obs·n_inc, P)
        return K @ np.concatenate([A.real, A.imag]).T

    def project(self, F: np.ndarray) -> np.ndarray:
        """c = Uᴴb per parity block, (B, M, r): Vᵀ Bᵀ N^{−1/2} Re(AᴴF) / σ (0 where σ = 0)."""
        F = self.ours(self._check_far_field(F, self.op.shape))
        return self._project_rhs(self.op.adjoint_real(F))

    def _project_rhs(self, rhs: np.ndarray) -> np.ndarray:
        """`project` from the right-hand side Re(AᴴF) (B, P)."""
        g = (rhs * self.col_scale).reshape(-1, self.n, self.n)
        u = self.bases[0].T @ g @ self.bases[1]                                  # Bᵀ g per sample, (B, n, n)
        c = np.zeros((len(g), *self.s.shape))
        keep = self.s > 0
        for m, (s0, s1) in enumerate(self.selections):
            r = self.blocks[m]
            proj = u[:, s0][:, :, s1].reshape(len(g), r) @ self.Vh[m, :r, :r].T
            c[:, m, :r] = np.divide(proj, self.s[m, :r], out=np.zeros_like(proj), where=keep[m, :r])
        return c

    def _assemble(self, z: np.ndarray) -> np.ndarray:
        """image (B, n, n) from its coordinates in the parity basis (B, M, r)."""
        u = np.zeros((len(z), self.n, self.n))
        for m, (s0, s1) in enumerate(self.selections):
            u[np.ix_(np.arange(len(z)), s0, s1)] = z[:, m, :self.blocks[m]].real.reshape(len(z), len(s0), len(s1))
        return (self.bases[0] @ u @ self.bases[1].T) * self.col_scale

    def _check_target(self, images) -> np.ndarray:
        return self._check_images(images, (self.n, self.n), "image")


def born_fit(grid: GridInfo, F: np.ndarray, images: np.ndarray) -> dict[int, dict]:
    """How well each sign convention explains F (B, n_obs, n_inc) by the Born far field of the true images
    (B, n, n): {−1: {...}, +1: {...}} with, for F_s = F (−1) or conj F (+1) and P = Aη (ours),
        scale = Σ⟨P, F_s⟩ / Σ‖P‖²  (the complex c of F_s ≈ c·P by least squares over all samples),
        score = |Σ⟨P, F_s⟩| / √(Σ‖P‖² · Σ‖F_s‖²) ∈ [0, 1]."""
    P = CartesianBornOperator(grid).forward(images)
    F = np.asarray(F, dtype=np.complex128)
    p2, f2 = float(np.vdot(P, P).real), float(np.vdot(F, F).real)
    out = {}
    for sign, Fs in ((-1, F), (1, np.conj(F))):
        inner = np.vdot(P, Fs)
        out[sign] = {"scale": complex(inner / p2), "score": float(abs(inner) / math.sqrt(p2 * f2))}
    return out


def detect_sign(grid: GridInfo, F: np.ndarray, images: np.ndarray, ambiguous_ratio: float = 0.9
                ) -> tuple[int, dict[int, dict]]:
    """(sign, born_fit) with the convention whose Born score is higher; ValueError when the lower score is
    more than `ambiguous_ratio` of the higher (e.g. centrally symmetric images, which cannot tell)."""
    fits = born_fit(grid, F, images)
    sign = max(fits, key=lambda s: fits[s]["score"])
    if fits[-sign]["score"] > ambiguous_ratio * fits[sign]["score"]:
        raise ValueError(f"the far field's sign convention is ambiguous: Born scores {fits[-1]['score']:.3f} (−1) "
                         f"and {fits[1]['score']:.3f} (+1)")
    return sign, fits
