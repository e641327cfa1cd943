"""Analytic references of the forward problem for the tests: the Mie series of a homogeneous disk."""

from __future__ import annotations

import numpy as np
from scipy.special import h1vp, hankel1, jv, jvp


def mie_far_field(k, a, eta0, centre, theta, alpha):
    """u_∞ of a homogeneous disk (radius a, complex contrast eta0, centre c): the Mie series with the
    interior wavenumber k1 = k√(1 + η0) (principal root, Im k1 > 0 for Im η0 > 0)."""
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
