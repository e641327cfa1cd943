"""The network registry: every network a run can train is one `Network` subclass registered under its
`model.type` name, and the registry is the only place a run asks which network it builds.

A network class says, as class attributes and class methods:

- `summary`: one line (``bcrdist config keys``, the run's log, docs);
- `config_class` and `config_section`: the dataclass of its config section and where that section is: a
  field of the `model` section (`"bcnn"` → `model.bcnn`), `""` for the `model` section itself (BCR-Net's
  keys, `model.alpha`, …), or None for `model.options` (networks registered outside bcrdist);
- `input_parts`: what input it needs: `"complex"` (Re and Im of a complex far field, concatenated along the
  detector axis: data.input farfield with data.use_imag true), `"real"` (one real part or a real dataset),
  `"any"`;
- `targets`: the target kinds it can predict (`"polar"`, `"cartesian"`);
- `resolve(section, io)`: its full constructor arguments for the data `io` (sizes, padding, levels: every
  choice a config leaves open, made here once), refusing what it cannot take with a ConfigError naming the key;
- `born_request(section, config)`: the Born reconstruction it must be fitted to before training (a dict of
  `bcrdist.train.born_fit.BornRequest` fields, and under `keys` the config keys that set them, for messages
  and the fit's record) given its config section and constructor arguments, or None;
- `uses_units`: whether `forward` needs the model's normalisation (`Units`: a Born layer works on the raw far
  field and in physical units);
- `train_gflop` (optional): GFLOP per sample of a train step (forward + backward) at the study's shape (a
  100 × 100 far field → a 100 × 100 image), the network's default sizes and batch 32, as `tools/bench_model.py
  --network` counts them; `bcrdist matrix --dry-run` scales a training's cost from it (None: from BCR-Net's measured rule);
- `config()` (instance): the constructor arguments as plain values, which checkpoints store and
  `cls(**config)` rebuilds — a Born layer's definition included, never its matrices;
- `forward(x, return_aux=False[, units=…])`: x (B, Ns, Nd') normalised network input → (B, Nt, Nr) in network
  units (and the auxiliary head of BCR-Net's pre-training, or the output twice for a one-head network).

`register(name, cls)` adds one (`bcrdist.models.register`), refusing a name in use; `network_class(name)`
looks one up, with a "did you mean" for a misspelt name.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from typing import ClassVar, NamedTuple

import torch
from torch import nn

from bcrdist.errors import ConfigError

INPUT_PARTS = ("complex", "real", "any")
TARGET_KINDS = ("polar", "cartesian")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class NetworkIO:
    """What the data hand a network, resolved by the run plan: the network input (Ns, Nd') after the layout
    transforms (antipodal pairing, parts concatenated), the target (Nt, Nr), `parts` ("complex": the input is
    [Re F | Im F] of a complex far field along its last axis; "real": one real array), the target kind
    (`polar` / `cartesian`) and whether the angle axis is periodic."""

    n_input: tuple[int, int]
    n_output: tuple[int, int]
    parts: str
    target_kind: str
    periodic: bool


class Units(NamedTuple):
    """The model's normalisation as a network that works in physical units sees it: the input x_n = (x −
    in_shift)/in_scale per channel (Nd',), the output y = gain·o + bias in training units (η / out_scale)."""

    in_shift: torch.Tensor
    in_scale: torch.Tensor
    gain: torch.Tensor
    bias: torch.Tensor
    out_scale: torch.Tensor

    def raw_input(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised input (B, Ns, Nd') → the raw input, float32."""
        return x.float() * self.in_scale.float() + self.in_shift.float()

    def from_eta(self, eta: torch.Tensor) -> torch.Tensor:
        """η in physical units (B, Nt, Nr) → the network's output units."""
        return (eta / self.out_scale.float() - self.bias.float()) / self.gain.float()


class Network(nn.Module):
    """Base class of the registered networks; see the module docstring for what a subclass declares."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    config_class: ClassVar[type | None] = None
    config_section: ClassVar[str | None] = None
    input_parts: ClassVar[str] = "any"
    targets: ClassVar[tuple[str, ...]] = TARGET_KINDS
    uses_units: ClassVar[bool] = False
    train_gflop: ClassVar[float | None] = None

    n_input: tuple[int, int]
    n_output: tuple[int, int]

    @classmethod
    def resolve(cls, section, io: NetworkIO) -> dict:
        """Constructor arguments for data `io` from the config section (an instance of `config_class`, or
        None): by default the section's fields and the data's sizes."""
        fields = dataclasses.asdict(section) if section is not None else {}
        return {**fields, "n_input": list(io.n_input), "n_output": list(io.n_output)}

    @classmethod
    def born_request(cls, section, config: dict) -> dict | None:
        """The Born reconstruction this network (config section `section`, constructor arguments `config`) must
        be fitted to before training, as `BornRequest` fields; None for a network without one."""
        return None

    def set_born(self, definition, record: dict) -> None:
        """Give a Born-based network its fitted reconstruction (a `BornDefinition`) and the fit's record
        (`keep_fit_record`)."""
        raise TypeError(f"{type(self).__name__} has no Born reconstruction")

    def keep_fit_record(self, record: dict) -> None:
        """Keep what a run's results (and checkpoints) record of how the network was fitted to its data."""
        self._fit_record = dict(record)

    def fit_record(self) -> dict:
        """The record kept by `keep_fit_record` ({} for a network fitted to nothing)."""
        return dict(getattr(self, "_fit_record", {}))


_REGISTRY: dict[str, type[Network]] = {}


def register(name: str, cls: type[Network]) -> type[Network]:
    """Register network class `cls` as `model.type: name`; ConfigError for a name in use or a class that does
    not declare what the registry needs."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"register: network name {name!r}: expected lower-case letters, digits and '_', "
                          f"starting with a letter")
    if name in _REGISTRY:
        raise ConfigError(f"register: model.type {name!r} is taken by {_REGISTRY[name].__module__}."
                          f"{_REGISTRY[name].__qualname__}; choose another name")
    if not (isinstance(cls, type) and issubclass(cls, Network)):
        raise ConfigError(f"register: {name!r}: expected a subclass of bcrdist.models.Network, got {cls!r}")
    problems = []
    if not cls.summary.strip() or "\n" in cls.summary:
        problems.append("a one-line `summary`")
    if not callable(getattr(cls, "config", None)):
        problems.append("`config()` returning its constructor arguments (`cls(**net.config())` rebuilds it)")
    if cls.input_parts not in INPUT_PARTS:
        problems.append(f"`input_parts` in {INPUT_PARTS}")
    if not cls.targets or set(cls.targets) - set(TARGET_KINDS):
        problems.append(f"`targets` from {TARGET_KINDS}")
    if cls.config_class is not None and not dataclasses.is_dataclass(cls.config_class):
        problems.append("a dataclass (or None) as `config_class`")
    if problems:
        raise ConfigError(f"register: {cls.__qualname__} must declare {', '.join(problems)}")
    cls.name = name
    _REGISTRY[name] = cls
    return cls


def network_class(name: str, key: str = "model.type") -> type[Network]:
    """The class registered as `name`; ConfigError naming `key`, with the closest registered name."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ConfigError(f"{key}: unknown network {name!r} ({hint}registered: {', '.join(sorted(_REGISTRY))})")


def network_names() -> list[str]:
    """The registered names, in registration order."""
    return list(_REGISTRY)
