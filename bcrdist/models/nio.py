"""NIO, the neural inverse operator of Molinaro, Yang, Engquist, Mishra (ICML 2023), as Desai, Ma, Lähivaara,
Monk (arXiv 2503.01596) ran it: their code's `SNOHelmConv` with the configuration of its selected run
(5,199,845 parameters in branch, trunk and FNO, plus the DeepONet's scalar bias: 5,199,846).

With the far field F (B, n_obs, n_inc), the image grid (H, W) and its points p = (i/(H − 1), j/(W − 1)):

1. Branch, an InversionNet-style encoder of the whole far field as two channels (Re F, Im F): eight blocks
   [Conv2d 3×3 padding 1 → BatchNorm2d → LeakyReLU(0.2)] with (channels, stride) (64, 2), 4 × (128, 2), (256, 2),
   (256, 1), (512, 2) — 100 → 50 → 25 → 13 → 7 → 4 → 2 → 2 → 1 — flattened (512 values; the last map must be
   1×1, so a side of at most 128) and Linear(512 → n_basis): β (B, n_basis).
2. Trunk, an MLP on the H·W grid points: Linear(2 → width) → LeakyReLU(0.01), (trunk_layers − 1) × [Linear →
   LeakyReLU(0.01) → BatchNorm1d], Linear(width → n_basis): τ (H·W, n_basis); its Linear layers are
   Kaiming-uniform (a = 0.01, leaky ReLU), zero biases, as the authors' FeedForwardNN.
3. DeepONet: u(p) = (Σ_k β_k τ_k(p) + b0)/√n_basis, b0 a trainable scalar starting at 0: one function on the
   image grid.
4. FNO (the classic FNO2d) on (u, p_0, p_1): Linear(3 → fno_width), zero-padding of both image axes at their
   end by round(side/4), fno_layers × [spectral convolution on the Fourier modes [:m, :m] and [−m:, :m] of
   rfft2 + 1×1 convolution], GELU between layers, cropping, Linear(fno_width → 128) → GELU → Linear(128 → 1):
   η (B, H, W) in network units.

The spectral weights are complex parameters (torch.cfloat, initialised as the classic FNO: (1/width²)·U[0, 1)
in their real and imaginary parts); DDP and the NAdam/AdamW optimizers handle complex parameters. The FFTs run
in float32 even under autocast: cuFFT takes half precision only for power-of-2 sizes, and the padded 125 is not.

A deliberate difference: the authors' data loader stacks Re F and Im F on the last axis and views the result as
(2, 100, 100), which interleaves them (each "channel" holds alternating Re and Im values of 50 observation
directions); bcrdist feeds Re F and Im F as the two channels. The input and output normalisation (the study's
min–max to [−1, 1]) is the pipeline's, not the network's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bcrdist.config import check_ranges, setting
from bcrdist.errors import ConfigError
from bcrdist.models.registry import Network, NetworkIO

# (output channels, stride) of the branch's conv blocks
BRANCH_BLOCKS = ((64, 2), (128, 2), (128, 2), (128, 2), (128, 2), (256, 2), (256, 1), (512, 2))
BRANCH_SLOPE = 0.2
TRUNK_SLOPE = 0.01
FNO_PADDING_FRACTION = 0.25
FNO_PROJECTION = 128


@dataclass
class NIOConfig:
    trunk_layers: int = setting(8, low=1, help="layers of `width` neurons of the trunk MLP on the image grid's points")
    width: int = setting(256, low=1, help="neurons per hidden layer of the trunk")
    n_basis: int = setting(50, low=1, help="basis functions of the DeepONet (branch and trunk outputs)")
    fno_width: int = setting(64, low=1, help="channels of the FNO")
    fno_modes: int = setting(16, low=1, help="Fourier modes kept per axis by each spectral convolution")
    fno_layers: int = setting(1, low=1, help="Fourier layers of the FNO")

    def validate(self):
        check_ranges(self, "model.nio")


def branch_side(side: int) -> int:
    """A side of the far field after the branch's blocks (3×3, padding 1: stride s maps n to ⌊(n − 1)/s⌋ + 1)."""
    for _, stride in BRANCH_BLOCKS:
        side = (side - 1) // stride + 1
    return side


def padded_side(side: int) -> int:
    """An image side after the FNO's zero-padding."""
    return side + round(side * FNO_PADDING_FRACTION)


