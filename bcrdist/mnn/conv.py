"""Convolution layers of the MNN library, channels-first `(B, C, *spatial)`.

All are cross-correlations with explicit padding done by the layer (as the original: Keras 'valid'
convolutions after `PeriodPadding`/`ZeroPadding`). Parameters are created in `__init__` with the Keras
defaults: glorot_uniform kernels (fan = kernel volume × channels) and zero biases. `weight` has the torch
layout (C_out, C_in, *kernel); `bias` is (C_out,) or None.

- CNNR{1,2,3}D — restriction: kernel = stride = w, no padding: (B, C, N) → (B, F, N/w).
- CNNK{1,2,3}D — band matrix times vector: odd kernel k, stride 1, k//2 periodic or zero padding on each
  side: (B, C, N) → (B, F, N).
- CNNI{1,2,3}D — interpolation: 1×…×1 kernel, (B, C, N) → (B, F, N), then, if `n_out` is given, the
  original's `Nout` reshape: a plain row-major reshape in 1D (→ (B, N·F/Nout, Nout)) and the block
  `reshape_m` with w = Nout/N per axis in 2D/3D (→ (B, F/Πw, *Nout)).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bcrdist.mnn.arguments import (check_bc_padding, check_positive, get_activation, glorot_uniform_,
                                 to_tuple)
from bcrdist.mnn.padding import pad
from bcrdist.mnn.reshape import reshape_m

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def nout_reshape(x: torch.Tensor, n_out: tuple[int, ...], layer: str) -> torch.Tensor:
    """The original's `Nout` reshape of an interpolation output x (B, F, *N).

    1D: plain channels-last row-major reshape (B, N, F) → (B, Nout, N·F/Nout), returned channels-first.
    2D/3D: block `reshape_m` with w = Nout/N per axis.
    """
    b, f, *n = x.shape
    if len(n) == 1:
        total = n[0] * f
        if total % n_out[0]:
            raise ValueError(f"{layer}: cannot reshape {n[0]}×{f} values to Nout={n_out[0]} positions")
        return x.transpose(1, 2).reshape(b, n_out[0], total // n_out[0]).transpose(1, 2)
    w = []
    for nk, ok in zip(n, n_out):
        if ok % nk:
            raise ValueError(f"{layer}: Nout={tuple(n_out)} is not a multiple of the input size {tuple(n)}")
        w.append(ok // nk)
    return reshape_m(x, tuple(w))


def check_nout(n_out, dim: int, layer: str) -> tuple[int, ...] | None:
    """Validate `n_out` (an int or a tuple of `dim` ints) at construction."""
    if n_out is None:
        return None
    n_out = to_tuple(n_out, dim, layer, "n_out")
    if min(n_out) < 1:
        raise ValueError(f"{layer}: n_out must be positive, got {n_out}")
    return n_out


class MNNLayer(nn.Module):
    """What every weighted MNN layer shares: argument checks, and the tail of `forward`
    (activation, then the optional `Nout` reshape). Subclasses create `weight`/`bias` and do the linear part.
    """

    dim = 0
    keras_name = ""

    def __init__(self, in_channels: int, filters: int, kernel_size, *, stride, pads, bc_padding: str,
                 activation, n_out=None):
        super().__init__()
        name = type(self).__name__
        self.in_channels = check_positive(in_channels, name, "in_channels")
        self.filters = check_positive(filters, name, "filters")
        self.kernel_size = kernel_size
        self.stride = stride
        self.pads = pads
        self.bc_padding = check_bc_padding(bc_padding, name)
        self.activation_name = activation
        self.activation = get_activation(activation, name)
        self.n_out = check_nout(n_out, self.dim, name)

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """Activation, then the `Nout` reshape."""
        if self.activation is not None:
            x = self.activation(x)
        if self.n_out is not None:
            x = nout_reshape(x, self.n_out, type(self).__name__)
        return x

    def extra_repr(self) -> str:
        text = (f"{self.in_channels}, {self.filters}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"bc_padding={self.bc_padding!r}, activation={self.activation_name!r}, "
                f"bias={self.bias is not None}")
        return text + (f", n_out={self.n_out}" if self.n_out is not None else "")


class MNNConv(MNNLayer):
    """pad → convolution (stride) → bias → activation → optional `Nout` reshape.

    Subclasses fix the dimension, stride and padding rule; see the module docstring.
    """

    def __init__(self, in_channels: int, filters: int, kernel_size, *, stride, pads, bc_padding: str,
                 activation, use_bias: bool, n_out=None):
        super().__init__(in_channels, filters, kernel_size, stride=stride, pads=pads, bc_padding=bc_padding,
                         activation=activation, n_out=n_out)
        volume = math.prod(kernel_size)
        self.weight = nn.Parameter(torch.empty(filters, in_channels, *kernel_size))
        glorot_uniform_(self.weight, volume * in_channels, volume * filters)
        self.bias = nn.Parameter(torch.zeros(filters)) if use_bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad(x, self.pads, self.bc_padding)
        return self.finish(_CONV[self.dim](x, self.weight, self.bias, stride=self.stride))


def odd_kernel(kernel_size, dim: int, layer: str) -> tuple[int, ...]:
    k = to_tuple(kernel_size, dim, layer, "kernel_size")
    if any(v < 1 or v % 2 == 0 for v in k):
        raise ValueError(f"{layer}: kernel_size must be odd on every axis, got {k}")
    return k


class CNNR(MNNConv):
    """Restriction (B, C, *N) → (B, F, *N/w): kernel = stride = w, no padding, linear by default."""

    def __init__(self, in_channels: int, filters: int, kernel_size, activation="linear", use_bias=True):
        k = to_tuple(kernel_size, self.dim, type(self).__name__, "kernel_size")
        if min(k) < 1:
            raise ValueError(f"{type(self).__name__}: kernel_size must be positive, got {k}")
        super().__init__(in_channels, filters, k, stride=k, pads=((0, 0),) * self.dim, bc_padding="zero",
                         activation=activation, use_bias=use_bias)


class CNNK(MNNConv):
    """Band matrix times vector (B, C, *N) → (B, F, *N): odd kernel k, k//2 padding each side."""

    def __init__(self, in_channels: int, filters: int, kernel_size, activation=None, bc_padding="period",
                 use_bias=True):
        k = odd_kernel(kernel_size, self.dim, type(self).__name__)
        super().__init__(in_channels, filters, k, stride=(1,) * self.dim, pads=tuple((v // 2, v // 2) for v in k),
                         bc_padding=bc_padding, activation=activation, use_bias=use_bias)


class CNNI(MNNConv):
    """Interpolation: 1-kernel convolution (B, C, *N) → (B, F, *N), then the `n_out` reshape if given."""

    def __init__(self, in_channels: int, filters: int, n_out=None, activation="linear", use_bias=True):
        super().__init__(in_channels, filters, (1,) * self.dim, stride=(1,) * self.dim,
                         pads=((0, 0),) * self.dim, bc_padding="zero", activation=activation,
                         use_bias=use_bias, n_out=n_out)


class CNNR1D(CNNR):
    dim, keras_name = 1, "cnnr1d"


class CNNR2D(CNNR):
    dim, keras_name = 2, "cnnr2d"


class CNNR3D(CNNR):
    dim, keras_name = 3, "cnnr3d"


class CNNK1D(CNNK):
    dim, keras_name = 1, "cnnk1d"


class CNNK2D(CNNK):
    dim, keras_name = 2, "cnnk2d"


class CNNK3D(CNNK):
    dim, keras_name = 3, "cnnk3d"


class CNNI1D(CNNI):
    dim, keras_name = 1, "cnni1d"


class CNNI2D(CNNI):
    dim, keras_name = 2, "cnni2d"


class CNNI3D(CNNI):
    dim, keras_name = 3, "cnni3d"
