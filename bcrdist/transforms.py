"""The original script's data transforms (Fan's `scatteringInv.py`), as array functions, and the one
assembly of the network input from them (`network_input`, used by the data pipeline and by inference).

All functions accept NumPy arrays or torch tensors and act on the trailing axes, so they work on one
sample `(Ns, Nd)` or a batch `(N, Ns, Nd)`. The original's measurement noise is in `bcrdist.noise` (`fan`).
"""

from __future__ import annotations

import numpy as np
import torch


def antipodal(measure):
    """The original's input preprocessing: pair each centre angle with its antipode.

    `measure` (..., Ns, Nd) → (..., Ns, Nd). With tmp2[s] = measure[s + Ns/2 mod Ns], concatenate
    [measure, tmp2] along the detector axis and keep columns [Nd/2, 3Nd/2): columns j < Nd/2 hold
    measure[s, Nd/2 + j], columns j ≥ Nd/2 hold measure[s + Ns/2, j − Nd/2]. A bijection of the entries
    that commutes with cyclic shifts along the first (centre-angle) axis. Needs even Ns and Nd.
    """
    ns, nd = measure.shape[-2], measure.shape[-1]
    if ns % 2 or nd % 2:
        raise ValueError(f"antipodal: measure must have even (Ns, Nd), got ({ns}, {nd})")
    if isinstance(measure, torch.Tensor):
        rolled = torch.roll(measure, -ns // 2, dims=-2)
        both = torch.cat([measure, rolled], dim=-1)
    else:
        rolled = np.roll(measure, -ns // 2, axis=-2)
        both = np.concatenate([measure, rolled], axis=-1)
    return both[..., nd // 2: 3 * nd // 2]


def network_input(measure, measure_imag=None, *, apply_antipodal: bool = False):
    """The network input of the recipe: `measure` (..., Ns, Nd) [and `measure_imag`, same shape] →
    (..., Ns, Nd), or (..., Ns, 2·Nd) with `measure_imag` concatenated after `measure` along the detector
    axis; with `apply_antipodal` each part goes through `antipodal` first. NumPy arrays or torch tensors."""
    parts = [measure] if measure_imag is None else [measure, measure_imag]
    if apply_antipodal:
        parts = [antipodal(p) for p in parts]
    if len(parts) == 1:
        return parts[0]
    if isinstance(measure, torch.Tensor):
        return torch.cat(parts, dim=-1)
    return np.concatenate(parts, axis=-1)


def network_input_shape(measure_shape, use_imag: bool) -> tuple[int, int]:
    """(Ns, Nd) per-sample `measure` shape → the network input shape (Ns, Nd) or (Ns, 2·Nd)."""
    ns, nd = measure_shape
    return (int(ns), 2 * int(nd) if use_imag else int(nd))


def inverse_antipodal(x):
    """Inverse of `antipodal`: (..., Ns, Nd) → (..., Ns, Nd)."""
    ns, nd = x.shape[-2], x.shape[-1]
    h = nd // 2
    if isinstance(x, torch.Tensor):
        back = torch.roll(x[..., h:], ns // 2, dims=-2)
        return torch.cat([back, x[..., :h]], dim=-1)
    back = np.roll(x[..., h:], ns // 2, axis=-2)
    return np.concatenate([back, x[..., :h]], axis=-1)


def output_scale(y_min: float, y_max: float) -> float:
    """The original's output normalisation factor: targets are divided by half their range, no shift.

    Y_normalised = Y / output_scale(min Y, max Y); after it the range max − min is 2 (the original's
    `pixel_max`).
    """
    half_range = 0.5 * (float(y_max) - float(y_min))
    if not np.isfinite(half_range) or half_range <= 0:
        raise ValueError(f"output_scale: the target range must be positive and finite, got [{y_min}, {y_max}]")
    return half_range
