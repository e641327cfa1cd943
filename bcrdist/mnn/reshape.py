"""Block reshapes between a fine grid and a coarse grid with blocks stored in channels.

Channels-first versions of the original's `ReshapeM*`/`ReshapeT*` (backend `_reshapeM2D` etc.) with the
exact same index maps, written here in the original's channels-last notation x[position, channel]:

- 1D, block width w: plain row-major reshapes, exact inverses of each other.
  ReshapeT1D: (B, C, N) → (B, w·C, N/w), out[I, p·C + c] = x[I·w + p, c].
  ReshapeM1D: (B, C, N) → (B, C/w, N·w), out[i·w + p, c] = x[i, p·(C/w) + c].
- 2D/3D, blocks w = (wx, wy[, wz]), W = Π w:
  ReshapeM: out[i·wx+p, j·wy+q, c] = x[i, j, c·W + p·wy + q]       (channel index outermost)
  ReshapeT: out[I, J, (p·wy+q)·C + c] = x[I·wx+p, J·wy+q, c]        (channel index innermost)
  (3D likewise with (p·wy+q)·wz + r.) So in 2D/3D, T∘M and M∘T are the identity only when the M side has
  one channel; the original's docstrings call them inverses, which holds only then. These orders matter for
  Keras weights and for `alpha_out > 1`, so they are kept exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bcrdist.mnn.arguments import to_tuple


def reshape_m(x: torch.Tensor, w: tuple[int, ...]) -> torch.Tensor:
    """Coarse grid with blocks in channels → fine grid. x (B, C, n1, …, nd) → (B, C/Πw, w1·n1, …, wd·nd)."""
    d = len(w)
    b, c, *n = x.shape
    block = math.prod(w)
    if c % block:
        raise ValueError(f"reshape_m: {c} channels are not divisible by the block size {block} (w={w})")
    nc = c // block
    if d == 1:
        return x.reshape(b, w[0], nc, n[0]).permute(0, 2, 3, 1).reshape(b, nc, n[0] * w[0])
    y = x.reshape(b, nc, *w, *n)
    # (b, nc, w1..wd, n1..nd) → (b, nc, n1, w1, n2, w2, …)
    order = [0, 1] + [i for k in range(d) for i in (2 + d + k, 2 + k)]
    return y.permute(order).reshape(b, nc, *(nk * wk for nk, wk in zip(n, w)))


def reshape_t(x: torch.Tensor, w: tuple[int, ...]) -> torch.Tensor:
    """Fine grid → coarse grid with blocks in channels. x (B, C, N1, …, Nd) → (B, Πw·C, N1/w1, …, Nd/wd)."""
    d = len(w)
    b, c, *n = x.shape
    for nk, wk in zip(n, w):
        if nk % wk:
            raise ValueError(f"reshape_t: spatial size {tuple(n)} is not divisible by the block {w}")
    coarse = [nk // wk for nk, wk in zip(n, w)]
    if d == 1:
        return x.reshape(b, c, coarse[0], w[0]).permute(0, 3, 1, 2).reshape(b, w[0] * c, coarse[0])
    split = [s for k in range(d) for s in (coarse[k], w[k])]
    y = x.reshape(b, c, *split)
    # (b, c, N1, w1, N2, w2, …) → (b, w1, …, wd, c, N1, …, Nd)
    order = [0] + [3 + 2 * k for k in range(d)] + [1] + [2 + 2 * k for k in range(d)]
    return y.permute(order).reshape(b, math.prod(w) * c, *coarse)


class _Reshape(nn.Module):
    dim = 0

    def __init__(self, w):
        super().__init__()
        self.w = to_tuple(w, self.dim, type(self).__name__, "w")
        if min(self.w) < 1:
            raise ValueError(f"{type(self).__name__}: w must be positive, got {w!r}")

    def extra_repr(self) -> str:
        return f"w={self.w}"


class ReshapeM1D(_Reshape):
    """(B, C, N) → (B, C/w, N·w): plain reshape (see module docstring)."""
    dim = 1

    def forward(self, x):
        return reshape_m(x, self.w)


class ReshapeT1D(_Reshape):
    """(B, C, N) → (B, w·C, N/w): plain reshape, inverse of ReshapeM1D."""
    dim = 1

    def forward(self, x):
        return reshape_t(x, self.w)


class ReshapeM2D(_Reshape):
    """(B, C, nx, ny) → (B, C/(wx·wy), wx·nx, wy·ny), block permutation (channel index outermost)."""
    dim = 2

    def forward(self, x):
        return reshape_m(x, self.w)


class ReshapeT2D(_Reshape):
    """(B, C, Nx, Ny) → (B, wx·wy·C, Nx/wx, Ny/wy), block permutation (channel index innermost)."""
    dim = 2

    def forward(self, x):
        return reshape_t(x, self.w)


class ReshapeM3D(_Reshape):
    """(B, C, nx, ny, nz) → (B, C/(wx·wy·wz), wx·nx, wy·ny, wz·nz), block permutation."""
    dim = 3

    def forward(self, x):
        return reshape_m(x, self.w)


class ReshapeT3D(_Reshape):
    """(B, C, Nx, Ny, Nz) → (B, wx·wy·wz·C, Nx/wx, Ny/wy, Nz/wz), block permutation."""
    dim = 3

    def forward(self, x):
        return reshape_t(x, self.w)
