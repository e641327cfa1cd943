"""The Lippmann–Schwinger solver of `solver.py` on any torch device, batched over samples as well as directions.

`solver.py`'s `ScatteringSolver` (the `numpy` backend) already runs its FFTs and GMRES in torch on the CPU;
what it keeps in NumPy is the set-up (the truncated kernel, the plane waves, the far-field matrix) and the
per-sample handling of η. `TorchScatteringSolver` (the `torch` backend) takes those same set-up tensors once,
moves them to `device` in `precision`, and from then on works there: η's bounding block, the right-hand sides
and their angular-mode compression, one batched GMRES for the kept modes of *all* the samples given (one FFT
pair of the whole stack per iteration), the explicit residual of every sample and direction, and the far
fields. Only η comes in and only the far fields, iteration counts and residuals go out.

Several samples share one block size, the largest of their bounding blocks, each placed over its own sample
(an aperiodic convolution on a larger block gives the same values, so each sample's equations are unchanged),
and GMRES's re-orthogonalisation is decided for the batch as a whole: the arithmetic of a sample depends, at
rounding level, on its batch companions. Data stay
reproducible because a batch is a fixed run of sample indices (`solver.batch` consecutive samples of a shard),
whatever the number of ranks. With a batch of one sample, complex128 on the CPU, the torch backend does the
numpy backend's arithmetic in the same order.
"""

from __future__ import annotations

import numpy as np
import torch

from bcrdist.physics.solver import FFTBuffer, ScatteringSolver, _ContrastOperator, _norms, batched_gmres

PRECISIONS = {"complex128": torch.complex128, "complex64": torch.complex64}


