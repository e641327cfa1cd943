"""The three convolutional networks of Desai, Ma, Lähivaara, Monk (arXiv 2503.01596): CNN, CNNB and the
study's BCNN, on one shared trunk.

The trunk reads the normalised network input x (B, n_obs, 2·n_inc) = [Re F | Im F] as two channels (B, 2, n_obs,
n_inc) = (Re F, Im F) and applies len(channels) × [Conv2d 3×3 without padding → GELU → MaxPool2d(2) → Dropout],
flattens, then len(widths) × [Linear → GELU → Dropout] and a linear output layer. A side of s pixels becomes
⌊(s − 2)/2⌋ after each conv+pool block (100 → 49 → 23 → 10 → 4 for the study's four blocks). PyTorch's default
initialisation. The study's dropout is 0 (`dropout`; nn.Dropout(0) returns its input unchanged).

- `CNN` (`model.cnn`): the output layer gives H·W values, the image η[i, j] row-major, in network units.
- `CNNB` (`model.cnnb`): the output layer gives 2·n_obs·n_inc values, a corrected far field in the normalised
  input layout (B, n_obs, 2·n_inc); η = the damped-LSQR Born reconstruction (damp 0.1) of its raw values.
- `StudyBCNN` (`model.study_bcnn`): the output layer gives H·W values, a residual added to the damped-LSQR Born
  reconstruction (damp 1: the study's "Born γ = 1") of the raw input.

The Born step of CNNB and StudyBCNN is `born_layers.BornReconstruction`: a fixed, differentiable linear map of
the raw far field to η in physical units whose tensors are non-persistent buffers (never in the state dict),
computed from a `BornDefinition` that the pipeline fits before training (`born_request`, `set_born`) and that
`config()` records, so that a checkpoint rebuilds it. Gradients of the loss flow through it into the trunk.
Each network has one head: asked for the auxiliary head it returns its output twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bcrdist.config import check_ranges, setting
from bcrdist.errors import ConfigError
from bcrdist.models.born_layers import BORN_PRECISION, BornReconstruction
from bcrdist.models.registry import Network, NetworkIO, Units
from bcrdist.physics.born_definition import BornDefinition

KERNEL = 3
POOL = 2


def _channels(default: list[int]):
    return setting(default_factory=lambda: list(default), low=1,
                   help="output channels of the 3×3 conv+pool blocks, one per block (the study's: 4 blocks)")


def _widths(default: list[int]):
    return setting(default_factory=lambda: list(default), low=1,
                   help="widths of the hidden fully connected layers (GELU), before the linear output layer")


def _dropout():
    return setting(0.0, low=0, high=1, high_open=True,
                   help="dropout after every pooling and hidden fully connected layer (the study's: 0)")


def _check_blocks(section, where: str) -> None:
    check_ranges(section, where)
    if not section.channels:
        raise ConfigError(f"{where}.channels: give at least one conv+pool block")


@dataclass
class CNNConfig:
    channels: list[int] = _channels([296, 211, 152, 61])
    widths: list[int] = _widths([537, 465, 419])
    dropout: float = _dropout()

    def validate(self):
        _check_blocks(self, "model.cnn")


@dataclass
class CNNBConfig:
    channels: list[int] = _channels([125, 358, 426, 221])
    widths: list[int] = _widths([576])
    dropout: float = _dropout()
    damp: float = setting(0.1, low=0, low_open=True,
                          help="damping of the LSQR Born reconstruction of the corrected far field (the study's: 0.1)")

    def validate(self):
        _check_blocks(self, "model.cnnb")


@dataclass
class StudyBCNNConfig:
    channels: list[int] = _channels([335, 33, 195, 65])
    widths: list[int] = _widths([971])
    dropout: float = _dropout()
    damp: float = setting(1.0, low=0, low_open=True,
                          help="damping of the LSQR Born reconstruction the residual is added to (the study's: 1)")

    def validate(self):
        _check_blocks(self, "model.study_bcnn")


def pooled_side(side: int, blocks: int) -> int:
    """A side of `side` pixels after `blocks` × [valid 3×3 convolution, max-pooling by 2] (≤ 0: too few pixels)."""
    for _ in range(blocks):
        if side < KERNEL:
            return 0
        side = (side - KERNEL + 1) // POOL
    return side


def _check_trunk_sizes(n_input, channels, where: str) -> tuple[int, int]:
    """The (rows, columns) of the trunk's last feature map for input (n_obs, 2·n_inc); ConfigError naming
    `where` (the config section) when the far field has no Re/Im pair or is too small for the blocks."""
    n_obs, width = n_input
    if width % 2:
        raise ConfigError(f"{where}: the network input ({n_obs}, {width}) must hold Re F and Im F side by side "
                          f"(an even last axis): set data.use_imag true")
    n_inc, blocks = width // 2, len(channels)
    rows, cols = pooled_side(n_obs, blocks), pooled_side(n_inc, blocks)
    if min(rows, cols) < 1:
        fitting = max(b for b in range(blocks) if min(pooled_side(n_obs, b), pooled_side(n_inc, b)) >= 1)
        hint = (f"give at most {fitting} layer{'s' if fitting > 1 else ''} or a larger input" if fitting
                else "give a larger input")
        raise ConfigError(f"{where}.channels: {blocks} conv+pool layers take a {n_obs}×{n_inc} far field down to "
                          f"{max(rows, 0)}×{max(cols, 0)} (3×3 valid convolutions, pooling by 2); {hint}")
    return rows, cols


class StudyTrunk(nn.Module):
    """Normalised input x (B, n_obs, 2·n_inc) → (B, n_out): conv+pool blocks on the (Re F, Im F) channels, hidden
    fully connected layers and a linear output layer (module docstring)."""

    def __init__(self, n_input, channels, widths, dropout: float, n_out: int, where: str):
        super().__init__()
        self.n_input = tuple(int(v) for v in n_input)
        rows, cols = _check_trunk_sizes(self.n_input, channels, where)
        blocks = []
        for c_in, c_out in zip([2, *channels[:-1]], channels):
            blocks += [nn.Conv2d(c_in, c_out, KERNEL), nn.GELU(), nn.MaxPool2d(POOL), nn.Dropout(dropout)]
        self.features = nn.Sequential(*blocks, nn.Flatten())
        hidden = []
        for w_in, w_out in zip([channels[-1] * rows * cols, *widths[:-1]], widths):
            hidden += [nn.Linear(w_in, w_out), nn.GELU(), nn.Dropout(dropout)]
        self.hidden = nn.Sequential(*hidden)
        self.output = nn.Linear(widths[-1] if widths else channels[-1] * rows * cols, int(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n_obs, width = x.shape
        channels = x.reshape(b, n_obs, 2, width // 2).transpose(1, 2)         # (B, 2, n_obs, n_inc): Re, Im
        return self.output(self.hidden(self.features(channels)))


class _StudyNetwork(Network):
    """What the three share: the trunk, the size checks, the configuration and the single head."""

    input_parts = "complex"
    targets = ("cartesian",)

    def __init__(self, n_input, n_output, channels, widths, dropout: float, n_out: int):
        super().__init__()
        self.n_input = tuple(int(v) for v in n_input)
        self.n_output = tuple(int(v) for v in n_output)
        self.channels = [int(c) for c in channels]
        self.widths = [int(w) for w in widths]
        self.dropout = float(dropout)
        self.trunk = StudyTrunk(self.n_input, self.channels, self.widths, self.dropout, n_out, self._where())

    @classmethod
    def _where(cls) -> str:
        return f"model.{cls.config_section}"

    @classmethod
    def resolve(cls, section, io: NetworkIO) -> dict:
        """The section's fields (the study's defaults when None) and the data's sizes; ConfigError naming the key
        for a far field the conv+pool blocks cannot take."""
        section = section if section is not None else cls.config_class()
        kwargs = super().resolve(section, io)
        _check_trunk_sizes(io.n_input, kwargs["channels"], cls._where())
        return kwargs

    def config(self) -> dict:
        return {"n_input": list(self.n_input), "n_output": list(self.n_output), "channels": list(self.channels),
                "widths": list(self.widths), "dropout": self.dropout}

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 3 or tuple(x.shape[1:]) != self.n_input:
            raise ValueError(f"{type(self).__name__}: expected input (B, {self.n_input[0]}, {self.n_input[1]}), "
                             f"got {tuple(x.shape)}")


class CNN(_StudyNetwork):
    """The study's CNN: normalised far field (B, n_obs, 2·n_inc) → η (B, H, W) in network units."""

    summary = "the study's CNN: conv+pool blocks and fully connected layers from the far field to the image"
    train_gflop = 8.482
    config_class = CNNConfig
    config_section = "cnn"

    def __init__(self, n_input, n_output, channels=(296, 211, 152, 61), widths=(537, 465, 419),
                 dropout: float = 0.0):
        h, w = (int(v) for v in n_output)
        super().__init__(n_input, n_output, channels, widths, dropout, h * w)

    def forward(self, x: torch.Tensor, return_aux: bool = False):
        """x (B, n_obs, 2·n_inc) normalised → (B, H, W) [twice with `return_aux`]."""
        self._check_input(x)
        out = self.trunk(x).reshape(x.shape[0], *self.n_output)
        return (out, out) if return_aux else out


