"""Argument normalisation, initialisation and activations shared by the MNN layers.

Mirrors the original `mnn/backend.py` helpers (`_convert2tuple`, `_convert2tuple_of_tuple`) and the Keras
defaults every layer inherits (glorot_uniform kernels, zero biases).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F


def to_tuple(value, n: int, layer: str, arg: str) -> tuple[int, ...]:
    """int → n-tuple; a sequence of length ≤ n is extended by repeating its last element (as the original)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * n
    if isinstance(value, Sequence) and 0 < len(value) <= n and all(isinstance(v, int) for v in value):
        return tuple(value) + (value[-1],) * (n - len(value))
    raise ValueError(f"{layer}: {arg} must be an int or a tuple of at most {n} ints, got {value!r}")


def to_pad_tuple(value, n: int, layer: str, arg: str = "size") -> tuple[tuple[int, int], ...]:
    """Padding sizes → ((before, after),) * n, as the original `_convert2tuple_of_tuple`.

    int s → ((s, s),)*n; (a, b, …) → ((a, a), (b, b), …); ((a0, a1), …) kept; shorter tuples are
    extended by repeating their last element.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        pairs = [(value, value)]
    elif isinstance(value, Sequence) and 0 < len(value) <= n:
        pairs = []
        for v in value:
            if isinstance(v, int) and not isinstance(v, bool):
                pairs.append((v, v))
            elif isinstance(v, Sequence) and len(v) == 2 and all(isinstance(x, int) for x in v):
                pairs.append((v[0], v[1]))
            else:
                raise ValueError(f"{layer}: {arg} entries must be ints or (before, after) pairs, got {v!r}")
    else:
        raise ValueError(f"{layer}: {arg} must be an int or a tuple of at most {n} entries, got {value!r}")
    pairs += [pairs[-1]] * (n - len(pairs))
    if any(a < 0 or b < 0 for a, b in pairs):
        raise ValueError(f"{layer}: {arg} must be non-negative, got {value!r}")
    return tuple(pairs)


def glorot_uniform_(weight: torch.Tensor, fan_in: int, fan_out: int) -> torch.Tensor:
    """Keras glorot_uniform: U(±√(6 / (fan_in + fan_out))), fans = kernel volume × channels."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        return weight.uniform_(-limit, limit)


_ACTIVATIONS: dict[str | None, Callable[[torch.Tensor], torch.Tensor] | None] = {
    None: None,
    "linear": None,
    "relu": F.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "elu": F.elu,
    "softplus": F.softplus,
    "selu": F.selu,
}


def get_activation(name: str | None, layer: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Keras activation name → function (None for linear)."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"{layer}: unknown activation {name!r} (expected one of "
                         f"{', '.join(repr(k) for k in _ACTIVATIONS)})")
    return _ACTIVATIONS[name]


BC_PADDINGS = ("period", "zero")


def check_bc_padding(bc_padding: str, layer: str) -> str:
    if bc_padding not in BC_PADDINGS:
        raise ValueError(f"{layer}: bc_padding must be 'period' or 'zero', got {bc_padding!r}")
    return bc_padding


def check_positive(value: int, layer: str, arg: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{layer}: {arg} must be a positive int, got {value!r}")
    return value
