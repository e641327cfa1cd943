"""BCR-Net for 2D inverse scattering (Fan & Ying; the original `scatteringInv.py` recipe), channels-first.

Input `measure` (B, Ns, Nd): Ns centre angles, Nd detector offsets used as channels.
Output η on the polar grid (B, Nt, Nr), Nt = Ns angles, Nr radii. With α = alpha, L = levels,
m = Ns // 2^L made odd (m ← 2⌊(m+1)/2⌋ − 1):

1. CNNK1D(Nd → α, w_comp, linear) → (B, α, Ns).
2. Wavelets ℓ = 1 … L: bt_ℓ = WaveLetC1D(α → 2α, 6, no bias)(b_{ℓ−1}) → (B, 2α, Ns/2^ℓ);
   b_ℓ = channels [α, 2α) (scaling), channels [0, α) are the wavelet coefficients.
3. Coarsest level: d = n_cnn × CNNK1D(α, m, relu)(b_L).
4. ℓ = L … 1: d1 = n_cnn × CNNK1D(2α, 5, relu)(bt_ℓ); "triangle add" d = [d1[:α], d1[α:] + d];
   d = InvWaveLetC1D(2α, 3, n_out = Ns/2^(ℓ−1), no bias)(d) → (B, α, Ns/2^(ℓ−1)).
5. Auxiliary head Img = CNNK1D(α → Nr, w_comp, linear)(d) → (B, Nt, Nr).
6. Refinement on Img as one 2D channel: (n_cnn3 − 1) × [pad 1 in angle (periodic or zero), zero pad 1 on
   both sides in radius, Conv2d(4, 3×3, relu)], then the same pads and Conv2d(1, 3×3, linear). Computed with
   the same values but a cheaper schedule (`BCRNet.refine_2d`), activations and kernels channels-last.
7. Output = Img + refinement.

`bc_padding` (the original layers' argument) is the boundary condition along the angle axis of every
CNNK1D, wavelet and refinement layer: 'period' (the original's, for a periodic angle grid) or 'zero' (for an
open grid such as the port's −π + 2πj/(N−1)). Glorot-uniform kernels and zero biases, as Keras.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bcrdist.errors import ConfigError
from bcrdist.mnn.arguments import check_bc_padding, check_positive, glorot_uniform_
from bcrdist.mnn.conv import CNNK1D
from bcrdist.mnn.wavelet import InvWaveLetC1D, WaveLetC1D
from bcrdist.models.registry import Network, NetworkIO

WAVELET_SUPPORT = 6
BAND_WIDTH = 5
REFINE_CHANNELS = 4


def default_levels(ns: int) -> int:
    """The original's number of levels: ⌊log2 Ns⌋ − 2."""
    return int(math.floor(math.log2(ns))) - 2


def resolve_levels(ns: int, levels: int | None, padded: bool) -> int:
    """Wavelet levels for an angle axis of Ns: `levels` when Ns is divisible by 2^levels; null = ⌊log2 Ns⌋ − 2
    (the original's), lowered until 2^L divides Ns (100 → 2, as the port). ConfigError naming `model.levels`
    (or `model.pad_to`) for a size BCR-Net cannot take."""
    where = "model.pad_to" if padded else "model.levels"
    if levels is not None:
        if ns % 2 ** levels:
            raise ConfigError(f"{where}: Ns={ns} is not divisible by 2^levels = {2 ** levels}; lower model.levels "
                              f"or set model.pad_to to a multiple of {2 ** levels}")
        return levels
    level = default_levels(ns)
    while level >= 1 and ns % 2 ** level:
        level -= 1
    if level < 1:
        raise ConfigError(f"{where}: Ns={ns} is odd, BCR-Net needs an angle axis divisible by 2 at least; set "
                          f"model.pad_to to an even size (e.g. [{-(-ns // 4) * 4}, W])")
    return level


def channels_last_kernel(weight: torch.Tensor) -> torch.Tensor:
    """A (C_out, C_in, kh, kw) kernel with channels-last strides (C_in fastest), differentiable.

    For C_in = 1 both layouts are the same memory, and `weight.contiguous(memory_format=torch.channels_last)`
    keeps the default strides, with which oneDNN picks its plain-layout kernel: a view with the channels-last
    strides instead (whose gradient keeps the parameter's strides, as DDP's gradient buckets expect).
    Otherwise a copy in channels-last order.
    """
    if weight.shape[1] == 1:
        return weight.squeeze(1).unsqueeze(-1).permute(0, 3, 1, 2)
    return weight.permute(0, 2, 3, 1).clone(memory_format=torch.contiguous_format).permute(0, 3, 1, 2)


class RefineConv2d(nn.Conv2d):
    """3×3 convolution of the 2D refinement with the Keras Conv2D defaults (glorot_uniform, zero bias)."""

    keras_name = "conv2d"

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 3)
        glorot_uniform_(self.weight, 9 * in_channels, 9 * out_channels)
        nn.init.zeros_(self.bias)


