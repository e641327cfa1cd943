"""Checkpoints: written atomically (by rank 0), loaded with `torch.load(weights_only=True)`, and the model
checkpoint format with its one writer and reader (`save_model` / `load_model`).

A trained model with its preprocessing, from a checkpoint, in two lines:

    model = bcrdist.load_model("runs/demo/checkpoints/best.pt")
    eta = model.predict_eta(measure)            # (B, Ns, Nd) raw measurements → (B, Nt, Nr) η

A checkpoint is a dict of tensors and plain Python values (no pickled objects), so `weights_only=True`
loads it. Model state dicts are stored without DDP (`module.`) or torch.compile (`_orig_mod.`) prefixes.
A model checkpoint (`best.pt`, `bcrdist import-keras`) holds {"format": MODEL_FORMAT, "version", "model":
weights and normalisation buffers (a Born layer's tensors are not among them: they are rebuilt from its
definition), "model_config": `ScatteringModel.record()` (its `type`, the registered network to rebuild, absent
in checkpoints of BCR-Net written before the registry), and what the writer adds (the training config, …)}. `load_model` reads it, and any checkpoint with those two keys: the training state
`last.pt` and the 0.1 format ("bcrdist-checkpoint-1") of both files; it also loads the portable weights
`bcrdist export` writes (`bcrdist.models.export`: safetensors + JSON, nothing unpickled).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from bcrdist import __version__
from bcrdist.errors import DataError
from bcrdist.fileio import atomic_write, one_line
from bcrdist.models.scattering import ScatteringModel

_PREFIXES = ("module.", "_orig_mod.")
MODEL_FORMAT = "bcrdist-model-2"


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under any DDP / torch.compile wrappers (nested in any order)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def strip_prefixes(state: dict) -> dict:
    """Remove leading `module.` / `_orig_mod.` prefixes, repeatedly (they nest in either order)."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def model_state(model: nn.Module) -> dict:
    """Prefix-free state dict of the unwrapped model, on the CPU."""
    return {k: v.detach().cpu().clone() for k, v in strip_prefixes(unwrap(model).state_dict()).items()}


def atomic_save(obj: dict, path: str | Path) -> Path:
    """torch.save `obj` to `path` atomically (`bcrdist.fileio.atomic_write`). A failed write (disk full, file
    too large) is the OSError of that write, one line naming `path`, whatever torch's writer made of it."""
    return atomic_write(path, lambda fh: _torch_save(obj, fh))


class _WriteRecorder:
    """The file torch.save writes through, remembering the first OSError of a write."""

    def __init__(self, fh):
        self.fh, self.error = fh, None

    def write(self, data) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def _torch_save(obj: dict, fh) -> None:
    """torch.save into `fh`, raising the OSError of a failed write. torch's zip writer does not pass that error
    on: depending on where the write failed it stops with a RuntimeError of its own ("unexpected pos", "failed
    writing file"), with the OSError somewhere in a page of chained tracebacks."""
    out = _WriteRecorder(fh)
    try:
        torch.save(obj, out)
    except Exception:
        if out.error is not None:
            raise out.error from None
        raise
    if out.error is not None:
        raise out.error


def remove_stale_temporaries(directory: str | Path) -> None:
    """Delete temporaries left by a save that was killed (they never look like checkpoints)."""
    directory = Path(directory)
    if directory.is_dir():
        for tmp in directory.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint with weights_only=True; a missing or unreadable file is a DataError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise DataError(f"{path}: not a readable bcrdist checkpoint ({_load_failure(exc)})") from None


def _load_failure(exc: Exception) -> str:
    """Why torch.load failed, in one line: the reason of torch's weights-only unpickler (its message is a page
    of advice on loading unsafely, which a bcrdist checkpoint never needs), else the error itself."""
    text = str(exc)
    reason = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n\s*\n|$)", text, re.S)
    return one_line(reason.group(1) if reason else f"{type(exc).__name__}: {text}")


class WeightsMismatch(DataError):
    """Weights that do not fit a model: another network, or the same one for other sizes (of the data)."""


# what a training run's refusal of weights adds: where the shapes of its model come from
RUN_MODEL = "this run's model is built from its config (model.*) and the sizes of its data (data.path)"


