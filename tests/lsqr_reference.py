"""The study's Born reconstruction built independently of bcrdist, for the tests of the damped least squares
(`bcrdist.physics.born_lsqr`, `bcrdist baseline --method lsqr`, the Born torch layer): the dense complex Born
matrix from the study's formula, and scipy's lsqr on it."""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse.linalg


def study_matrix(k, extent, size, points, angles, n_obs, n_inc, sign, index="xy"):
    """A = h_s² e^{iπ/4} √(κ³/(8π)) e^{−iκ(x̂_o − d_s)·y_p} (complex conjugate for sign +1), h_s = extent/size:
    rows (o, s) row-major, columns the pixels row-major over image[i, j]."""
    if points == "nodes":
        x = np.linspace(-extent / 2, extent / 2, size)
    else:
        x = -extent / 2 + (np.arange(size) + 0.5) * extent / size
    a, b = np.meshgrid(x, x, indexing="ij")
    first, second = (a, b) if index == "xy" else (b, a)
    y = np.stack([first.ravel(), second.ravel()], axis=1)

    def directions(count):
        theta = (2 * np.pi * np.arange(count) / count if angles == "periodic"
                 else -np.pi + 2 * np.pi * np.arange(count) / (count - 1))
        return np.stack([np.cos(theta), np.sin(theta)], axis=1)

    diff = (directions(n_obs)[:, None, :] - directions(n_inc)[None, :, :]).reshape(-1, 2)
    A = (extent / size) ** 2 * np.exp(0.25j * np.pi) * math.sqrt(k ** 3 / (8 * np.pi)) * np.exp(-1j * k * diff @ y.T)
    return np.conj(A) if sign == 1 else A


def scipy_reference(A, F, damp, shape):
    """Re of scipy's lsqr(A, F[b].ravel(), damp) per sample, iterated to convergence."""
    out = []
    for f in F:
        x, istop, itn = scipy.sparse.linalg.lsqr(A, f.astype(np.complex128).ravel(), damp=damp, atol=1e-14, btol=1e-14,
                                                 iter_lim=50 * A.shape[1])[:3]
        assert istop in (1, 2) and itn < 50 * A.shape[1], (istop, itn)
        out.append(x.real.reshape(shape))
    return np.stack(out)