class _BatchedContrast(_ContrastOperator):
    """K: v ↦ −k² η_s (Φ∗v) for contrast sources v (m, mx·my) whose rows belong to samples s = `sample[index]`,
    all on one mx×my block (`solver._ContrastOperator` for several samples: each row gets its own sample's η;
    `eta_blocks` (S, mx, my), real or complex)."""

    def __init__(self, spectrum: torch.Tensor, eta_blocks: torch.Tensor, k: float, sample: torch.Tensor,
                 buffer: FFTBuffer):
        self.spectrum = spectrum
        self.shape = eta_blocks.shape[1:]
        self.neg_eta_k2 = -(k * k) * eta_blocks  # (S, mx, my)
        self.sample = sample  # (R,) the sample of each GMRES row
        self.buffer = buffer

    def __call__(self, v: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        # one sample: its η broadcast, without gathering a copy per row
        eta = self.neg_eta_k2 if len(self.neg_eta_k2) == 1 else self.neg_eta_k2[self.sample[index]]
        return torch.mul(self.convolved(v), eta).view(v.shape[0], -1)


class TorchScatteringSolver:
    """Far fields of a batch of η on a fixed grid (n, box) at wavenumber k, for fixed incident and receiver
    angles, on `device` in `precision` (complex128 or complex64). Same arguments and stopping rule as
    `ScatteringSolver` (tol, restart, max_iterations, compress), whose set-up it reuses: the same kernel, plane
    waves and far-field matrix. One solver must not be used by two threads at once (it keeps work buffers)."""

    def __init__(self, n: int, k: float, incident_angles, receiver_angles, *, box: float = 1.0,
                 tol: float = 1e-10, restart: int = 40, max_iterations: int = 400, compress: bool = True,
                 device: torch.device | str = "cpu", precision: str = "complex128"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
        host = ScatteringSolver(n, k, incident_angles, receiver_angles, box=box, tol=tol, restart=restart,
                                max_iterations=max_iterations, compress=compress)
        self.n, self.k, self.box, self.kernel = host.n, host.k, host.box, host.kernel
        self.tol, self.restart, self.max_iterations, self.compress = host.tol, host.restart, host.max_iterations, \
            host.compress
        self.device, self.dtype = torch.device(device), PRECISIONS[precision]
        self.incident = host.incident.to(self.device, self.dtype)  # (n_inc, n·n)
        self.farfield_matrix = host.farfield_matrix.to(self.device, self.dtype)  # (n_rec, n·n)
        self.last_iterations = np.zeros(0, dtype=np.int64)
        self.last_residuals = np.zeros(0, dtype=np.float64)
        self._spectra: dict[tuple[int, int], torch.Tensor] = {}
        self._workspace: dict[str, torch.Tensor] = {}
        self._fft_buffer = FFTBuffer(device=self.device, dtype=self.dtype)

    def _etas(self, etas) -> torch.Tensor:
        """(S, n, n) η → the solver's precision on its device, real where η is real (a real factor costs half
        the arithmetic of a complex one in every operator product, and rounds as the numpy backend does)."""
        e = np.asarray(etas)
        if e.ndim != 3 or e.shape[1:] != (self.n, self.n):
            raise ValueError(f"etas must have shape (S, {self.n}, {self.n}), got {e.shape}")
        if not np.all(np.isfinite(e)):
            raise ValueError("eta contains NaN or infinite values")
        dtype = self.dtype if np.iscomplexobj(e) else self.incident.real.dtype
        return torch.from_numpy(np.ascontiguousarray(e)).to(self.device).to(dtype)

    def _blocks(self, e: torch.Tensor) -> list[tuple[slice, slice]] | None:
        """Each sample's block of cells (rows, columns), all of one size mx×my: the largest extent of the
        samples' bounding blocks of η ≠ 0, placed at each sample's own block (moved back inside the grid where it
        would cross the edge), so that a batch costs what its largest member does wherever its members lie.
        None when every η is 0."""
        support = e != 0
        rows, cols = support.any(dim=2).cpu().numpy(), support.any(dim=1).cpu().numpy()  # (S, n) each
        if not rows.any():
            return None
        bounds = [(np.flatnonzero(r)[[0, -1]], np.flatnonzero(c)[[0, -1]]) if r.any() else None
                  for r, c in zip(rows, cols)]
        mx = max(int(r[1] - r[0]) + 1 for r, _ in filter(None, bounds))
        my = max(int(c[1] - c[0]) + 1 for _, c in filter(None, bounds))
        starts = [(min(int(b[0][0]), self.n - mx), min(int(b[1][0]), self.n - my)) if b else (0, 0) for b in bounds]
        return [(slice(x, x + mx), slice(y, y + my)) for x, y in starts]

    def _on_blocks(self, fields: torch.Tensor, blocks: list[tuple[slice, slice]]) -> torch.Tensor:
        """(m, n·n) grid fields restricted to each sample's block: (S, m, mx·my)."""
        grid = fields.view(-1, self.n, self.n)
        return torch.stack([grid[:, bx, by].reshape(len(fields), -1) for bx, by in blocks])

    def _spectrum(self, mx: int, my: int) -> torch.Tensor:
        if (mx, my) not in self._spectra:
            self._spectra[(mx, my)] = self.kernel.spectrum(mx, my).to(self.device, self.dtype)
        return self._spectra[(mx, my)]

    def solve(self, etas) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Far fields of every η of `etas` (S, n, n): (far fields (S, n_inc, n_rec) complex128 — computed in the
        solver's precision —, GMRES iterations (S,) int64 (the most over a sample's solved right-hand sides),
        relative residuals (S, n_inc) float64 ‖η u_in − (I + K)w‖/‖η u_in‖ per direction, from one explicit
        operator product after the solve). Raises ConvergenceError when a right-hand side fails."""
        e = self._etas(etas)
        ns, n_inc, n_rec = e.shape[0], self.incident.shape[0], self.farfield_matrix.shape[0]
        blocks = self._blocks(e)
        if blocks is None:
            return (np.zeros((ns, n_inc, n_rec), np.complex128), np.zeros(ns, np.int64),
                    np.zeros((ns, n_inc), np.float64))
        eta_blocks = torch.stack([e[i, bx, by] for i, (bx, by) in enumerate(blocks)])  # (S, mx, my)
        mx, my = eta_blocks.shape[1:]
        inc = self._on_blocks(self.incident, blocks)  # (S, n_inc, N)
        rhs = eta_blocks.view(ns, 1, mx * my) * inc  # (S, n_inc, N)
        tol = torch.full((ns,), self.tol, dtype=rhs.real.dtype, device=self.device)
        keep = torch.ones((ns, n_inc), dtype=torch.bool, device=self.device)
        compressed = torch.zeros(ns, dtype=torch.bool, device=self.device)
        system = rhs
        if self.compress and n_inc > 1:
            # as in ScatteringSolver._solve, per sample: drop the smallest modes whose norms sum to ≤ tol/10 of
            # its smallest right-hand side; a sample that drops none solves its directions themselves
            modes = torch.fft.fft(rhs, dim=1)
            norms = _norms(modes.reshape(-1, mx * my)).view(ns, n_inc) / n_inc
            rhs_norm = _norms(rhs.reshape(-1, mx * my)).view(ns, n_inc).min(dim=1).values
            order = torch.argsort(norms, dim=1)
            n_drop = (torch.cumsum(torch.gather(norms, 1, order), 1) <= 0.1 * self.tol * rhs_norm[:, None]).sum(1)
            dropped = torch.arange(n_inc, device=self.device)[None, :] < n_drop[:, None]
            keep = torch.ones_like(keep).scatter_(1, order, ~dropped)
            compressed = n_drop > 0
            kept_norm = torch.where(keep, norms, 0).sum(1)
            tol = torch.where(compressed, 0.9 * self.tol * rhs_norm / kept_norm, tol)
            system = torch.where(compressed[:, None, None], modes, rhs)
        sample = torch.arange(ns, device=self.device)[:, None].expand(ns, n_inc)[keep]  # (R,)
        apply_k = _BatchedContrast(self._spectrum(mx, my), eta_blocks, self.k, sample, self._fft_buffer)
        b = system[keep]
        w, iterations, _ = batched_gmres(apply_k, b, tol=tol[sample], restart=self.restart,
                                         max_iterations=self.max_iterations, workspace=self._workspace,
                                         indexed=True)
        solution = torch.zeros_like(system)
        solution[keep] = w
        residual = system.clone()  # a dropped mode's residual is the mode itself
        residual[keep] -= w + apply_k(w, torch.arange(len(sample), device=self.device))
        # the directions' solutions and residuals are the inverse DFT of the modes'
        back = compressed[:, None, None]
        solution = torch.where(back, torch.fft.ifft(solution, dim=1), solution)
        residual = torch.where(back, torch.fft.ifft(residual, dim=1), residual)
        far = solution @ self._on_blocks(self.farfield_matrix, blocks).transpose(1, 2)  # (S, n_inc, n_rec)
        rhs_norms = _norms(rhs.reshape(-1, mx * my))
        relative = (_norms(residual.reshape(-1, mx * my)) / torch.where(rhs_norms == 0, 1.0, rhs_norms))
        most = torch.zeros(ns, dtype=torch.int64, device=self.device).scatter_reduce(0, sample, iterations, "amax")
        return (far.to(torch.complex128).cpu().numpy(), most.cpu().numpy(),
                relative.view(ns, n_inc).double().cpu().numpy())

    def far_field(self, eta) -> np.ndarray:
        """`ScatteringSolver.far_field` for one η (n, n): (n_inc, n_rec) complex128; records `last_iterations`
        (1,) and `last_residuals` (n_inc,)."""
        far, iterations, residuals = self.solve(np.asarray(eta)[None])
        self.last_iterations, self.last_residuals = iterations, residuals[0]
        return far[0]
