"""Linear baseline: Tikhonov-regularised inversion of the Born operator, far field → η on the polar grid.

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

Noise: the measurement model of the BCR-Net evaluation, X(1 + σε) elementwise (σ = percent/100, ε ~ N(0, 1),
`bcrdist.transforms.multiplicative_noise`), applied to Re F and Im F separately with a generator
seeded by (NOISE_STREAM, seed, global sample index) (`noisy_far_field`).

Shapes: F (B, Na, Na) complex [obs, src]; η, coe (B, Nt, Nr) real [angle, radius]; arrays are NumPy.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from bcrdist.transforms import multiplicative_noise
from bcrdist.physics.layout import polar_grid
from bcrdist.metrics import psnr, relative_l2, weighted_relative_error

NOISE_STREAM = 0x424F524E  # "BORN": first word of the per-sample noise seeds
ENTRIES = ("farfield", "measure")
NORMS = ("area", "euclidean")
DEFAULT_LOG10_RANGE = (-12.0, 0.0)
DEFAULT_GRID_SIZE = 49


def born_matrix(k: float, Na: int, Nr: int, polar_radius: float) -> np.ndarray:
    """The dense Born operator A: complex128 (Na·Na, Na·Nr), rows (o, s) of F[o, s], columns (j, i) of coe.

    For reference and tests; `BornInversion` never forms it (5 GB at Na = 160, Nr = 80).
    """
    theta, rho = polar_grid(Na, Nr, polar_radius)
    unit = np.stack([np.cos(theta), np.sin(theta)], axis=1)                      # (Na, 2)
    y = (unit[:, None, :] * rho[None, :, None]).reshape(-1, 2)                   # (Na·Nr, 2), (j, i)
    w = np.tile(rho * (polar_radius / Nr) * (2 * np.pi / Na), Na)                # (Na·Nr,)
    diff = (unit[:, None, :] - unit[None, :, :]).reshape(-1, 2)                  # (Na·Na, 2), (o, s)
    gamma = np.exp(0.25j * np.pi) / math.sqrt(8 * math.pi * k)
    return gamma * k ** 2 * np.exp(-1j * k * (diff @ y.T)) * w


def noisy_far_field(F: np.ndarray, noise_percent: float, indices, seed: int = 0) -> np.ndarray:
    """F (B, Na, Na) complex with multiplicative noise X(1 + σε) on Re and Im parts separately.

    Sample b's draw is seeded by (NOISE_STREAM, seed, indices[b]) — reproducible and independent of batching.
    Returns F itself (not a copy) when noise_percent is 0.
    """
    if noise_percent < 0:
        raise ValueError(f"noise must be ≥ 0 (percent), got {noise_percent}")
    if not noise_percent:
        return F
    F = np.asarray(F)
    out = np.empty(F.shape, dtype=np.result_type(F.dtype, np.complex64))
    for b, gidx in enumerate(np.asarray(indices).reshape(-1).tolist()):
        rng = np.random.default_rng([NOISE_STREAM, int(seed), int(gidx)])
        re = multiplicative_noise(np.ascontiguousarray(F[b].real), noise_percent, rng)
        im = multiplicative_noise(np.ascontiguousarray(F[b].imag), noise_percent, rng)
        out[b] = re + 1j * im
    return out


def sample_errors(pred: np.ndarray, target: np.ndarray, out_scale: float = 1.0) -> dict[str, np.ndarray]:
    """Per-sample metrics of (B, Nt, Nr) predictions, as `bcrdist evaluate` computes them.

    weighted / rel_l2: scale-free relative errors; psnr in the training units of BCR-Net (both images divided
    by `out_scale`, pixel_max 2), so pass the model's output scale to compare PSNR with `bcrdist evaluate`.
    """
    p = torch.from_numpy(np.asarray(pred, dtype=np.float64) / out_scale)
    t = torch.from_numpy(np.asarray(target, dtype=np.float64) / out_scale)
    return {"weighted": weighted_relative_error(p, t).numpy(), "rel_l2": relative_l2(p, t).numpy(),
            "psnr": psnr(p, t).numpy()}


class BornInversion:
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
        self.lam: float | None = None
        self.val_curve: tuple[np.ndarray, np.ndarray] | None = None

        # a[t, q, i] = A[(o = q, s = 0), (t, i)]
        theta, rho = polar_grid(Na, Nr, polar_radius)
        unit = np.stack([np.cos(theta), np.sin(theta)], axis=1)
        diff = unit[self.offsets] - unit[0]                                     # x̂_q − d_0, (Nq, 2)
        proj = np.einsum("qc,tc->tq", diff, unit)                               # (x̂_q − d_0)·(cos θ_t, sin θ_t)
        gamma = np.exp(0.25j * np.pi) / math.sqrt(8 * math.pi * k)
        w = rho * (polar_radius / Nr) * (2 * np.pi / Na)
        a = gamma * k ** 2 * np.exp(-1j * k * proj[:, :, None] * rho) * w       # (Na, Nq, Nr)
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
        self.U, self.s, self.Vh = U, s, Vh                                      # (M, 2Nq, r), (M, r), (M, r, Nr)
        self.reg_factor = np.where(self.real_mode, 1.0, 2.0)                    # λ on real blocks, 2λ on pairs

    # --- the operator -----------------------------------------------------------------------------------

    @property
    def sigma_max(self) -> float:
        """Largest singular value of the real-stacked [Re A; Im A] N^{−1/2} (rows: the entries used)."""
        # pair blocks carry η̂_m twice in ‖η‖² = (1/Na)Σ‖η̂_m‖², hence the √2 relative to the real blocks
        scaled = self.s / np.sqrt(self.reg_factor)[:, None]
        return float(scaled.max())

    def lambda_grid(self, num: int = DEFAULT_GRID_SIZE, log10_range=DEFAULT_LOG10_RANGE) -> np.ndarray:
        """Log grid σ_max² · 10^t, t = linspace(*log10_range, num)."""
        return self.sigma_max ** 2 * np.logspace(log10_range[0], log10_range[1], num)

    def forward(self, eta: np.ndarray) -> np.ndarray:
        """Born far field of polar-grid η (B, Nt, Nr) → F (B, Na, Na) complex128 [obs, src]."""
        eta = self._check_eta(eta)
        A = born_matrix(self.k, self.Na, self.Nr, self.R)
        return (eta.reshape(len(eta), -1) @ A.T).reshape(-1, self.Na, self.Na)

    # --- solving ----------------------------------------------------------------------------------------

    def project(self, F: np.ndarray) -> np.ndarray:
        """The data in the SVD basis, c = U^H h per block: (B, M, r) complex. Depends on F only."""
        F = np.asarray(F)
        if F.ndim == 2:
            F = F[None]
        if F.shape[1:] != (self.Na, self.Na):
            raise ValueError(f"far field must be (B, {self.Na}, {self.Na}) [obs, src], got {F.shape}")
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

    def solve(self, c: np.ndarray, lam: float) -> np.ndarray:
        """η_λ (B, Nt, Nr) from projected data c (`project`)."""
        if not lam >= 0:
            raise ValueError(f"λ must be ≥ 0, got {lam}")
        s = self.s
        denom = s ** 2 + lam * self.reg_factor[:, None]
        keep = s > 1e-12 * s.max()                                              # λ = 0: pseudo-inverse
        filt = np.divide(s, denom, out=np.zeros_like(s), where=keep)            # (M, r)
        z = np.matmul((c * filt).transpose(1, 0, 2), self.Vh.conj()).transpose(1, 0, 2)  # η̂_m (B, M, Nr)
        na = self.Na
        eta_hat = np.zeros((len(c), na, self.Nr), dtype=np.complex128)
        eta_hat[:, self.modes] = z
        upper = self.modes[(self.modes > 0) & ~self.real_mode]
        eta_hat[:, na - upper] = np.conj(z[:, upper])
        for m in self.modes[self.real_mode]:                                    # real by construction
            eta_hat[:, m] = z[:, m].real
        return np.fft.ifft(eta_hat, axis=1).real * self.col_scale

    def fit_lambda(self, F_val: np.ndarray, coe_val: np.ndarray, lambdas=None) -> float:
        """Choose λ minimising the mean radius-weighted relative error on validation data.

        F_val (B, Na, Na) (noisy if the evaluation is), coe_val (B, Nt, Nr). lambdas: the candidates
        (default `lambda_grid()`). Stores λ in `self.lam` and (lambdas, mean errors) in `self.val_curve`.
        """
        coe_val = self._check_eta(coe_val)
        lambdas = self.lambda_grid() if lambdas is None else np.asarray(lambdas, dtype=np.float64).reshape(-1)
        if lambdas.size == 0 or not np.all(np.isfinite(lambdas)) or (lambdas < 0).any():
            raise ValueError("lambdas: need a non-empty list of finite values ≥ 0")
        c = self.project(F_val)
        errors = np.array([sample_errors(self.solve(c, lam), coe_val)["weighted"].mean() for lam in lambdas])
        if not np.isfinite(errors).any():
            raise ValueError("validation errors are not finite for any λ (all-zero targets?)")
        best = int(np.nanargmin(errors))
        self.lam = float(lambdas[best])
        self.val_curve = (lambdas, errors)
        return self.lam

    def predict(self, F: np.ndarray, lam: float | None = None) -> np.ndarray:
        """η (B, Nt, Nr) float64 for far fields F (B, Na, Na); λ from `fit_lambda` unless given."""
        lam = self.lam if lam is None else lam
        if lam is None:
            raise ValueError("no λ: call fit_lambda first or pass lam")
        return self.solve(self.project(F), lam)

    def _check_eta(self, eta) -> np.ndarray:
        eta = np.asarray(eta, dtype=np.float64)
        if eta.ndim == 2:
            eta = eta[None]
        if eta.shape[1:] != (self.Na, self.Nr):
            raise ValueError(f"polar image must be (B, {self.Na}, {self.Nr}) [angle, radius], got {eta.shape}")
        return eta
