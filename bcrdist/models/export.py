"""Portable weights: a trained model as DIR/model.safetensors + DIR/model.json (`bcrdist export`), readable
without bcrdist and loaded back without unpickling anything (docs/export.md).

model.safetensors holds every tensor of the model's state dict (parameters and persistent buffers, the
normalisation among them), written by the format's reference implementation (`safetensors.torch`), whose
reader validates the header before it touches a byte of data; its `__metadata__` names the format. A Born
layer's matrices are not in it: they are non-persistent buffers rebuilt from the layer's definition, as a
checkpoint's are (`bcrdist.models.born_layers`). model.json (plain JSON) says what the tensors are:

    format, format_version   EXPORT_FORMAT, EXPORT_VERSION
    model_type, summary       the registered network (`bcrdist.models.registry`) and its one line
    parameters                the number of parameter values (a complex value counts once)
    model_config              `ScatteringModel.record()`: what `ScatteringModel.from_record` rebuilds the model from
    normalization             kind (rms | minmax), in_shift and in_scale (Nd',), out_scale [, out_gain, out_bias]
    layout                    the datasets read and predicted, antipodal, use_imag, the data's and the network's
                              input and output sizes
    grid                      the training data's grid (k, angles, box or polar radius, sign, conventions) when
                              the checkpoint records it (its provenance or a Born layer's definition), else null
    provenance                exported_by, the checkpoint (file, sha256, format, version), the run's provenance
                              (bcrdist version, git revision, config hash, data set id), source, progress
    config                    the training config the checkpoint carries (null if none)
    tensors                   {name: {shape, dtype}} in state-dict order
    weights                   {file, sha256, bytes} of model.safetensors

`load_exported` checks the format, reads model.safetensors once, compares its SHA-256 with model.json's and
parses those same bytes, builds the model from `model_config` through the registry and loads the tensors with
`strict=True`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import safetensors
import safetensors.torch
import torch

from bcrdist import __version__
from bcrdist.errors import DataError
from bcrdist.fileio import atomic_write_files, file_sha256, one_line, to_json
from bcrdist.models.checkpoint import load_checkpoint, model_from_checkpoint
from bcrdist.models.scattering import ScatteringModel

EXPORT_FORMAT = "bcrdist-export"
EXPORT_VERSION = 1
RECORD_NAME = "model.json"
WEIGHTS_NAME = "model.safetensors"


class Export(NamedTuple):
    """What `export_model` wrote: the two files, the network type, its number of parameter values and of
    tensors."""

    record: Path
    weights: Path
    model_type: str
    parameters: int
    tensors: int


def plain(value):
    """`value` as plain JSON values: tuples → lists, NumPy scalars and arrays, tensors → numbers and lists,
    non-finite floats → None (JSON has no NaN), keys → strings, anything else (a dtype, a device) → its text."""
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
        return plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def is_export(path) -> bool:
    """Whether `path` names an export (its directory, model.json or model.safetensors) rather than a checkpoint."""
    path = Path(path)
    return path.is_dir() or path.name in (RECORD_NAME, WEIGHTS_NAME)


def _refuse_existing(out_dir: Path) -> None:
    """DataError when `out_dir` is not a directory or already holds an export's file (a symlink counts: it is
    refused, never followed)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: not a directory")
    for name in (RECORD_NAME, WEIGHTS_NAME):
        if os.path.lexists(out_dir / name):
            raise DataError(f"{out_dir / name}: already exists (an earlier export?); export into another "
                            f"directory or remove it")


def born_grid(net_config: dict) -> dict | None:
    """The grid record of a Born layer's definition among the network's constructor arguments (the grid of the
    data it was fitted on), if any."""
    for value in net_config.values():
        if isinstance(value, dict) and isinstance(value.get("grid"), dict):
            return value["grid"]
    return None


def _normalization(model: ScatteringModel) -> dict:
    out = {"kind": model.normalization,
           "rule": "x_n = (x - in_shift) / in_scale per channel of the input's last axis; eta = out_scale * y "
                   "(rms) or out_scale * (out_gain * y + out_bias) (minmax), y the network's output",
           "in_shift": model.in_shift.tolist(), "in_scale": model.in_scale.tolist(),
           "out_scale": float(model.out_scale)}
    if model.normalization == "minmax":
        out.update(out_gain=float(model.out_gain), out_bias=float(model.out_bias))
    return out


def _layout(model: ScatteringModel) -> dict:
    return {"input": model.input, "target": model.target, "antipodal": model.antipodal, "use_imag": model.use_imag,
            "data_input": list(model.data_input), "data_output": list(model.data_output),
            "network_input": list(model.net.n_input), "network_output": list(model.net.n_output)}