class _BornNetwork(_StudyNetwork):
    """A study network with a damped-LSQR Born layer (`damp`) fitted by the pipeline before training."""

    uses_units = True

    def __init__(self, n_input, n_output, channels, widths, dropout: float, damp: float, born: dict | None,
                 n_out: int):
        super().__init__(n_input, n_output, channels, widths, dropout, n_out)
        self.damp = float(damp)
        self.born = BornReconstruction(n_input=self.n_input, n_output=self.n_output, precision=BORN_PRECISION)
        if born is not None:
            self.born.set_definition(BornDefinition.from_record(born, f"{self._where()}.born"))

    @classmethod
    def born_request(cls, section, config: dict) -> dict:
        return {"method": "lsqr", "damp": config["damp"], "keys": {"damp": f"{cls._where()}.damp"}}

    def set_born(self, definition, record: dict) -> None:
        """Set the Born layer's `BornDefinition` (fitted on the run's data) and keep the fit's `record`."""
        self.born.set_definition(definition)
        self.keep_fit_record(record)

    def config(self) -> dict:
        return {**super().config(), "damp": self.damp, "born": self.born.spec()}

    def born_image(self, x: torch.Tensor, units: Units | None) -> torch.Tensor:
        """Normalised far field x (B, n_obs, 2·n_inc) → its Born reconstruction (B, H, W) in network units."""
        if units is None:
            raise ValueError(f"{type(self).__name__}: the Born layer needs the model's normalisation (units)")
        return units.from_eta(self.born(units.raw_input(x)))


