"""The Mie series: the exact far field of a homogeneous disk, the analytic reference of the solver.

Conventions are the solver's (`bcrdist.physics.solver`, docs/physics.md): e^{−iωt}, Δu + k²(1 + η)u = 0,
u_∞(x̂; d) = γ k² ∫ e^{−ik x̂·y} η u dy, γ = e^{iπ/4}/√(8πk). For a disk of radius a and contrast η0 (complex
for an absorbing disk) centred at 0, with interior wavenumber k1 = k√(1 + η0) (principal root, Im k1 > 0 when
Im η0 > 0), u_s = Σ_n a_n H_n^(1)(kr) e^{in(θ−α)} outside the disk,
    a_n = i^n [k1 J_n'(k1a) J_n(ka) − k J_n(k1a) J_n'(ka)] / [k J_n(k1a) H_n'(ka) − k1 J_n'(k1a) H_n(ka)],
    u_∞(θ; α) = √(2/(πk)) e^{−iπ/4} Σ_n a_n (−i)^n e^{in(θ−α)},   |n| ≤ |k1|·a + 30;
a disk centred at c multiplies this by e^{ik(d − x̂)·c}.
"""

from __future__ import annotations

import numpy as np
from scipy.special import h1vp, hankel1, jv, jvp


def mie_far_field(k: float, a: float, eta0: complex, centre, theta, alpha) -> np.ndarray:
    """u_∞(x̂ = (cos θ_b, sin θ_b); d = (cos α_a, sin α_a)) of the disk |x − c| ≤ a with contrast η0.

    `centre` (2,), `theta` (n_rec,) receiver angles, `alpha` (n_inc,) incident angles; returns complex128
    (n_inc, n_rec), the layout of `ScatteringSolver.far_field`.
    """
    theta = np.asarray(theta, dtype=np.float64).reshape(-1)
    alpha = np.asarray(alpha, dtype=np.float64).reshape(-1)
    centre = np.asarray(centre, dtype=np.float64).reshape(2)
    k1 = k * np.sqrt(1 + complex(eta0))
    order = int(abs(k1) * a) + 30
    nn = np.arange(-order, order + 1)[:, None, None]
    an = 1j ** nn * (k1 * jvp(nn, k1 * a) * jv(nn, k * a) - k * jv(nn, k1 * a) * jvp(nn, k * a)) / (
        k * jv(nn, k1 * a) * h1vp(nn, k * a) - k1 * jvp(nn, k1 * a) * hankel1(nn, k * a))
    f = np.sqrt(2 / (np.pi * k)) * np.exp(-0.25j * np.pi) * np.sum(
        an * (-1j) ** nn * np.exp(1j * nn * (theta[None, None, :] - alpha[None, :, None])), axis=0)
    d = np.stack([np.cos(alpha), np.sin(alpha)], 1)
    xh = np.stack([np.cos(theta), np.sin(theta)], 1)
    return f * np.exp(1j * k * ((d @ centre)[:, None] - (xh @ centre)[None, :]))
