"""BCNN: the Born (Tikhonov) reconstruction as a fixed, differentiable first layer, then a trainable CNN
post-correction on the image grid (the "Born, then a network" hybrid of Desai, Ma, Lähivaara, Monk,
arXiv 2503.01596).

`BornLayer` is one dense real matrix M (n_pixels, 2·n_entries), a buffer (it travels in the state dict and
is never a parameter): M @ concat(Re F.ravel(), Im F.ravel()) is the Tikhonov estimate η_λ of
`bcrdist.physics.born` at the run's λ (`reconstruction_matrix`; chosen and set by
`bcrdist.train.born_layer`). It reads the network input as the pipeline hands it — Re F and Im F
concatenated along the detector axis, (B, n_obs, 2·n_inc), normalised per channel by the ScatteringModel —
undoes that normalisation so that M sees raw F, and returns the image in training units (divided by the
output scale). It runs in float32 even under autocast: a bf16 product would cost the estimate its third digit.

`PostCorrection` is a residual U-Net on (B, 1, H, W): `depth` poolings by 2, `channels`·2^level channels per
level, `convs` convolutions of `kernel`² (ReLU) per level and side, skip connections by concatenation, and a
1×1 output convolution initialised to zero, so that an untrained BCNN is exactly the Born estimate and
training starts from it. On a polar target (rows = angles) the convolutions pad the angle axis periodically;
sizes need not be powers of 2 (pooling rounds up, nearest-neighbour upsampling returns to the skip's size;
on sizes divisible by 2^depth the network commutes with rotations by multiples of 2^depth angles).

`BCNN` = born + post(born). It has one head: asked for the auxiliary head (BCR-Net's pre-training), it returns
its output twice, so the recipe's two-head loss is the one-head loss times (w_out + w_aux) and the auxiliary
errors equal the output's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BornLayer(nn.Module):
    """Normalised network input x (B, n_obs, 2·n_inc) → Born–Tikhonov image (B, H, W) in training units.

    `matrix` (H·W, 2·n_obs·n_inc) float32 and `lam` (the λ it was computed at, float64) are buffers, zero until
    `set_matrix`.
    """

    def __init__(self, n_input, n_output):
        super().__init__()
        self.n_input = tuple(int(v) for v in n_input)
        self.n_output = tuple(int(v) for v in n_output)
        if self.n_input[1] % 2:
            raise ValueError(f"BornLayer: the input {self.n_input} must hold Re F and Im F (an even last axis)")
        n_pixels = self.n_output[0] * self.n_output[1]
        self.register_buffer("matrix", torch.zeros(n_pixels, self.n_input[0] * self.n_input[1]))
        self.register_buffer("lam", torch.zeros((), dtype=torch.float64))

    def set_matrix(self, matrix, lam: float) -> None:
        """Set M (H·W, 2·n_obs·n_inc), columns [Re F.ravel(), Im F.ravel()] as `reconstruction_matrix`, at λ."""
        matrix = torch.as_tensor(matrix)
        if tuple(matrix.shape) != tuple(self.matrix.shape):
            raise ValueError(f"BornLayer: matrix of shape {tuple(matrix.shape)}, expected {tuple(self.matrix.shape)}")
        self.matrix.copy_(matrix.to(self.matrix.dtype))
        self.lam.fill_(float(lam))

    def forward(self, x: torch.Tensor, in_shift: torch.Tensor, in_scale: torch.Tensor,
                out_scale: torch.Tensor) -> torch.Tensor:
        """x (B, n_obs, 2·n_inc) normalised as (raw − in_shift)/in_scale (per channel, (2·n_inc,)) → η_λ / out_scale
        (B, H, W)."""
        with torch.autocast(x.device.type, enabled=False):
            raw = x.float() * in_scale.float() + in_shift.float()             # [Re F | Im F] per observation
            b, n_obs, width = raw.shape
            parts = raw.reshape(b, n_obs, 2, width // 2).transpose(1, 2).reshape(b, -1)   # [Re F.ravel(), Im F.ravel()]
            eta = parts @ self.matrix.t()
            return (eta / out_scale.float()).reshape(b, *self.n_output)


class PaddedConv(nn.Module):
    """A `kernel`² convolution keeping the size: rows padded periodically (`periodic_rows`, the angle axis of a
    polar image) or with zeros, columns with zeros."""

    def __init__(self, c_in: int, c_out: int, kernel: int, periodic_rows: bool):
        super().__init__()
        self.pad, self.periodic_rows = kernel // 2, periodic_rows
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=(0 if periodic_rows else self.pad, self.pad))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.periodic_rows and self.pad:
            x = F.pad(x, (0, 0, self.pad, self.pad), mode="circular")
        return self.conv(x)


def _block(c_in: int, c_out: int, convs: int, kernel: int, periodic_rows: bool) -> nn.Sequential:
    layers = []
    for i in range(convs):
        layers += [PaddedConv(c_in if i == 0 else c_out, c_out, kernel, periodic_rows), nn.ReLU()]
    return nn.Sequential(*layers)


class PostCorrection(nn.Module):
    """Residual U-Net (B, 1, H, W) → correction (B, 1, H, W); see the module docstring."""

    def __init__(self, channels: int = 32, depth: int = 3, convs: int = 2, kernel: int = 3,
                 periodic_rows: bool = False):
        super().__init__()
        widths = [channels * 2 ** level for level in range(depth + 1)]
        self.down = nn.ModuleList(_block(1 if level == 0 else widths[level - 1], widths[level], convs, kernel,
                                         periodic_rows) for level in range(depth))
        self.bottom = _block(widths[depth - 1] if depth else 1, widths[depth], convs, kernel, periodic_rows)
        self.up = nn.ModuleList(nn.Conv2d(widths[level + 1], widths[level], 1) for level in range(depth))
        self.merge = nn.ModuleList(_block(2 * widths[level], widths[level], convs, kernel, periodic_rows)
                                   for level in range(depth))
        self.out = nn.Conv2d(widths[0], 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2, ceil_mode=True)
        x = self.bottom(x)
        for level in reversed(range(len(self.down))):
            skip = skips[level]
            x = self.up[level](F.interpolate(x, size=skip.shape[-2:], mode="nearest"))
            x = self.merge[level](torch.cat([x, skip], dim=1))
        return self.out(x)


class BCNN(nn.Module):
    """BCNN: network input (B, n_obs, 2·n_inc) (normalised) → image (B, H, W) in training units, born +
    post(born). `n_input`/`n_output` as BCR-Net's; `periodic_rows` for a polar target."""

    def __init__(self, n_input, n_output, channels: int = 32, depth: int = 3, convs: int = 2, kernel: int = 3,
                 periodic_rows: bool = False):
        super().__init__()
        self.n_input = tuple(int(v) for v in n_input)
        self.n_output = tuple(int(v) for v in n_output)
        self.channels, self.depth, self.convs, self.kernel = int(channels), int(depth), int(convs), int(kernel)
        self.periodic_rows = bool(periodic_rows)
        self.born = BornLayer(self.n_input, self.n_output)
        self.post = PostCorrection(self.channels, self.depth, self.convs, self.kernel, self.periodic_rows)

    def forward(self, x: torch.Tensor, units, return_aux: bool = False):
        """x (B, n_obs, 2·n_inc) normalised; units = (in_shift, in_scale, out_scale) of the ScatteringModel →
        (B, H, W) [and the same tensor as the auxiliary head]."""
        if x.dim() != 3 or tuple(x.shape[1:]) != self.n_input:
            raise ValueError(f"BCNN: expected input (B, {self.n_input[0]}, {self.n_input[1]}), got {tuple(x.shape)}")
        born = self.born(x, *units).unsqueeze(1)                               # (B, 1, H, W)
        out = (born + self.post(born)).squeeze(1)
        return (out, out) if return_aux else out

    def config(self) -> dict:
        """The constructor arguments (plain values, as checkpoints store them)."""
        return {"n_input": list(self.n_input), "n_output": list(self.n_output), "channels": self.channels,
                "depth": self.depth, "convs": self.convs, "kernel": self.kernel, "periodic_rows": self.periodic_rows}