def check_sizes(n_input, n_output, modes: int) -> None:
    """ConfigError naming the key when the branch does not reduce the far field (n_obs, 2·n_inc) to 1×1 or the
    padded image (H, W) cannot hold `modes` Fourier modes."""
    n_obs, width = (int(v) for v in n_input)
    if width % 2:
        raise ConfigError(f"model.nio: the network input ({n_obs}, {width}) must hold Re F and Im F side by side "
                          f"(an even last axis): set data.use_imag true")
    n_inc = width // 2
    rows, cols = branch_side(n_obs), branch_side(n_inc)
    if (rows, cols) != (1, 1):
        strided = sum(stride == 2 for _, stride in BRANCH_BLOCKS)
        raise ConfigError(f"model.nio: the branch's {strided} stride-2 blocks take a {n_obs}×{n_inc} far field down "
                          f"to {rows}×{cols}, not 1×1; it takes at most {2 ** strided}×{2 ** strided} directions")
    h, w = (padded_side(int(v)) for v in n_output)
    most = min(h // 2, w // 2 + 1)
    if 2 * modes > h or modes > w // 2 + 1:
        hint = f"give at most {most}" if most else "give a larger image"
        raise ConfigError(f"model.nio.fno_modes: {modes} Fourier modes do not fit the {n_output[0]}×{n_output[1]} "
                          f"image padded to {h}×{w} (2·modes ≤ rows, modes ≤ columns/2 + 1); {hint}")


class Branch(nn.Module):
    """Far field (B, 2, n_obs, n_inc) → β (B, n_basis) (module docstring, step 1)."""

    def __init__(self, n_basis: int):
        super().__init__()
        blocks, c_in = [], 2
        for c_out, stride in BRANCH_BLOCKS:
            blocks += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.BatchNorm2d(c_out),
                       nn.LeakyReLU(BRANCH_SLOPE)]
            c_in = c_out
        self.encoder = nn.Sequential(*blocks, nn.Flatten())
        self.linear = nn.Linear(c_in, n_basis)

    def forward(self, channels: torch.Tensor) -> torch.Tensor:
        return self.linear(self.encoder(channels))


class Trunk(nn.Module):
    """Grid points (P, 2) → τ (P, n_basis) (module docstring, step 2)."""

    def __init__(self, layers: int, width: int, n_basis: int):
        super().__init__()
        hidden = [nn.Linear(2, width), nn.LeakyReLU(TRUNK_SLOPE)]
        for _ in range(layers - 1):
            hidden += [nn.Linear(width, width), nn.LeakyReLU(TRUNK_SLOPE), nn.BatchNorm1d(width)]
        self.mlp = nn.Sequential(*hidden, nn.Linear(width, n_basis))
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_uniform_(layer.weight, a=TRUNK_SLOPE, nonlinearity="leaky_relu")
                nn.init.zeros_(layer.bias)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.mlp(points)


