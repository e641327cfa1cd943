"""The original's data layout: BCR-Net input `measure` from the full far field, and the polar target grid.

Angles are uniform, θ_j = 2πj/Na, for incident directions and receivers alike; the full far field is stored
as F[obs, src] (receiver index first). BCR-Net reads it by centre angle m and half-offset h, receiver = m + h,
source = m − h; on the uniform grid the even offsets are exact lattice points:
    measure[i, j] = F[(i + j) mod Na, (i − j) mod Na],   i = 0 … Na − 1,   j = 0 … Na/2 − 1 (h ∈ [0, π)).
Rotating the scatterer by 2π/Na shifts both indices of F by one, hence the rows of `measure` by one.
"""

from __future__ import annotations

import numpy as np


def measure_from_far_field(farfield: np.ndarray) -> np.ndarray:
    """`measure` (..., Na, Na/2) from the full far field F (..., Na, Na) indexed [obs, src]; same dtype."""
    na = farfield.shape[-1]
    if farfield.shape[-2] != na or na % 2:
        raise ValueError(f"measure_from_far_field: expected (..., Na, Na) with even Na, got {farfield.shape}")
    i = np.arange(na)[:, None]
    j = np.arange(na // 2)[None, :]
    return farfield[..., (i + j) % na, (i - j) % na]


def polar_grid(nt: int, nr: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Polar target grid: angles θ_j = 2πj/nt (nt,) and radii ρ_i = (i + ½)·radius/nr (nr,)."""
    return 2 * np.pi * np.arange(nt) / nt, (np.arange(nr) + 0.5) * (radius / nr)
