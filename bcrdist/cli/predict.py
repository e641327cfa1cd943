"""`bcrdist predict --checkpoint CKPT --input FILE.h5 --out PRED.h5`: η predicted by a trained checkpoint
(`bcrdist.load_model(...).predict_eta`) for an HDF5 file holding `measure` (N, Ns, Nd) (and `measure_imag` when the model uses it) — the original's layout — or for a
bcrdist data-set directory.
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
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--input", required=True, help="HDF5 file with 'measure' (N, Ns, Nd), or a data-set directory")
    p.add_argument("--out", required=True, help="HDF5 file to write ('pred' (N, Nt, Nr) in physical units)")
    p.add_argument("--batch-size", type=int, default=256)


def _read_measure(path: Path, use_imag: bool) -> tuple[np.ndarray, np.ndarray | None]:
    if path.is_dir():
        from bcrdist.data.dataset import ShardedDataset
        ds = ShardedDataset(path, shuffle=False, exact=True, batch_size=1024,
                            datasets=["measure"] + (["measure_imag"] if use_imag else []))
        parts = [b for b in ds]
        measure = np.concatenate([b["measure"].numpy() for b in parts])
        imag = np.concatenate([b["measure_imag"].numpy() for b in parts]) if use_imag else None
        return measure, imag
    try:
        with h5py.File(path, "r") as f:
            if "measure" not in f:
                raise DataError(f"{path}: no dataset 'measure' (expected (N, Ns, Nd))")
            measure = f["measure"][()]
            imag = f["measure_imag"][()] if use_imag and "measure_imag" in f else None
    except OSError as exc:
        raise DataError(f"{path}: cannot read as HDF5 ({exc})") from None
    if use_imag and imag is None:
        raise DataError(f"{path}: the model needs 'measure_imag' as well")
    return measure, imag


def run_predict(args: argparse.Namespace) -> int:
    model = load_model(args.checkpoint)
    measure, imag = _read_measure(Path(args.input), model.use_imag)
    if measure.ndim != 3 or measure.shape[1:] != (model.net.n_input[0], model.net.n_input[1] // (2 if model.use_imag else 1)):
        raise DataError(f"{args.input}: 'measure' has shape {measure.shape}, the model expects "
                        f"(N, {model.net.n_input[0]}, {model.net.n_input[1] // (2 if model.use_imag else 1)})")
    if not np.isfinite(measure).all():
        raise DataError(f"{args.input}: 'measure' contains NaN or inf")
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
