"""Periodic and zero padding of the spatial axes of channels-first tensors `(B, C, *spatial)`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bcrdist.mnn.arguments import to_pad_tuple


class _PeriodPadAxis(torch.autograd.Function):
    """Periodic padding of one axis: x (…, N, …) → (…, before + N + after, …), single wrap.

    Forward is one concatenation. Backward folds the gradient of the padded rows back onto the rows they
    copy, in place on a copy of the central part: 3 operators, where autograd's derivative of
    cat-of-slices takes 6 (a zero-filled full-size tensor and a copy per slice, then the sums) — the same
    sums, so the same values, in half the kernel launches on a GPU.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, axis: int, before: int, after: int) -> torch.Tensor:
        n = x.shape[axis]
        ctx.axis, ctx.before, ctx.after, ctx.n = axis, before, after, n
        parts = ([x.narrow(axis, n - before, before)] if before else []) + [x] + (
            [x.narrow(axis, 0, after)] if after else [])
        return torch.cat(parts, dim=axis)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        axis, before, after, n = ctx.axis, ctx.before, ctx.after, ctx.n
        grad_x = grad.narrow(axis, before, n).clone()
        if before:
            grad_x.narrow(axis, n - before, before).add_(grad.narrow(axis, 0, before))
        if after:
            grad_x.narrow(axis, 0, after).add_(grad.narrow(axis, before + n, after))
        return grad_x, None, None, None


def period_pad(x: torch.Tensor, pads: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """Periodic padding, as the original `_PeriodPadding{1,2,3}D`.

    x (B, C, N1, …, Nd), pads ((before, after),)*d → (B, C, N1+b1+a1, …). The left pad is the tail of
    the axis and the right pad its head; axes are padded in order, each on the already padded tensor, so
    corners wrap diagonally. A single wrap: needs N ≥ max(before, after) on every axis.
    """
    for axis, (before, after) in enumerate(pads, start=2):
        n = x.shape[axis]
        if before > n or after > n:
            raise ValueError(f"period_pad: pad ({before}, {after}) exceeds the axis length {n}")
        if before or after:
            x = _PeriodPadAxis.apply(x, axis, before, after)
    return x


def zero_pad(x: torch.Tensor, pads: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """Zero padding, x (B, C, N1, …, Nd) → (B, C, N1+b1+a1, …)."""
    flat: list[int] = []
    for before, after in reversed(pads):
        flat += [before, after]
    if not any(flat):
        return x
    return F.pad(x, flat)


def pad(x: torch.Tensor, pads: tuple[tuple[int, int], ...], bc_padding: str) -> torch.Tensor:
    """Pad with the boundary condition 'period' or 'zero'."""
    return period_pad(x, pads) if bc_padding == "period" else zero_pad(x, pads)


class _PeriodPadding(nn.Module):
    dim = 0

    def __init__(self, size):
        super().__init__()
        if self.dim == 1 and isinstance(size, (tuple, list)) and len(size) == 2 and all(
                isinstance(v, int) for v in size):
            size = (tuple(size),)  # 1D: (left, right), as the original's _PeriodPadding1D
        self.pads = to_pad_tuple(size, self.dim, type(self).__name__)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return period_pad(x, self.pads)

    def extra_repr(self) -> str:
        return f"pads={self.pads}"


class PeriodPadding1D(_PeriodPadding):
    """Periodic padding (B, C, N) → (B, C, N + l + r); size = s | (l, r) | ((l, r),)."""
    dim = 1


class PeriodPadding2D(_PeriodPadding):
    """Periodic padding (B, C, Nx, Ny) → (B, C, Nx + ·, Ny + ·); rows first, then columns (corners wrap)."""
    dim = 2


class PeriodPadding3D(_PeriodPadding):
    """Periodic padding (B, C, Nx, Ny, Nz) → padded; axes x, y, z in that order (corners wrap)."""
    dim = 3