class SpectralConv2d(nn.Module):
    """(B, C_in, H, W) → (B, C_out, H, W): multiply the rfft2 modes [:m, :m] and [−m:, :m] by complex weights
    (C_in, C_out, m, m), zero the others, transform back."""

    def __init__(self, c_in: int, c_out: int, modes: int):
        super().__init__()
        self.modes = modes
        scale = 1.0 / (c_in * c_out)
        self.weight_low = nn.Parameter(scale * torch.rand(c_in, c_out, modes, modes, dtype=torch.cfloat))
        self.weight_high = nn.Parameter(scale * torch.rand(c_in, c_out, modes, modes, dtype=torch.cfloat))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.modes
        b, _, h, w = x.shape
        with torch.autocast(x.device.type, enabled=False):
            x_ft = torch.fft.rfft2(x.float())
            out_ft = x_ft.new_zeros(b, self.weight_low.shape[1], h, w // 2 + 1)
            out_ft[:, :, :m, :m] = torch.einsum("bixy,ioxy->boxy", x_ft[:, :, :m, :m], self.weight_low)
            out_ft[:, :, -m:, :m] = torch.einsum("bixy,ioxy->boxy", x_ft[:, :, -m:, :m], self.weight_high)
            return torch.fft.irfft2(out_ft, s=(h, w))


class FNO2d(nn.Module):
    """(u, p_0, p_1) (B, H, W, 3) → η (B, H, W) (module docstring, step 4)."""

    def __init__(self, width: int, modes: int, layers: int):
        super().__init__()
        self.lift = nn.Linear(3, width)
        self.spectral = nn.ModuleList(SpectralConv2d(width, width, modes) for _ in range(layers))
        self.pointwise = nn.ModuleList(nn.Conv2d(width, width, 1) for _ in range(layers))
        self.project = nn.Sequential(nn.Linear(width, FNO_PROJECTION), nn.GELU(), nn.Linear(FNO_PROJECTION, 1))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        _, h, w, _ = inputs.shape
        x = self.lift(inputs).permute(0, 3, 1, 2)
        x = F.pad(x, (0, padded_side(w) - w, 0, padded_side(h) - h))
        for k, (spectral, pointwise) in enumerate(zip(self.spectral, self.pointwise)):
            x = spectral(x) + pointwise(x)
            if k < len(self.spectral) - 1:
                x = F.gelu(x)
        x = x[:, :, :h, :w].permute(0, 2, 3, 1)
        return self.project(x).squeeze(-1)


class NIO(Network):
    """NIO: normalised far field (B, n_obs, 2·n_inc) = [Re F | Im F] → η (B, H, W) in network units."""

    summary = "NIO (Molinaro et al.): a DeepONet from the far field to a function on the image grid, then an FNO"
    train_gflop = 2.319  # its trunk runs once per step, whatever the batch: counted at batch 32
    config_class = NIOConfig
    config_section = "nio"
    input_parts = "complex"
    targets = ("cartesian",)
    uses_units = False

    def __init__(self, n_input, n_output, trunk_layers: int = 8, width: int = 256, n_basis: int = 50,
                 fno_width: int = 64, fno_modes: int = 16, fno_layers: int = 1):
        super().__init__()
        self.n_input = tuple(int(v) for v in n_input)
        self.n_output = tuple(int(v) for v in n_output)
        self.trunk_layers, self.width, self.n_basis = int(trunk_layers), int(width), int(n_basis)
        self.fno_width, self.fno_modes, self.fno_layers = int(fno_width), int(fno_modes), int(fno_layers)
        check_sizes(self.n_input, self.n_output, self.fno_modes)
        h, w = self.n_output
        rows, cols = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
        # the grid is a function of the sizes, not a weight: rebuilt, never stored
        self.register_buffer("points", torch.stack([rows, cols], dim=-1), persistent=False)   # (H, W, 2)
        self.branch = Branch(self.n_basis)
        self.trunk = Trunk(self.trunk_layers, self.width, self.n_basis)
        self.b0 = nn.Parameter(torch.zeros(()))
        self.fno = FNO2d(self.fno_width, self.fno_modes, self.fno_layers)

    @classmethod
    def resolve(cls, section, io: NetworkIO) -> dict:
        """The section's fields (the selected run's when None) and the data's sizes; ConfigError naming the key
        for sizes the branch or the FNO cannot take."""
        section = section if section is not None else NIOConfig()
        kwargs = super().resolve(section, io)
        check_sizes(io.n_input, io.n_output, kwargs["fno_modes"])
        return kwargs

    def config(self) -> dict:
        return {"n_input": list(self.n_input), "n_output": list(self.n_output), "trunk_layers": self.trunk_layers,
                "width": self.width, "n_basis": self.n_basis, "fno_width": self.fno_width,
                "fno_modes": self.fno_modes, "fno_layers": self.fno_layers}

    def forward(self, x: torch.Tensor, return_aux: bool = False):
        """x (B, n_obs, 2·n_inc) normalised → (B, H, W) [twice with `return_aux`]."""
        if x.dim() != 3 or tuple(x.shape[1:]) != self.n_input:
            raise ValueError(f"NIO: expected input (B, {self.n_input[0]}, {self.n_input[1]}), got {tuple(x.shape)}")
        b, n_obs, width = x.shape
        h, w = self.n_output
        beta = self.branch(x.reshape(b, n_obs, 2, width // 2).transpose(1, 2))       # (B, n_basis)
        tau = self.trunk(self.points.reshape(h * w, 2))                 # (H·W, n_basis)
        u = ((beta @ tau.t() + self.b0) / math.sqrt(self.n_basis)).reshape(b, h, w)
        grid = self.points.to(u.dtype).expand(b, h, w, 2)
        out = self.fno(torch.cat([u.unsqueeze(-1), grid], dim=-1))
        return (out, out) if return_aux else out