class CNNB(_BornNetwork):
    """The study's CNNB: normalised far field (B, n_obs, 2·n_inc) → the trunk's corrected far field in the same
    layout → its damped-LSQR Born reconstruction (B, H, W) in network units."""

    summary = "the study's CNNB: a CNN corrects the far field, a damped-LSQR Born layer (damp 0.1) images it"
    train_gflop = 11.179
    config_class = CNNBConfig
    config_section = "cnnb"

    def __init__(self, n_input, n_output, channels=(125, 358, 426, 221), widths=(576,), dropout: float = 0.0,
                 damp: float = 0.1, born: dict | None = None):
        n_obs, width = (int(v) for v in n_input)
        super().__init__(n_input, n_output, channels, widths, dropout, damp, born, n_obs * width)

    def forward(self, x: torch.Tensor, return_aux: bool = False, units: Units | None = None):
        """x (B, n_obs, 2·n_inc) normalised, `units` the model's normalisation → (B, H, W) [twice with
        `return_aux`]."""
        self._check_input(x)
        corrected = self.trunk(x).reshape(x.shape)                          # [Re | Im], normalised
        out = self.born_image(corrected, units)
        return (out, out) if return_aux else out


class StudyBCNN(_BornNetwork):
    """The study's BCNN: normalised far field (B, n_obs, 2·n_inc) → its damped-LSQR Born reconstruction plus the
    trunk's residual (B, H, W), in network units."""

    summary = "the study's BCNN: damped-LSQR Born image (damp 1) plus a residual a CNN computes from the far field"
    train_gflop = 2.670
    config_class = StudyBCNNConfig
    config_section = "study_bcnn"

    def __init__(self, n_input, n_output, channels=(335, 33, 195, 65), widths=(971,), dropout: float = 0.0,
                 damp: float = 1.0, born: dict | None = None):
        h, w = (int(v) for v in n_output)
        super().__init__(n_input, n_output, channels, widths, dropout, damp, born, h * w)

    def forward(self, x: torch.Tensor, return_aux: bool = False, units: Units | None = None):
        """x (B, n_obs, 2·n_inc) normalised, `units` the model's normalisation → (B, H, W) [twice with
        `return_aux`]."""
        self._check_input(x)
        residual = self.trunk(x).reshape(x.shape[0], *self.n_output)
        out = self.born_image(x, units) + residual
        return (out, out) if return_aux else out