class BCRNet(Network):
    """BCR-Net: (B, Ns, Nd) → (B, Nt, Nr); see the module docstring for the architecture.

    As a registered network (`model.type: bcrnet`) its keys are those of the `model` section itself
    (`model.alpha`, `model.n_cnn`, …, `model.pad_to`, `model.bc_padding`)."""

    summary = "BCR-Net (Fan & Ying): wavelet-domain band-matrix layers on the angle axis, then a 2D refinement"
    config_section = ""

    def __init__(self, n_input=(160, 80), n_output=(160, 80), alpha: int = 40, n_cnn: int = 6, n_cnn3: int = 5,
                 w_comp: int = 1, levels: int | None = None, bc_padding: str = "period"):
        super().__init__()
        ns, nd = n_input
        nt, nr = n_output
        for arg, v in (("Ns", ns), ("Nd", nd), ("Nt", nt), ("Nr", nr)):
            check_positive(v, "BCRNet", arg)
        check_positive(alpha, "BCRNet", "alpha")
        check_positive(n_cnn, "BCRNet", "n_cnn")
        if not isinstance(n_cnn3, int) or n_cnn3 < 1:
            raise ValueError(f"BCRNet: n_cnn3 must be a positive int, got {n_cnn3!r}")
        if ns != nt:
            raise ValueError(f"BCRNet: the angle axes must agree, got Ns={ns} and Nt={nt}")
        L = default_levels(ns) if levels is None else levels
        if not isinstance(L, int) or L < 1:
            raise ValueError(f"BCRNet: needs at least 1 level, got levels={L} for Ns={ns}")
        if ns % 2 ** L:
            raise ValueError(f"BCRNet: Ns={ns} is not divisible by 2^levels = {2 ** L}")
        m = ns // 2 ** L
        m = 2 * ((m + 1) // 2) - 1
        if m < 1:
            raise ValueError(f"BCRNet: coarse size Ns/2^levels = {ns // 2 ** L} is too small")
        bc = check_bc_padding(bc_padding, "BCRNet")
        self.n_input, self.n_output = (ns, nd), (nt, nr)
        self.bc_padding = bc
        self.alpha, self.n_cnn, self.n_cnn3, self.w_comp, self.levels, self.m = alpha, n_cnn, n_cnn3, w_comp, L, m
        a = alpha
        self.compress = CNNK1D(nd, a, w_comp, bc_padding=bc)
        self.wavelets = nn.ModuleList(WaveLetC1D(a, 2 * a, WAVELET_SUPPORT, bc_padding=bc, use_bias=False)
                                      for _ in range(L))
        self.coarse = nn.Sequential(*[CNNK1D(a, a, m, activation="relu", bc_padding=bc) for _ in range(n_cnn)])
        # level_chains[i] and inv_wavelets[i] act at level ℓ = L − i (applied from coarse to fine)
        self.level_chains = nn.ModuleList(
            nn.Sequential(*[CNNK1D(2 * a, 2 * a, BAND_WIDTH, activation="relu", bc_padding=bc)
                            for _ in range(n_cnn)])
            for _ in range(L))
        self.inv_wavelets = nn.ModuleList(
            InvWaveLetC1D(2 * a, 2 * a, 3, n_out=ns // 2 ** (level - 1), bc_padding=bc, use_bias=False)
            for level in range(L, 0, -1))
        self.head = CNNK1D(a, nr, w_comp, bc_padding=bc)
        chans = [1] + [REFINE_CHANNELS] * (n_cnn3 - 1) + [1]
        self.refine = nn.ModuleList(RefineConv2d(chans[i], chans[i + 1]) for i in range(n_cnn3))

    @classmethod
    def resolve(cls, section, io: NetworkIO) -> dict:
        """Constructor arguments from a training config's `model` section (alpha, n_cnn, n_cnn3, w_comp, levels,
        pad_to, bc_padding) for the data `io`: the network's sizes are the data's, or `model.pad_to` (the
        model pads the input and crops the output); the levels are resolved for the angle axis
        (`resolve_levels`), `bc_padding: auto` from the grid (period on periodic angles, zero otherwise)."""
        n_input, n_output = tuple(io.n_input), tuple(io.n_output)
        if n_input[0] != n_output[0]:
            raise ConfigError(f"model.type: BCR-Net maps the input's angle axis to the target's; input {n_input[0]}"
                              f"×{n_input[1]} and target {n_output[0]}×{n_output[1]} have different first axes")
        if section.pad_to is not None:
            h, w = (int(v) for v in section.pad_to)
            if max(n_input[0], n_output[0]) > h or max(n_input[1], n_output[1]) > w:
                raise ConfigError(f"model.pad_to: {[h, w]} is smaller than the data (input {n_input[0]}×{n_input[1]}, "
                                  f"target {n_output[0]}×{n_output[1]}); give [H, W] at least their size")
            n_input, n_output = (h, w), (h, w)
        bc = section.bc_padding if section.bc_padding != "auto" else ("period" if io.periodic else "zero")
        config = {"n_input": list(n_input), "n_output": list(n_output), "alpha": section.alpha,
                  "n_cnn": section.n_cnn, "n_cnn3": section.n_cnn3, "w_comp": section.w_comp,
                  "levels": resolve_levels(n_input[0], section.levels, section.pad_to is not None)}
        if bc != "period":
            config["bc_padding"] = bc
        return config

    def forward(self, x: torch.Tensor, return_aux: bool = False):
        """x (B, Ns, Nd) → η (B, Nt, Nr); with `return_aux` also the auxiliary head (B, Nt, Nr)."""
        if x.dim() != 3 or tuple(x.shape[1:]) != self.n_input:
            raise ValueError(f"BCRNet: expected input (B, {self.n_input[0]}, {self.n_input[1]}), "
                             f"got {tuple(x.shape)}")
        a = self.alpha
        b = self.compress(x.transpose(1, 2))                     # (B, α, Ns)
        details = []
        for wavelet in self.wavelets:
            bt = wavelet(b)                                       # (B, 2α, Ns/2^ℓ)
            details.append(bt)
            b = bt[:, a:]
        d = self.coarse(b)
        for chain, inv, bt in zip(self.level_chains, self.inv_wavelets, reversed(details)):
            d1 = chain(bt)
            # the triangle add [d1[:α], d1[α:] + d] as one sum (its backward slices nothing)
            d = inv(d1 + F.pad(d, (0, 0, a, 0)))                  # (B, α, Ns/2^(ℓ−1))
        img = self.head(d).transpose(1, 2)                        # (B, Nt, Nr)
        out = img + self.refine_2d(img)
        return (out, img) if return_aux else out

    def refine_2d(self, img: torch.Tensor) -> torch.Tensor:
        """The 2D refinement (step 6) of img (B, Nt, Nr) → (B, Nt, Nr), before the residual add.

        The recipe pads every layer's input by one row in angle (periodic or zero, `bc_padding`) and one zero
        column in radius. Periodic: the angle axis is padded once, by n_cnn3 rows on each side; every
        convolution, valid in angle, consumes one row per side, and the rows it keeps are exactly the periodic
        extension of that layer's output. Zero: that trick does not hold (the zero rows would be convolved into
        non-zero rows), so every convolution zero-pads its own input, `padding=(1, 1)`. The radial zero padding
        is the convolution's own padding in both cases. Activations are
        (B, C, rows, Nr) with channels-last strides, and so are the kernels, so that oneDNN (and cuDNN) run
        their NHWC kernels: with 1–4 channels the default layout makes oneDNN pad channels to blocks of 16
        and reorder the activations around every call (5–6× slower on a 2-core AVX-512 CPU, forward + backward).
        """
        n = len(self.refine)
        nt = img.shape[1]
        if self.bc_padding == "zero":
            y, padding = img, (1, 1)
        elif n <= nt:
            y, padding = torch.cat([img[:, nt - n:], img, img[:, :n]], dim=1), (0, 1)
        else:  # more rows than the period: wrap as often as needed
            y, padding = img.index_select(1, torch.arange(-n, nt + n, device=img.device) % nt), (0, 1)
        y = y.unsqueeze(-1).permute(0, 3, 1, 2)             # (B, 1, rows, Nr), channels-last strides
        for i, conv in enumerate(self.refine):
            y = F.conv2d(y, channels_last_kernel(conv.weight), conv.bias, padding=padding)
            if i < n - 1:
                y = F.relu_(y)  # the convolution's backward needs its input, not its output
        return y[:, 0]

    def keras_layers(self) -> list[tuple[str, nn.Module]]:
        """Weighted layers in the original script's creation order (for Keras weight import)."""
        modules: list[nn.Module] = [self.compress, *self.wavelets, *self.coarse]
        for chain, inv in zip(self.level_chains, self.inv_wavelets):
            modules += [*chain, inv]
        modules += [self.head, *self.refine]
        return [(m.keras_name, m) for m in modules]

    def config(self) -> dict:
        """Constructor arguments, to rebuild the model from a checkpoint; `bc_padding` only when it is not the
        default 'period' (so the configs of periodic models read as before, and older ones load as periodic)."""
        cfg = {"n_input": list(self.n_input), "n_output": list(self.n_output), "alpha": self.alpha,
               "n_cnn": self.n_cnn, "n_cnn3": self.n_cnn3, "w_comp": self.w_comp, "levels": self.levels}
        if self.bc_padding != "period":
            cfg["bc_padding"] = self.bc_padding
        return cfg
