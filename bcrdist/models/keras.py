"""Keras weights for bcrdist models: convert the original's channels-last kernels and load
`model.save_weights(...)` HDF5 files into `BCRNet`, `MNNH` and `MNNH2`.

A Keras weights file lists its layers in *depth* order in the root attribute `layer_names`; each layer name
carries its creation order as a per-class counter (`cnnk1d`, `cnnk1d_1`, … in tf_keras; `cnnk1d_1`,
`cnnk1d_2`, … in Keras 2.2; a file may also start at any offset when other models were built first in the
same session). Models expose `keras_layers()`: their weighted layers in the original builder's creation
order, as (keras class name, module). Loading matches, per class, the file's layers sorted by counter to
the model's layers in creation order, and checks every shape.
"""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from bcrdist.errors import DataError
from bcrdist.mnn.locally_connected import LocallyConnected


def kernel_to_torch(layer: nn.Module, kernel: np.ndarray) -> np.ndarray:
    """Keras kernel layout → the layer's `weight` layout.

    Conv{d}D (k1..kd, C_in, C_out) → (C_out, C_in, k1..kd); LocallyConnected1D (L, k·C_in, C_out) →
    (L, C_out, C_in, k); LocallyConnected2D (H·W, kh·kw·C_in, C_out) → (H, W, C_out, C_in, kh, kw)
    (Keras flattens each patch as (k…, C_in) row-major and positions row-major).
    """
    if isinstance(layer, LocallyConnected):
        out, k = layer.output_size, layer.kernel_size
        full = kernel.reshape(*out, *k, layer.in_channels, layer.filters)
        d = len(out)
        return full.transpose(*range(d), 2 * d + 1, 2 * d, *range(d, 2 * d))
    d = kernel.ndim - 2
    return kernel.transpose(d + 1, d, *range(d))


def bias_to_torch(layer: nn.Module, bias: np.ndarray) -> np.ndarray:
    """Keras bias → `bias` layout: (C_out,) for convolutions; LC (*N_out, C_out) → (C_out, *N_out)."""
    if isinstance(layer, LocallyConnected):
        return np.moveaxis(bias.reshape(*layer.output_size, layer.filters), -1, 0)
    return bias


def set_keras_weights(layer: nn.Module, kernel: np.ndarray, bias: np.ndarray | None, name: str = "") -> None:
    """Copy a Keras kernel (and bias) into `layer`, checking shapes; `name` labels errors."""
    label = name or type(layer).__name__
    expected = tuple(layer.weight.shape)
    try:
        weight = kernel_to_torch(layer, np.asarray(kernel))
    except ValueError:
        weight = None
    if weight is None or weight.shape != expected:
        raise DataError(f"layer '{label}': kernel shape {tuple(np.shape(kernel))} does not match "
                        f"{type(layer).__name__} with weight {expected}")
    if (bias is None) != (layer.bias is None):
        want = "a bias" if layer.bias is not None else "no bias"
        raise DataError(f"layer '{label}': expected {want} for {type(layer).__name__}")
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
        if bias is not None:
            b = bias_to_torch(layer, np.asarray(bias))
            if tuple(b.shape) != tuple(layer.bias.shape):
                raise DataError(f"layer '{label}': bias shape {tuple(np.shape(bias))} does not match "
                                f"{tuple(layer.bias.shape)}")
            layer.bias.copy_(torch.from_numpy(np.ascontiguousarray(b)))


def _decode(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _split_name(name: str) -> tuple[str, int]:
    """'cnnk1d_7' → ('cnnk1d', 7); 'cnnk1d' → ('cnnk1d', 0)."""
    m = re.fullmatch(r"(.*?)(?:_(\d+))?", name)
    return m.group(1), int(m.group(2) or 0)


def read_keras_weights(path: str | Path) -> dict[str, list[tuple[str, list[np.ndarray]]]]:
    """Read a save_weights file: {keras class name: [(layer name, [kernel, bias?]), …] in creation order}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: Keras weights file not found")
    by_class: dict[str, list[tuple[int, str, list[np.ndarray]]]] = {}
    try:
        with h5py.File(path, "r") as f:
            root = f["model_weights"] if "model_weights" in f else f
            if "layer_names" not in root.attrs:
                raise DataError(f"{path}: not a Keras save_weights file (no 'layer_names' attribute)")
            for raw in root.attrs["layer_names"]:
                name = _decode(raw)
                group = root[name]
                weight_names = [_decode(w) for w in group.attrs.get("weight_names", [])]
                if not weight_names:
                    continue
                arrays = [np.asarray(group[w]) for w in weight_names]
                cls, counter = _split_name(name)
                by_class.setdefault(cls, []).append((counter, name, arrays))
    except OSError as exc:
        raise DataError(f"{path}: cannot read as HDF5 ({exc})") from None
    return {cls: [(n, a) for _, n, a in sorted(items)] for cls, items in by_class.items()}


def load_keras_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a Keras `save_weights` HDF5 file into `model` (BCRNet, MNNH or MNNH2) in place.

    Refuses, naming the first mismatch, a file whose layers per class differ in number from the model's or
    whose kernel/bias shapes differ.
    """
    layers = model.keras_layers()
    stored = read_keras_weights(path)
    wanted: dict[str, list[nn.Module]] = {}
    for cls, module in layers:
        wanted.setdefault(cls, []).append(module)
    for cls, modules in wanted.items():
        have = stored.get(cls, [])
        if len(have) != len(modules):
            raise DataError(f"{path}: expected {len(modules)} '{cls}' layers for {type(model).__name__}, "
                            f"the file has {len(have)}")
    extra = sorted(set(stored) - set(wanted))
    if extra:
        raise DataError(f"{path}: layer '{stored[extra[0]][0][0]}' has no counterpart in {type(model).__name__}")
    for cls, modules in wanted.items():
        for module, (name, arrays) in zip(modules, stored[cls]):
            if len(arrays) not in (1, 2):
                raise DataError(f"{path}: layer '{name}' has {len(arrays)} weights, expected kernel and bias")
            try:
                set_keras_weights(module, arrays[0], arrays[1] if len(arrays) == 2 else None, name)
            except DataError as exc:
                raise DataError(f"{path}: {exc}") from None
    return model