def export_model(checkpoint, out_dir) -> Export:
    """Write the model of `checkpoint` (a model checkpoint such as best.pt, or a training state last.pt: its
    current weights) as `out_dir`/model.safetensors and `out_dir`/model.json, both atomically (module
    docstring). DataError, nothing written, for a file that is not a bcrdist checkpoint, an `out_dir` that is a
    file or already holds an export's file; FileNotFoundError for a missing checkpoint."""
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    _refuse_existing(out_dir)
    if checkpoint.is_dir():
        raise DataError(f"{checkpoint}: a directory, not a checkpoint file")
    ck = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ck, checkpoint)
    # own, contiguous copies: safetensors stores neither views nor tensors that share memory
    tensors = {name: t.detach().cpu().clone().contiguous() for name, t in model.state_dict().items()}
    weights = safetensors.torch.save(tensors, metadata={"format": EXPORT_FORMAT,
                                                        "format_version": str(EXPORT_VERSION),
                                                        "model_type": model.model_type})
    record = model.record()
    parameters = sum(p.numel() for p in model.parameters())
    doc = {
        "format": EXPORT_FORMAT, "format_version": EXPORT_VERSION,
        "model_type": model.model_type, "summary": model.net.summary, "parameters": parameters,
        "model_config": record, "normalization": _normalization(model), "layout": _layout(model),
        "grid": (ck.get("provenance") or {}).get("dataset_grid") or born_grid(record["net"]),
        "provenance": {"exported_by": __version__,
                       "checkpoint": {"file": checkpoint.name, "sha256": file_sha256(checkpoint),
                                     "format": ck.get("format"), "version": ck.get("version")},
                       "run": ck.get("provenance"), "source": ck.get("source"), "progress": ck.get("progress")},
        "config": ck.get("config"),
        "tensors": {name: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
                    for name, t in tensors.items()},
        "weights": {"file": WEIGHTS_NAME, "sha256": hashlib.sha256(weights).hexdigest(), "bytes": len(weights)},
    }
    text = (to_json(plain(doc)) + "\n").encode()
    # again: another export may have written there while the model was rebuilt (a Born layer takes seconds)
    _refuse_existing(out_dir)
    # model.json last: its presence says the export is complete
    atomic_write_files({out_dir / WEIGHTS_NAME: weights, out_dir / RECORD_NAME: text})
    return Export(record=out_dir / RECORD_NAME, weights=out_dir / WEIGHTS_NAME, model_type=model.model_type,
                  parameters=parameters, tensors=len(tensors))


def read_record(path) -> tuple[Path, dict]:
    """(model.json's path, its content) of the export `path` names (its directory or either file); DataError
    for a file that is not an export of this format version, FileNotFoundError when there is none."""
    path = Path(path)
    record_path = (path if path.is_dir() else path.parent) / RECORD_NAME
    if not record_path.is_file():
        raise FileNotFoundError(f"{record_path}: not found (not a `bcrdist export` directory)")
    try:
        doc = json.loads(record_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{record_path}: not valid JSON ({one_line(exc)})") from None
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise DataError(f"{record_path}: not a bcrdist export (format {found!r}, expected {EXPORT_FORMAT!r})")
    if doc.get("format_version") != EXPORT_VERSION:
        raise DataError(f"{record_path}: {EXPORT_FORMAT} version {doc.get('format_version')!r}; this bcrdist reads "
                        f"version {EXPORT_VERSION}")
    if not isinstance(doc.get("weights"), dict) or not isinstance(doc.get("model_config"), dict):
        raise DataError(f"{record_path}: lacks weights or model_config")
    return record_path, doc


def load_exported(path, device="cpu", with_meta: bool = False):
    """The `ScatteringModel` of an export (`path`: its directory, model.json or model.safetensors) in eval mode
    on `device` ((B, Ns, Nd') network input → (B, Nt, Nr); `predict_eta` from raw input), as
    `bcrdist.models.checkpoint.load_model` gives it for the checkpoint it was exported from (with `with_meta`
    also {"seed", "config", "provenance"}: the run's provenance). Nothing is unpickled; DataError, one line
    naming the file, for a changed or truncated model.safetensors or a model.json of another format or version."""
    record_path, doc = read_record(path)
    weights_path = record_path.parent / WEIGHTS_NAME
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path}: not found (the export is incomplete)")
    # hash and parse the same bytes: the file cannot change between the check and the read
    data = weights_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != doc["weights"].get("sha256"):
        raise DataError(f"{weights_path}: its SHA-256 does not match {record_path.name} (changed or truncated "
                        f"since the export)")
    try:
        tensors = safetensors.torch.load(data)
    except (safetensors.SafetensorError, ValueError, RuntimeError) as exc:
        raise DataError(f"{weights_path}: not a readable safetensors file ({one_line(exc)})") from None
    model = model_from_checkpoint({"model_config": doc["model_config"], "model": tensors}, record_path)
    model.to(device).eval()
    if with_meta:
        return model, {"seed": (doc.get("config") or {}).get("seed", 0), "config": doc.get("config"),
                       "provenance": (doc.get("provenance") or {}).get("run")}
    return model
