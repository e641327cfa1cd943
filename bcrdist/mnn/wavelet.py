"""Learned wavelet transforms (the original's `WaveLetC*`/`InvWaveLetC*`), channels-first.

- WaveLetC{1,2,3}D: even kernel k per axis, stride 2, k/2 − 1 periodic/zero padding on each side (none when
  every k ≤ 2): (B, C, *N) → (B, F, *N/2). In 1D out[i] uses x[2i − k/2 + 1 … 2i + k/2] (mod N).
- InvWaveLetC{1,2,3}D: odd kernel k, stride 1, k//2 padding: (B, C, *N) → (B, F, *N), then the `n_out`
  reshape (plain in 1D, block `reshape_m` in 2D/3D), e.g. 1D with F = 2α, n_out = 2N:
  out[2i + p, c] = conv[i, p·α + c].
Glorot-uniform kernels and zero biases; BCR-Net uses them without bias (`use_bias=False`).
"""

from __future__ import annotations

from bcrdist.mnn.arguments import to_tuple
from bcrdist.mnn.conv import MNNConv, odd_kernel


class WaveLetC(MNNConv):
    """Forward wavelet transform (B, C, *N) → (B, F, *N/2)."""

    def __init__(self, in_channels: int, filters: int, kernel_size, activation="linear", bc_padding="period",
                 use_bias=True):
        name = type(self).__name__
        k = to_tuple(kernel_size, self.dim, name, "kernel_size")
        if any(v < 2 or v % 2 for v in k):
            raise ValueError(f"{name}: kernel_size must be even on every axis, got {k}")
        pads = ((0, 0),) * self.dim if max(k) <= 2 else tuple((v // 2 - 1, v // 2 - 1) for v in k)
        super().__init__(in_channels, filters, k, stride=(2,) * self.dim, pads=pads, bc_padding=bc_padding,
                         activation=activation, use_bias=use_bias)


class InvWaveLetC(MNNConv):
    """Inverse wavelet transform (B, C, *N) → (B, F, *N), then the `n_out` reshape if given."""

    def __init__(self, in_channels: int, filters: int, kernel_size, n_out=None, activation="linear",
                 bc_padding="period", use_bias=True):
        k = odd_kernel(kernel_size, self.dim, type(self).__name__)
        super().__init__(in_channels, filters, k, stride=(1,) * self.dim, pads=tuple((v // 2, v // 2) for v in k),
                         bc_padding=bc_padding, activation=activation, use_bias=use_bias, n_out=n_out)


class WaveLetC1D(WaveLetC):
    dim, keras_name = 1, "wave_let_c1d"


class WaveLetC2D(WaveLetC):
    dim, keras_name = 2, "wave_let_c2d"


class WaveLetC3D(WaveLetC):
    dim, keras_name = 3, "wave_let_c3d"


class InvWaveLetC1D(InvWaveLetC):
    dim, keras_name = 1, "inv_wave_let_c1d"


class InvWaveLetC2D(InvWaveLetC):
    dim, keras_name = 2, "inv_wave_let_c2d"


class InvWaveLetC3D(InvWaveLetC):
    dim, keras_name = 3, "inv_wave_let_c3d"
