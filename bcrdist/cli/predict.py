"""`bcrdist predict --checkpoint CKPT --input IN --out PRED.h5 [--split NAME] [--allow-physics-mismatch]`: η
predicted by a trained checkpoint or `bcrdist export` directory (`bcrdist.train.prediction.predict`), for any
model: IN is an HDF5 file (per-sample datasets, or the PyTorch port's `farfield.real`/`farfield.imag` columns),
a bcrdist data-set folder (all samples or `--split NAME`; its physics checked against the training data's) or a
`.npy` array. The output holds `pred`, `index` and the target's grid (`theta`/`rho` or `x`/`y`).
"""

from __future__ import annotations

import argparse

from bcrdist.errors import BcrdistError
from bcrdist.fileio import one_line
from bcrdist.train.physics_check import ALLOW_FLAG
from bcrdist.train.prediction import predict


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a model checkpoint (best.pt) or a `bcrdist export` "
                   "directory")
    p.add_argument("--input", required=True, help="what holds the model's input: an HDF5 file ('measure' (N, Ns, "
                   "Nd), a complex 'farfield' (N, n_obs, n_inc), or the port's 'farfield.real'/'farfield.imag' "
                   "columns), a data-set directory, or a .npy array (complex when the model reads both parts)")
    p.add_argument("--out", required=True, help="HDF5 file to write ('pred' (N, Nt, Nr) or (N, H, W) in physical "
                   "units, 'index', and the grid's coordinates)")
    p.add_argument("--split", help="with a data-set directory: a split name or file ('all', the default: every "
                   "sample)")
    p.add_argument(ALLOW_FLAG, action="store_true", help="predict on a data set whose recorded physics (k, box, "
                   "grid, sign) differ from the training data's; the output records the differences")
    p.add_argument("--batch-size", type=int, default=256)


def run_predict(args: argparse.Namespace) -> int:
    try:
        done = predict(args.checkpoint, args.input, args.out, split=args.split, batch_size=args.batch_size,
                       allow_physics_mismatch=args.allow_physics_mismatch)
    except FileNotFoundError:
        raise
    except OSError as exc:
        # writing the output failed (disk full, permissions): one line
        raise BcrdistError(one_line(exc)) from None
    for note in done.notes:
        print(f"note: {note}")
    print(f"wrote {done.count} predictions {done.shape} ({done.layout} η) to {done.out}")
    return 0
