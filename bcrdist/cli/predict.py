"""`bcrdist predict --checkpoint CKPT --input FILE.h5 --out PRED.h5`: η predicted by a trained checkpoint
(`bcrdist.load_model(...).predict_eta`) on the grid of its target, for an HDF5 file or a bcrdist data-set
directory holding the dataset the model reads: `measure` (N, Ns, Nd) (and `measure_imag` when the model uses
it) — the original's layout — or the complex far field `farfield` (N, n_obs, n_inc) of a far-field model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import numpy as np
import torch

from bcrdist.errors import BcrdistError, DataError
from bcrdist.fileio import atomic_write_held, one_line
from bcrdist.models.checkpoint import load_model


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a model checkpoint (best.pt) or a `bcrdist export` "
                   "directory")
    p.add_argument("--input", required=True, help="HDF5 file with the dataset the model reads ('measure' (N, Ns, Nd) "
                   "or 'farfield' (N, n_obs, n_inc)), or a data-set directory")
    p.add_argument("--out", required=True, help="HDF5 file to write ('pred' (N, Nt, Nr) or (N, H, W) in physical "
                   "units)")
    p.add_argument("--batch-size", type=int, default=256)


def model_datasets(model) -> tuple[str, str | None]:
    """The datasets a model reads: its input's dataset (`farfield` for a part of the complex far field) and, on
    Fan's layout with use_imag, `measure_imag`."""
    name = model.input.removesuffix(".real").removesuffix(".imag")
    second = "measure_imag" if model.use_imag and not model.input.endswith((".real", ".imag")) else None
    return name, second


def _read_inputs(path: Path, names: list[str]) -> list[np.ndarray]:
    if path.is_dir():
        from bcrdist.data.dataset import ShardedDataset
        ds = ShardedDataset(path, shuffle=False, exact=True, batch_size=1024, datasets=names)
        parts = [b for b in ds]
        return [np.concatenate([b[name].numpy() for b in parts]) for name in names]
    try:
        with h5py.File(path, "r") as f:
            missing = [name for name in names if name not in f]
            if missing:
                raise DataError(f"{path}: no dataset {missing[0]!r}; the model reads {' and '.join(names)}")
            return [f[name][()] for name in names]
    except OSError as exc:
        raise DataError(f"{path}: cannot read as HDF5 ({exc})") from None


def run_predict(args: argparse.Namespace) -> int:
    model = load_model(args.checkpoint)
    name, second = model_datasets(model)
    arrays = _read_inputs(Path(args.input), [name] + ([second] if second else []))
    measure, imag = arrays[0], (arrays[1] if second else None)
    if model.input.endswith(".imag"):
        measure = measure.imag
    ns, nd = model.data_input
    expected = (ns, nd // 2 if model.use_imag else nd)
    if measure.ndim != 3 or measure.shape[1:] != expected:
        raise DataError(f"{args.input}: {name!r} has shape {measure.shape}, the model expects (N, {expected[0]}, "
                        f"{expected[1]})")
    if not np.isfinite(measure).all():
        raise DataError(f"{args.input}: {name!r} contains NaN or inf")
    with torch.no_grad():
        pred = model.predict_eta(measure, imag, batch_size=args.batch_size)
    out = Path(args.out)

    def write(fh) -> None:
        with h5py.File(fh, "w") as f:
            f["pred"] = pred
            f.attrs["checkpoint"] = str(args.checkpoint)

    try:
        atomic_write_held(out, write)
    except OSError as exc:
        raise BcrdistError(one_line(exc)) from None
    print(f"wrote {len(pred)} predictions {pred.shape[1:]} to {out}")
    return 0
