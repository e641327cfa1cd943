"""Forward solver for 2D acoustic scattering: the Lippmann–Schwinger equation with a truncated-kernel FFT.

Conventions (Colton–Kress, time dependence e^{−iωt}):
    Δu + k²(1 + η)u = 0,   u = e^{ik d·x} + u_s,   Φ(x) = (i/4) H0^(1)(k|x|),
    u = u_in + k² Φ∗(ηu),
    u_s(x) = e^{ik|x|}/√|x| · (u_∞(x̂) + O(1/|x|)),
    u_∞(x̂; d) = γ k² ∫ e^{−ik x̂·y} η(y) u(y; d) dy,   γ = e^{iπ/4}/√(8πk).

Grid: η is sampled at the cell centres of an n×n grid on [−box/2, box/2]², `eta[i, j] = η(x_i, y_j)` with
x_i = −box/2 + (i + ½)·box/n; every integral is the trapezoidal (cell-centre) rule with weight h² = (box/n)².

Method: the contrast source w = ηu solves w − k² η (Φ∗w) = η u_in. Φ∗w is applied with the truncated
kernel of Vico, Greengard & Ferrando (J. Comput. Phys. 2016): for w supported in the box, Φ∗w = Φ_L∗w with
Φ truncated at L = box diameter, whose Fourier transform is smooth (no singularity at |s| = k). Sampling it
on a 4× oversampled frequency grid and transforming back gives kernel samples for every cell offset that make
the discrete convolution spectrally accurate for smooth w; it is applied as an aperiodic convolution by a
zero-padded FFT of twice the size of η's bounding block of cells. The system is solved by GMRES run on all
incident directions at once (one batched FFT pair per iteration); the far field is one matrix product with
e^{−ik x̂·y}.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import scipy.fft as sfft
import scipy.special as sp
import torch

from bcrdist.errors import BcrdistError


class ConvergenceError(BcrdistError):
    """GMRES did not reach the requested residual within its iteration budget."""


def grid_coordinates(n: int, box: float) -> np.ndarray:
    """Cell-centre coordinates x_i = −box/2 + (i + ½)·box/n, shape (n,)."""
    return -0.5 * box + (np.arange(n) + 0.5) * (box / n)


def _truncated_kernel_hat(s: np.ndarray, k: float, L: float) -> np.ndarray:
    """Fourier transform of Φ·1{|x| ≤ L} at radial frequencies `s` (any shape), complex128.

    (1 + (iπ/2)·L·[s J1(Ls) H0(kL) − k J0(Ls) H1(kL)]) / (s² − k²); at s = k the numerator vanishes too and the
    limit (iπ/4)·L²·[J0(kL) H0(kL) + J1(kL) H1(kL)] is used (k is often an exact grid frequency).
    """
    h0, h1 = sp.hankel1(0, k * L), sp.hankel1(1, k * L)
    num = 1.0 + 0.5j * math.pi * L * (s * sp.j1(L * s) * h0 - k * sp.j0(L * s) * h1)
    near = np.abs(s - k) < 1e-9 * k
    denom = np.where(near, 1.0, s * s - k * k)
    limit = 0.25j * math.pi * L * L * (sp.j0(k * L) * h0 + sp.j1(k * L) * h1)
    return np.where(near, limit, num / denom)


class TruncatedKernel:
    """The discrete operator f ↦ Φ∗f on an n×n cell-centred grid of side `box`, wavenumber k.

    `spatial` (2n, 2n) complex128: the weight of a cell offset (p, q) (index p ≥ n stands for p − 2n), so
    that (Φ∗f)(x_i) ≈ Σ_j spatial[i − j]·f_j for f sampled at the cell centres.
    """

    def __init__(self, n: int, k: float, box: float = 1.0):
        if n < 2 or not k > 0 or not box > 0:
            raise ValueError(f"TruncatedKernel: need n ≥ 2, k > 0, box > 0; got n={n}, k={k}, box={box}")
        self.n, self.k, self.box = int(n), float(k), float(box)
        self.spatial = _spatial_kernel(self.n, self.k, self.box)
        self._spectra: dict[tuple[int, int], torch.Tensor] = {}

    def spectrum(self, mx: int, my: int) -> torch.Tensor:
        """Kernel for an mx×my block of cells: the FFT (Mx, My) of the offsets −m+1 … m−1 embedded in the
        smallest fast size M ≥ 2m − 1 per axis, so that a circular convolution of that size applied to f
        zero-padded from (mx, my) gives Φ∗f on the block (an m-cell block has offsets up to m − 1 only)."""
        key = (mx, my)
        if key not in self._spectra:
            size = (sfft.next_fast_len(2 * mx - 1), sfft.next_fast_len(2 * my - 1))
            ox, oy = np.r_[0:mx, 1 - mx:0], np.r_[0:my, 1 - my:0]
            padded = np.zeros(size, dtype=np.complex128)
            padded[np.ix_(ox % size[0], oy % size[1])] = self.spatial[np.ix_(ox % (2 * self.n),
                                                                             oy % (2 * self.n))]
            self._spectra[key] = torch.from_numpy(np.fft.fft2(padded))
        return self._spectra[key]

    def convolve(self, f) -> np.ndarray:
        """Φ∗f at the cells of an mx×my block (anywhere in the grid), for f supported in that block:
        f (..., mx, my) with mx, my ≤ n → complex128 (..., mx, my)."""
        f = np.asarray(f, dtype=np.complex128)
        if f.ndim < 2 or f.shape[-2] > self.n or f.shape[-1] > self.n:
            raise ValueError(f"convolve: expected (..., mx, my) with mx, my ≤ {self.n}, got {f.shape}")
        mx, my = f.shape[-2:]
        spec = self.spectrum(mx, my)
        out = torch.fft.ifft2(torch.fft.fft2(torch.from_numpy(f), s=spec.shape) * spec)
        return out[..., :mx, :my].numpy()


class _ContrastOperator:
    """K: v ↦ −k² η (Φ∗v) for contrast sources v (B, mx·my) on an mx×my block of cells (the system is
    (I + K)w = η u_in).

    K is 0 on the cells of the block where η = 0, and they receive no right-hand side, so the Krylov
    vectors stay 0 there; unknowns on the whole block make the scatter into the FFT buffer a strided copy (about
    10× cheaper than gathering the support cells). The zero-padded (B, Mx, My) input comes from the
    solver's `FFTBuffer`; only its leading block is written. torch's FFT (MKL) is about 2× faster here than
    scipy's at these batched sizes.
    """

    def __init__(self, spectrum: torch.Tensor, eta_block: np.ndarray, k: float, buffer: FFTBuffer):
        self.spectrum = spectrum
        self.shape = eta_block.shape
        self.neg_eta_k2 = torch.from_numpy(-(k * k) * eta_block)
        self.buffer = buffer

    def convolved(self, v: torch.Tensor) -> torch.Tensor:
        """Φ∗v on the block: v (B, mx·my) → (B, mx, my), a strided crop of the FFT buffer."""
        nb = v.shape[0]
        mx, my = self.shape
        buf = self.buffer.get(nb, self.spectrum.shape, (mx, my))
        buf[:, :mx, :my] = v.view(nb, mx, my)
        spec = torch.fft.fft2(buf)
        spec *= self.spectrum
        return torch.fft.ifft2(spec)[:, :mx, :my]

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        # the crop is strided: the product writes it contiguously in the same pass
        return torch.mul(self.convolved(v), self.neg_eta_k2).view(v.shape[0], -1)


class FFTBuffer:
    """The zero-padded FFT input (B, Mx, My) of the contrast operator (complex128 on the CPU unless `device` and
    `dtype` say otherwise), kept from sample to sample.

    `get(nb, (Mx, My), (mx, my))` returns nb rows that are zero outside their leading (mx, my) block, ready
    for that block to be written. Only what earlier samples wrote outside the new block is zeroed again: a
    fresh 10 MB buffer per sample cost more in page faults than the arithmetic of its FFTs. The buffer
    follows the most recent padded size (at a data tier every sample's block has the same size).
    """

    def __init__(self, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.complex128):
        self.device, self.dtype = torch.device(device), dtype
        self._buffer = torch.zeros((0, 0, 0), dtype=dtype, device=self.device)
        self._dirty = (0, 0, 0)  # rows, x and y extents outside which the buffer is zero

    def get(self, nb: int, size: tuple[int, int], block: tuple[int, int]) -> torch.Tensor:
        buf = self._buffer
        if tuple(buf.shape[1:]) != tuple(size) or buf.shape[0] < nb:
            buf = self._buffer = torch.zeros((nb, *size), dtype=self.dtype, device=self.device)
            self._dirty = (0, 0, 0)
        rows, wx, wy = self._dirty
        mx, my = block
        if wx > mx:
            buf[:rows, mx:wx, :wy] = 0
        if wy > my:
            buf[:rows, :mx, my:wy] = 0
        self._dirty = (max(rows, nb), mx, my)
        return buf[:nb]


def _norms(w: torch.Tensor) -> torch.Tensor:
    """Row norms of a complex (B, N) tensor: the real norm of its (B, N, 2) view (torch's complex
    vector_norm is ~10× slower, squaring and summing ~3×)."""
    return torch.linalg.vector_norm(torch.view_as_real(w), dim=(-2, -1))


def _workspace(workspace: dict | None, key: str, shape: tuple[int, ...], dtype: torch.dtype,
               device: torch.device) -> torch.Tensor:
    """An uninitialised tensor of `shape`, carved from a buffer kept in `workspace` (grown when too small).

    Solves need ~100 MB of Krylov basis: a fresh allocation that large is mapped anew by the C library each
    time, and on a VM the first touch of its pages costs more than the arithmetic that writes them.
    """
    numel = math.prod(shape)
    if workspace is None:
        return torch.empty(shape, dtype=dtype, device=device)
    buf = workspace.get(key)
    if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
        buf = workspace[key] = torch.empty(numel, dtype=dtype, device=device)
    return buf[:numel].view(shape)


@functools.lru_cache(maxsize=8)
def _spatial_kernel(n: int, k: float, box: float) -> np.ndarray:
    h = box / n
    s1 = 2 * np.pi * np.fft.fftfreq(4 * n, d=h)
    s = np.hypot(s1[:, None], s1[None, :])
    # Sampling the transform with spacing 2π/P periodises in space with period P = 4·box. Φ_L∗f for f in the
    # box reaches at most L + box/√2 from the box centre, so its periodic copies stay off the box while
    # P ≥ L + √2·box ≈ 2.83·box. ifft2 of the samples is then the kernel times h², and h² is also the
    # quadrature weight of the convolution, so the samples are used as they come.
    spatial_big = np.fft.ifft2(_truncated_kernel_hat(s, k, math.sqrt(2.0) * box))
    idx = np.r_[0:n, -n:0]
    spatial = np.ascontiguousarray(spatial_big[np.ix_(idx, idx)])
    spatial.setflags(write=False)
    return spatial


def _givens(a: torch.Tensor, b: torch.Tensor):
    """Complex Givens rotations, batched: (c real, s, r) with [c s; −s̄ c]·[a; b] = [r; 0]."""
    abs_a = a.abs()
    rho = torch.hypot(abs_a, b.abs())
    zero_a = abs_a == 0
    phase = torch.where(zero_a, torch.ones_like(a), a / torch.where(zero_a, 1.0, abs_a))
    safe_rho = torch.where(rho == 0, 1.0, rho)
    return abs_a / safe_rho, phase * b.conj() / safe_rho, phase * rho


def batched_gmres(apply_k, b: torch.Tensor, *, tol: float | torch.Tensor, restart: int, max_iterations: int,
                  workspace: dict | None = None, indexed: bool = False):
    """Solve (I + K) x_β = b_β for every row β of `b` with restarted GMRES, all rows advanced together.

    `apply_k` maps a (m, N) complex tensor to (m, N): K on a stack of vectors; `b` (B, N) complex128 or
    complex64, on any device (every tensor of the solve lives there). `indexed`: K differs from row to row
    (several samples in one batch), and is called as apply_k(v, index) with `index` (m,) int64 the rows of `b`
    that the rows of v belong to. `tol`: a float, or (B,) one per row.
    The Arnoldi process runs on K (the Krylov spaces of I + K and K are the same, and the Hessenberg matrix
    just gains 1 on its diagonal): for a second-kind operator with small K, I + K would return w ≈ v and
    the orthogonalisation would cancel most digits. A system stops when its relative residual
    ‖b − (I + K)x‖/‖b‖ ≤ tol (the Arnoldi estimate, exact to rounding while the basis stays orthogonal; an
    explicit product gives the residual at each restart) and then drops out of the batch. Orthogonalisation
    against all previous vectors is two batched matrix products (classical Gram–Schmidt, repeated where more
    than two digits cancel), not a Python loop over the basis.
    `workspace`: a dict the caller keeps between solves, to reuse the basis memory (see `_workspace`).
    Returns (x (B, N), iterations (B,) int64, relative residuals (B,) real). Raises ConvergenceError
    when a system is still above tol after `max_iterations` iterations.
    """
    nb, nn = b.shape
    cdt, rdt, dev = b.dtype, b.real.dtype, b.device

    def apply(v: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return apply_k(v, index) if indexed else apply_k(v)

    x = torch.zeros_like(b)
    bnorm = _norms(b)
    target = tol * bnorm
    iterations = torch.zeros(nb, dtype=torch.int64, device=dev)
    r = b.clone()
    rnorm = bnorm.clone()
    while True:
        pending = torch.nonzero(rnorm > target).flatten()
        if pending.numel() == 0:
            return x, iterations, rnorm / torch.where(bnorm == 0, 1.0, bnorm)
        spent = int(iterations[pending].max())
        if spent >= max_iterations:
            ratio = rnorm[pending] / bnorm[pending]
            worst = int(torch.argmax(ratio))
            row_tol = float(tol[pending[worst]]) if isinstance(tol, torch.Tensor) else tol
            raise ConvergenceError(
                f"GMRES did not converge for {pending.numel()} of {nb} right-hand sides in "
                f"{max_iterations} iterations (worst relative residual {float(ratio[worst]):.2e} > tol "
                f"{row_tol:.1e})")
        m = min(restart, max_iterations - spent)
        nbp = pending.numel()
        # Basis vectors are written before they are read; empty() avoids touching (m+1)·B·N entries.
        basis = _workspace(workspace, "basis", (nbp, m + 1, nn), cdt, dev)
        hess = torch.zeros((nbp, m + 1, m), dtype=cdt, device=dev)
        cs = torch.zeros((nbp, m), dtype=rdt, device=dev)
        sn = torch.zeros((nbp, m), dtype=cdt, device=dev)
        g = torch.zeros((nbp, m + 1), dtype=cdt, device=dev)
        g[:, 0] = rnorm[pending]
        basis[:, 0] = r[pending] / rnorm[pending, None]
        tgt = target[pending]
        steps = torch.full((nbp,), m, dtype=torch.int64, device=dev)
        estimate = torch.zeros(nbp, dtype=rdt, device=dev)
        live = torch.ones(nbp, dtype=torch.bool, device=dev)
        used = 0
        for j in range(m):
            used = j + 1
            rows = torch.nonzero(live).flatten()
            if rows.numel() == nbp:
                w = apply(basis[:, j], pending)
            else:
                w = torch.zeros((nbp, nn), dtype=cdt, device=dev)
                w[rows] = apply(basis[rows, j], pending[rows])
            norm_in = _norms(w)
            prev = basis[:, :j + 1]
            hcol = torch.zeros((nbp, j + 1), dtype=cdt, device=dev)
            for _ in range(2):
                proj = torch.matmul(w.conj().unsqueeze(1), prev.transpose(1, 2)).conj().squeeze(1)
                w -= torch.matmul(proj.unsqueeze(1), prev).squeeze(1)
                hcol += proj
                hnext = _norms(w)
                # A second pass only where more than two digits cancelled (a Daniel–Gragg–Kaufman–Stewart test;
                # Arnoldi on K keeps one pass as accurate as a dense LU solve, checked up to η = 1).
                if not bool((hnext < 0.01 * norm_in).any()):
                    break
            # An exact invariant subspace (or a frozen system, whose w is 0): nothing left to add.
            breakdown = hnext <= 1e-14 * norm_in
            # complex ÷ real on the (…, 2) real view: exactly rounded, and several times faster than complex ÷
            torch.div(torch.view_as_real(w), torch.where(breakdown, 1.0, hnext)[:, None, None],
                      out=torch.view_as_real(basis[:, j + 1]))
            if bool(breakdown.any()):
                basis[breakdown, j + 1] = 0
            col = torch.cat([hcol, hnext[:, None].to(cdt)], dim=1)
            col[:, j] += 1  # the identity part of I + K
            for i in range(j):
                top = cs[:, i] * col[:, i] + sn[:, i] * col[:, i + 1]
                col[:, i + 1] = -sn[:, i].conj() * col[:, i] + cs[:, i] * col[:, i + 1]
                col[:, i] = top
            cs[:, j], sn[:, j], col[:, j] = _givens(col[:, j], col[:, j + 1])
            col[:, j + 1] = 0
            hess[:, :j + 2, j] = col
            g[:, j + 1] = -sn[:, j].conj() * g[:, j]
            g[:, j] = cs[:, j] * g[:, j]
            iterations[pending[rows]] += 1
            done = live & ((g[:, j + 1].abs() <= tgt) | breakdown)
            steps[done] = j + 1
            # read now: a frozen system's later (zero) Givens rotations overwrite its g
            estimate[done] = g[done, j + 1].abs()
            live &= ~done
            if not bool(live.any()):
                break
        steps[live] = used
        # Back-substitution for each system over its own number of steps: the unused tail becomes an
        # identity block with zero right-hand side, so its coefficients come out 0.
        tail = torch.arange(used, device=dev)[None, :] >= steps[:, None]
        rmat = hess[:, :used, :used].clone()
        rmat.masked_fill_(tail[:, None, :], 0)
        diag = torch.arange(used, device=dev)
        rmat[:, diag, diag] = torch.where(tail, torch.ones((), dtype=cdt, device=dev), rmat[:, diag, diag])
        rhs = g[:, :used].masked_fill(tail, 0)
        y = torch.linalg.solve_triangular(rmat, rhs.unsqueeze(-1), upper=True).squeeze(-1)
        x[pending] += torch.matmul(y.unsqueeze(1), basis[:, :used]).squeeze(1)
        rnorm[pending[~live]] = estimate[~live]
        restart_rows = pending[live]
        if restart_rows.numel():
            r[restart_rows] = b[restart_rows] - x[restart_rows] - apply(x[restart_rows], restart_rows)
            rnorm[restart_rows] = _norms(r[restart_rows])


class ScatteringSolver:
    """Far fields of η on a fixed grid (n, box) at wavenumber k, for fixed incident and receiver angles.

    Precomputes the truncated kernel, the incident plane waves (n_inc, n·n) and the far-field matrix
    (n_rec, n·n) (both row-major over the n×n grid); `far_field(eta)` then costs one batched GMRES solve
    and one matrix product. Unknowns and FFTs cover only the bounding block of the cells where η ≠ 0.

    `compress`: solve for the discrete Fourier modes (over the incident index) of the right-hand sides
    η·u_in instead of the directions themselves, dropping the modes whose norms sum to ≤ tol/10 of a
    right-hand side's norm. For uniform angles the mode norms decay like |J_m(k·radius of η)|, so about
    2k·radius + 20 modes remain whatever n_inc (about 45 at the default tier, of 64 or of 160); the
    kept modes are solved to a tolerance that keeps every direction's residual ≤ tol, and the directions are
    recovered by an inverse DFT. Threads: torch's (torch.set_num_threads). A solver keeps its work buffers
    (Krylov basis, FFT input) from call to call, so one solver must not be used by two threads at once.
    """

    def __init__(self, n: int, k: float, incident_angles, receiver_angles, *, box: float = 1.0,
                 tol: float = 1e-10, restart: int = 40, max_iterations: int = 400, compress: bool = True):
        if not tol > 0 or restart < 1 or max_iterations < 1:
            raise ValueError(f"ScatteringSolver: need tol > 0, restart ≥ 1, max_iterations ≥ 1; got "
                             f"tol={tol}, restart={restart}, max_iterations={max_iterations}")
        self.kernel = TruncatedKernel(n, k, box)
        self.n, self.k, self.box = self.kernel.n, self.kernel.k, self.kernel.box
        self.tol, self.restart, self.max_iterations = float(tol), int(restart), int(max_iterations)
        self.compress = bool(compress)
        inc = np.asarray(incident_angles, dtype=np.float64).reshape(-1)
        rec = np.asarray(receiver_angles, dtype=np.float64).reshape(-1)
        x = grid_coordinates(self.n, self.box)
        xx, yy = np.meshgrid(x, x, indexing="ij")
        pts = np.stack([xx.ravel(), yy.ravel()])
        self.incident = torch.from_numpy(
            np.exp(1j * self.k * (np.stack([np.cos(inc), np.sin(inc)], 1) @ pts)))
        gamma = np.exp(0.25j * np.pi) / np.sqrt(8 * np.pi * self.k)
        weight = gamma * self.k ** 2 * (self.box / self.n) ** 2
        self.farfield_matrix = torch.from_numpy(
            weight * np.exp(-1j * self.k * (np.stack([np.cos(rec), np.sin(rec)], 1) @ pts)))
        self.last_iterations = np.zeros(0, dtype=np.int64)
        self.last_residuals = np.zeros(0, dtype=np.float64)
        self._workspace: dict[str, torch.Tensor] = {}  # GMRES basis memory, reused from sample to sample
        self._fft_buffer = FFTBuffer()

    def _eta(self, eta) -> np.ndarray:
        eta = np.asarray(eta)
        if eta.shape != (self.n, self.n):
            raise ValueError(f"eta must have shape ({self.n}, {self.n}), got {eta.shape}")
        if not np.all(np.isfinite(eta)):
            raise ValueError("eta contains NaN or infinite values")
        return eta.astype(np.complex128 if np.iscomplexobj(eta) else np.float64)

    def _solve(self, eta) -> tuple[torch.Tensor, tuple[slice, slice]]:
        """Contrast sources on the bounding block of η ≠ 0: ((n_inc, mx·my) complex128, (rows, cols))."""
        e = self._eta(eta)
        n_inc = self.incident.shape[0]
        self.last_iterations = np.zeros(0, dtype=np.int64)
        self.last_residuals = np.zeros(0, dtype=np.float64)
        nz_rows = np.flatnonzero(e.any(axis=1))
        if nz_rows.size == 0:
            return torch.zeros((n_inc, 0), dtype=torch.complex128), (slice(0, 0), slice(0, 0))
        nz_cols = np.flatnonzero(e.any(axis=0))
        block = (slice(nz_rows[0], nz_rows[-1] + 1), slice(nz_cols[0], nz_cols[-1] + 1))
        eta_block = np.ascontiguousarray(e[block])
        apply_k = _ContrastOperator(self.kernel.spectrum(*eta_block.shape), eta_block, self.k,
                                    self._fft_buffer)
        rhs = torch.from_numpy(eta_block.ravel()) * self._on_block(self.incident, block)
        if self.compress and n_inc > 1:
            modes = torch.fft.fft(rhs, dim=0)
            norms = _norms(modes) / n_inc  # of b̃_m, where b_a = Σ_m b̃_m e^{2πima/n_inc}
            rhs_norm = float(_norms(rhs).min())
            order = torch.argsort(norms)
            budget = 0.1 * self.tol * rhs_norm
            n_drop = int(torch.searchsorted(torch.cumsum(norms[order], 0), budget, right=True))
            if n_drop:
                keep = torch.ones(n_inc, dtype=torch.bool)
                keep[order[:n_drop]] = False
                # Direction a's residual ≤ (dropped norms) + Σ_m (mode m's residual)/n_inc ≤ 0.1·tol + 0.9·tol.
                tol = 0.9 * self.tol * rhs_norm / float(norms[keep].sum())
                w_modes, iterations, _ = batched_gmres(apply_k, modes[keep], tol=tol, restart=self.restart,
                                                       max_iterations=self.max_iterations,
                                                       workspace=self._workspace)
                self.last_iterations = iterations.numpy()
                full = torch.zeros_like(modes)
                full[keep] = w_modes
                # the directions' residuals are the inverse DFT of the modes' (a dropped mode's is b̃_m itself)
                mode_residuals = modes.clone()
                mode_residuals[keep] -= w_modes + apply_k(w_modes)
                self.last_residuals = self._relative(torch.fft.ifft(mode_residuals, dim=0), rhs)
                return torch.fft.ifft(full, dim=0), block
        w, iterations, _ = batched_gmres(apply_k, rhs, tol=self.tol, restart=self.restart,
                                         max_iterations=self.max_iterations, workspace=self._workspace)
        self.last_iterations = iterations.numpy()
        self.last_residuals = self._relative(rhs - w - apply_k(w), rhs)
        return w, block

    @staticmethod
    def _relative(residual: torch.Tensor, rhs: torch.Tensor) -> np.ndarray:
        """‖r_a‖/‖b_a‖ per incident direction a, (n_inc,) float64. The residuals come from one explicit
        operator product after the solve, so they are the residuals reached, not GMRES's estimates (and, when
        compressing, those of the directions rather than of the Fourier modes solved)."""
        norms = _norms(rhs)
        return (_norms(residual) / torch.where(norms == 0, 1.0, norms)).numpy()

    def _on_block(self, fields: torch.Tensor, block: tuple[slice, slice]) -> torch.Tensor:
        """(m, n·n) grid fields restricted to a block of cells: (m, mx·my)."""
        return fields.view(-1, self.n, self.n)[:, block[0], block[1]].reshape(fields.shape[0], -1)

    def contrast_source(self, eta) -> np.ndarray:
        """w = η·u for every incident direction: (n_inc, n, n) complex128.

        Solves w − k² η (Φ∗w) = η u_in (w vanishes where η = 0). Records the GMRES iteration count of each
        solved right-hand side (direction, or kept mode when compressing) in `last_iterations` and the relative
        residual ‖η u_in − (I + K)w‖/‖η u_in‖ reached by each incident direction in `last_residuals`; raises
        ConvergenceError if any solve fails.
        """
        w, block = self._solve(eta)
        full = torch.zeros((w.shape[0], self.n, self.n), dtype=torch.complex128)
        full[:, block[0], block[1]] = w.view(w.shape[0], block[0].stop - block[0].start, -1)
        return full.numpy()

    def far_field(self, eta) -> np.ndarray:
        """u_∞(x̂_rec; d_inc) as (n_inc, n_rec) complex128 (see `far_field`)."""
        w, block = self._solve(eta)
        return (w @ self._on_block(self.farfield_matrix, block).T).numpy()

    def born_far_field(self, eta) -> np.ndarray:
        """Born approximation γ k² ∫ e^{−ik x̂·y} η(y) e^{ik d·y} dy as (n_inc, n_rec) complex128."""
        e = torch.from_numpy(self._eta(eta).ravel())
        return ((e * self.incident) @ self.farfield_matrix.T).numpy()


def _square(eta) -> np.ndarray:
    eta = np.asarray(eta)
    if eta.ndim != 2 or eta.shape[0] != eta.shape[1]:
        raise ValueError(f"eta must be a square (n, n) array, got shape {eta.shape}")
    return eta


def far_field(eta, k: float, incident_angles, receiver_angles, *, box: float = 1.0,
              tol: float = 1e-10) -> np.ndarray:
    """Far-field pattern u_∞(x̂; d) of the contrast η at wavenumber k.

    eta: (n, n) real (or complex) array, eta[i, j] = η(x_i, y_j) at the cell centres of [−box/2, box/2]².
    Returns complex128 (n_inc, n_rec): entry [a, b] is u_∞(x̂ = (cos θ_b, sin θ_b); d = (cos α_a, sin α_a))
    for α = incident_angles, θ = receiver_angles, with
        u_∞(x̂; d) = e^{iπ/4}/√(8πk) · k² ∫ e^{−ik x̂·y} η(y) u(y; d) dy,
    u the total field of Δu + k²(1 + η)u = 0 with incident wave e^{ik d·x}. GMRES stops at relative residual
    `tol` for every direction (ConvergenceError otherwise).
    """
    eta = _square(eta)
    solver = ScatteringSolver(eta.shape[0], k, incident_angles, receiver_angles, box=box, tol=tol)
    return solver.far_field(eta)


def born_far_field(eta, k: float, incident_angles, receiver_angles, *, box: float = 1.0,
                   tol: float = 1e-10) -> np.ndarray:
    """Born approximation of `far_field` (u replaced by the incident wave), same arguments and layout:
        u_∞^B(x̂; d) = e^{iπ/4}/√(8πk) · k² ∫ e^{−ik x̂·y} η(y) e^{ik d·y} dy = γ k² η̂(k(x̂ − d)).
    `tol` is accepted for signature compatibility; there is nothing to solve.
    """
    eta = _square(eta)
    solver = ScatteringSolver(eta.shape[0], k, incident_angles, receiver_angles, box=box, tol=tol)
    return solver.born_far_field(eta)