def load_model_state(model: nn.Module, state: dict) -> None:
    """Load a (possibly prefixed) state dict into the unwrapped `model`, strictly. Weights of another network
    or of other sizes are a WeightsMismatch, one line naming the first tensor that differs, with its shape in
    `state` and in the model; the caller adds which file they came from."""
    inner = unwrap(model)
    state = strip_prefixes(state)
    mismatch = weights_mismatch(inner.state_dict(), state)
    if mismatch:
        raise WeightsMismatch(f"the weights do not fit the model: {mismatch}")
    inner.load_state_dict(state, strict=True)


def weights_mismatch(own: dict, given: dict) -> str:
    """How the tensors `given` differ from a model's own (`state_dict()`), in one line; '' when they fit."""
    def shape(t) -> str:
        return str(list(t.shape)) if hasattr(t, "shape") else type(t).__name__

    reshaped = [k for k in own if k in given and shape(own[k]) != shape(given[k])]
    missing = [k for k in own if k not in given]
    unknown = [k for k in given if k not in own]
    parts = []
    if reshaped:
        k = reshaped[0]
        more = f" (and {len(reshaped) - 1} more tensors of other shapes)" if len(reshaped) > 1 else ""
        parts.append(f"{k} is {shape(given[k])} in the checkpoint, {shape(own[k])} in the model{more}")
    if missing:
        parts.append(f"the checkpoint lacks {len(missing)} of the model's {len(own)} tensors ({missing[0]}, …)")
    if unknown:
        parts.append(f"it holds {len(unknown)} tensors the model does not have ({unknown[0]}, …)")
    return "; ".join(parts)


def load_weights(model: nn.Module, path: str | Path, what: str) -> None:
    """Load the model weights of the checkpoint `path` (a model checkpoint or a training state) into `model`;
    DataError naming `what` (the config key that named the file) and `path` when it holds none or they do not
    fit."""
    ck = load_checkpoint(path)
    if not isinstance(ck, dict) or not isinstance(ck.get("model"), dict):
        raise DataError(f"{what}: {path}: not a bcrdist checkpoint (no model weights)")
    try:
        load_model_state(model, ck["model"])
    except WeightsMismatch as exc:
        raise DataError(f"{what}: {path}: {exc}; {RUN_MODEL}") from None


def save_model(path: str | Path, model: nn.Module, **meta) -> Path:
    """Write `model` (a `ScatteringModel`, possibly wrapped by DDP / torch.compile) as a model checkpoint,
    atomically, with the plain values `meta` (e.g. config=…, source=…); call it on one rank only."""
    inner = unwrap(model)
    return atomic_save({"format": MODEL_FORMAT, "version": __version__, "model": model_state(inner),
                        "model_config": inner.record(), **meta}, path)


def model_from_checkpoint(ck, where) -> ScatteringModel:
    """The model a loaded checkpoint `ck` holds (the registered network its `model_config` records, with its
    weights and normalisation), on the CPU; DataError naming `where` when `ck` is not a model checkpoint."""
    if not isinstance(ck, dict) or "model_config" not in ck or "model" not in ck:
        raise DataError(f"{where}: not a bcrdist model checkpoint (no model_config/model)")
    try:
        model = ScatteringModel.from_record(ck["model_config"], f"{where}: model_config")
    except (KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{where}: malformed model_config ({type(exc).__name__}: {one_line(exc)})") from None
    try:
        load_model_state(model, ck["model"])
    except WeightsMismatch as exc:
        raise DataError(f"{where}: {exc}; the model is the one its model_config describes") from None
    except (RuntimeError, AttributeError) as exc:
        raise DataError(f"{where}: the weights do not fit the model_config ({one_line(exc)})") from None
    return model


def load_model(checkpoint, device="cpu", with_meta: bool = False):
    """A `ScatteringModel` (the registered network `model_config` records) in eval mode with the weights and
    normalisation stored in `checkpoint` (with `with_meta` also {"seed", "config", "provenance"} of the run
    that wrote it).
    `checkpoint`: a checkpoint file, or a `bcrdist export` directory or its model.json / model.safetensors."""
    # the export module reads checkpoints itself, so it is imported here rather than at the top
    from bcrdist.models.export import is_export, load_exported

    if is_export(checkpoint):
        return load_exported(checkpoint, device, with_meta)
    ck = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ck, checkpoint)
    model.to(device).eval()
    if with_meta:
        return model, {"seed": (ck.get("config") or {}).get("seed", 0), "config": ck.get("config"),
                       "provenance": ck.get("provenance")}
    return model
