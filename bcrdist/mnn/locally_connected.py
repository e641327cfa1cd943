"""Locally connected MNN layers (untied weights per output position), channels-first, 1D and 2D.

As Keras LocallyConnected1D/2D (the original has no 3D variant): every output position has its own kernel.
`weight` is (*N_out, F, C, *k) and `bias` (F, *N_out), where N_out is the output grid; the input spatial
size must therefore be given at construction (`input_size`, the size *before* the layer's own padding).

- LCR{1,2}D: kernel = stride = w, no padding: (B, C, *N) → (B, F, *N/w).
- LCK{1,2}D: odd kernel, k//2 periodic/zero padding, stride 1: (B, C, *N) → (B, F, *N); the weights are
  sized for the padded input, as the original's `build`.
- LCI{1,2}D: 1-kernel, (B, C, *N) → (B, F, *N), then the `n_out` reshape (plain in 1D, block `reshape_m` in
  2D). The original's LCI1D required `Nout` as a tuple (an int raised TypeError); here an int works too.

Initialisation as Keras: glorot_uniform with the fans of its (P, Πk·C_in, C_out) kernel (P output positions),
fan_in = P·Πk·C_in and fan_out = P·C_out; zero biases.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bcrdist.mnn.arguments import glorot_uniform_, to_tuple
from bcrdist.mnn.conv import MNNLayer, odd_kernel
from bcrdist.mnn.padding import pad

_EINSUM = {1: "bclp,locp->bol", 2: "bchwpq,hwocpq->bohw"}


class LocallyConnected(MNNLayer):
    """pad → per-position linear map of each patch → bias → activation → optional `n_out` reshape."""

    def __init__(self, in_channels: int, filters: int, input_size, kernel_size, *, stride, pads,
                 bc_padding: str, activation, use_bias: bool, n_out=None):
        super().__init__(in_channels, filters, kernel_size, stride=stride, pads=pads, bc_padding=bc_padding,
                         activation=activation, n_out=n_out)
        name = type(self).__name__
        self.input_size = to_tuple(input_size, self.dim, name, "input_size")
        out = []
        for n, (before, after), k, s in zip(self.input_size, pads, kernel_size, stride):
            padded = n + before + after
            if padded < k or (padded - k) % s:
                raise ValueError(f"{name}: input_size {self.input_size} does not fit kernel_size {kernel_size} "
                                 f"with stride {stride}")
            out.append((padded - k) // s + 1)
        self.output_size = tuple(out)
        volume = math.prod(kernel_size)
        self.weight = nn.Parameter(torch.empty(*self.output_size, filters, in_channels, *kernel_size))
        # Keras computes the fans of the (P, Πk·C_in, C_out) kernel with the P positions as "receptive field"
        positions = math.prod(self.output_size)
        glorot_uniform_(self.weight, positions * volume * in_channels, positions * filters)
        self.bias = nn.Parameter(torch.zeros(filters, *self.output_size)) if use_bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != self.input_size:
            raise ValueError(f"{type(self).__name__}: expected spatial size {self.input_size}, "
                             f"got {tuple(x.shape[2:])}")
        x = pad(x, self.pads, self.bc_padding)
        for axis, (k, s) in enumerate(zip(self.kernel_size, self.stride), start=2):
            x = x.unfold(axis, k, s)
        x = torch.einsum(_EINSUM[self.dim], x, self.weight)
        if self.bias is not None:
            x = x + self.bias
        return self.finish(x)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", input_size={self.input_size}"


class LCR(LocallyConnected):
    """Restriction with untied weights (B, C, *N) → (B, F, *N/w)."""

    def __init__(self, in_channels: int, filters: int, input_size, kernel_size, activation="linear",
                 use_bias=True):
        name = type(self).__name__
        k = to_tuple(kernel_size, self.dim, name, "kernel_size")
        size = to_tuple(input_size, self.dim, name, "input_size")
        if any(n % v for n, v in zip(size, k)):
            raise ValueError(f"{name}: input_size {size} is not divisible by kernel_size {k}")
        super().__init__(in_channels, filters, size, k, stride=k, pads=((0, 0),) * self.dim,
                         bc_padding="zero", activation=activation, use_bias=use_bias)


class LCK(LocallyConnected):
    """Band matrix with untied weights (B, C, *N) → (B, F, *N): odd kernel, k//2 padding."""

    def __init__(self, in_channels: int, filters: int, input_size, kernel_size, activation=None,
                 bc_padding="period", use_bias=True):
        k = odd_kernel(kernel_size, self.dim, type(self).__name__)
        super().__init__(in_channels, filters, input_size, k, stride=(1,) * self.dim,
                         pads=tuple((v // 2, v // 2) for v in k), bc_padding=bc_padding,
                         activation=activation, use_bias=use_bias)


class LCI(LocallyConnected):
    """Interpolation with untied weights (B, C, *N) → (B, F, *N), then the `n_out` reshape if given."""

    def __init__(self, in_channels: int, filters: int, input_size, n_out=None, activation="linear",
                 use_bias=True):
        super().__init__(in_channels, filters, input_size, (1,) * self.dim, stride=(1,) * self.dim,
                         pads=((0, 0),) * self.dim, bc_padding="zero", activation=activation,
                         use_bias=use_bias, n_out=n_out)


class LCR1D(LCR):
    dim, keras_name = 1, "lcr1d"


class LCR2D(LCR):
    dim, keras_name = 2, "lcr2d"


class LCK1D(LCK):
    dim, keras_name = 1, "lck1d"


class LCK2D(LCK):
    dim, keras_name = 2, "lck2d"


class LCI1D(LCI):
    dim, keras_name = 1, "lci1d"


class LCI2D(LCI):
    dim, keras_name = 2, "lci2d"
