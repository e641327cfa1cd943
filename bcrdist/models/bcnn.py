"""BCNN: the Born (Tikhonov) reconstruction as a fixed, differentiable first layer, then a trainable CNN
post-correction on the image grid — bcrdist's own "Born, then a network" hybrid (`model.type: bcnn`; the
study's BCNN, a CNN on the far field added to the damped Born image, is `model.type: study_bcnn`).

The Born layer is `bcrdist.models.born_layers.BornReconstruction`: the Tikhonov estimate η_λ of
`bcrdist.physics.born` on the data set's grid, λ chosen on the validation split at its noise by the run's one
Born fit (`bcrdist.train.born_fit`, as `bcrdist baseline` chooses it) or `model.bcnn.born_lambda`. It is stored
by its definition (grid, λ, norm; `config()["born"]`) and rebuilt on load, never as a matrix. It reads the
network input as the pipeline hands it — Re F and Im F concatenated along the detector axis, (B, n_obs, 2·n_inc),
normalised per channel by the ScatteringModel — undoes that normalisation (`Units`), and returns the image in
network units. It runs in float32 even under autocast: a bf16 product would cost the estimate its third digit.

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

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from bcrdist.config import check_ranges, setting
from bcrdist.errors import ConfigError
from bcrdist.models.born_layers import BORN_PRECISION, BornReconstruction
from bcrdist.models.registry import Network, NetworkIO, Units
from bcrdist.physics.born_definition import BornDefinition


@dataclass
class BCNNConfig:
    channels: int = setting(32, help="channels of the post-correction U-Net's first level (doubled at each "
                            "level below)", low=1)
    depth: int = setting(3, help="poolings by 2 of the U-Net (0: a plain residual conv stack)", low=0)
    convs: int = setting(2, help="convolutions per U-Net level and side", low=1)
    kernel: int = setting(3, help="convolution kernel size (odd)", low=1)
    born_lambda: float | None = setting(None, help="λ of the Born (Tikhonov) layer, absolute; null = chosen on "
                                        "the validation split at its noise (data.eval_noise), as `bcrdist baseline` does",
                                        low=0)
    lambda_grid: int = setting(49, help="λ candidates on validation, log-spaced over σ_max²·[1e-12, 1] (as "
                               "`bcrdist baseline --grid`)", low=2)
    norm: Literal["area", "euclidean"] = setting("area", help="the Tikhonov regulariser: area-weighted L2 norm of "
                                                 "η, or the plain coefficient norm (as `bcrdist baseline --norm`)")

    def validate(self):
        check_ranges(self, "model.bcnn")
        if self.kernel % 2 == 0:
            raise ConfigError(f"model.bcnn.kernel: must be odd, got {self.kernel}")


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


class BCNN(Network):
    """BCNN: network input (B, n_obs, 2·n_inc) (normalised) → image (B, H, W) in network units, born +
    post(born). `n_input`/`n_output` as BCR-Net's; `periodic_rows` for a polar target; `born` the Born layer's
    definition (`BornDefinition.to_record()`, None until the run's Born fit sets it)."""

    train_gflop = 9.326

    summary = "BCNN: the Born–Tikhonov image (λ fitted on validation) as a fixed layer, then a residual U-Net"
    config_class = BCNNConfig
    config_section = "bcnn"
    input_parts = "complex"
    uses_units = True

    def __init__(self, n_input, n_output, channels: int = 32, depth: int = 3, convs: int = 2, kernel: int = 3,
                 periodic_rows: bool = False, born: dict | None = None):
        super().__init__()
        self.n_input = tuple(int(v) for v in n_input)
        self.n_output = tuple(int(v) for v in n_output)
        self.channels, self.depth, self.convs, self.kernel = int(channels), int(depth), int(convs), int(kernel)
        self.periodic_rows = bool(periodic_rows)
        self.born = BornReconstruction(self.n_input, self.n_output, precision=BORN_PRECISION)
        if born is not None:
            self.born.set_definition(BornDefinition.from_record(born, "model_config.net.born"))
        self.post = PostCorrection(self.channels, self.depth, self.convs, self.kernel, self.periodic_rows)

    @classmethod
    def resolve(cls, section: BCNNConfig, io: NetworkIO) -> dict:
        return {"n_input": list(io.n_input), "n_output": list(io.n_output), "channels": section.channels,
                "depth": section.depth, "convs": section.convs, "kernel": section.kernel,
                "periodic_rows": io.target_kind == "polar"}

    @classmethod
    def born_request(cls, section: BCNNConfig, config: dict) -> dict:
        return {"method": "tikhonov", "norm": section.norm, "lam": section.born_lambda,
                "lambda_grid": section.lambda_grid,
                "keys": {"norm": "model.bcnn.norm", "lam": "model.bcnn.born_lambda",
                         "lambda_grid": "model.bcnn.lambda_grid"}}

    def set_born(self, definition: BornDefinition, record: dict) -> None:
        self.born.set_definition(definition)
        self.keep_fit_record(record)

    def forward(self, x: torch.Tensor, return_aux: bool = False, units: Units | None = None):
        """x (B, n_obs, 2·n_inc) normalised; `units` the model's normalisation → (B, H, W) [and the same
        tensor as the auxiliary head]."""
        if x.dim() != 3 or tuple(x.shape[1:]) != self.n_input:
            raise ValueError(f"BCNN: expected input (B, {self.n_input[0]}, {self.n_input[1]}), got {tuple(x.shape)}")
        born = units.from_eta(self.born(units.raw_input(x))).unsqueeze(1)         # (B, 1, H, W)
        out = (born + self.post(born)).squeeze(1)
        return (out, out) if return_aux else out

    def config(self) -> dict:
        """The constructor arguments (plain values, as checkpoints store them)."""
        return {"n_input": list(self.n_input), "n_output": list(self.n_output), "channels": self.channels,
                "depth": self.depth, "convs": self.convs, "kernel": self.kernel, "periodic_rows": self.periodic_rows,
                "born": self.born.spec()}
