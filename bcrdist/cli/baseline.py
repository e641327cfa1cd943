"""`bcrdist baseline --data DIR [--split test] [--val-split val] [--noise PERCENT --noise-model M] [--method
{tikhonov,lsqr}] [--damp D] [--out FILE.json] [--json]`: the Born inversion baseline (`bcrdist.train.baseline`) on a
split: Tikhonov-regularised (default), λ chosen on validation under the same noise, for Fan's polar layout and
the far-field/image layout; or the study's damped least squares (`--method lsqr --damp D`, far-field/image
layout; `--norm`, `--lambda`, `--grid` are Tikhonov's and refused with it, `--calibrate` applies to both)
(`--k --box [--angles --image-points --image-index --sign]` for a converted file that records no grid).
It prints a one-line summary; the full result (per-split metrics, every sample's errors, λ, grid, fit
diagnostics) is JSON, written with `--out` or printed with `--json`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bcrdist.cli.evaluate import percent
from bcrdist.fileio import atomic_write_bytes, json_safe, to_json
from bcrdist.noise import MODELS
from bcrdist.train.baseline import evaluate_born_baseline


def add_baseline_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="data set to evaluate on (needs 'farfield' and 'coe' or 'image')")
    p.add_argument("--split", default="test", help="split name or file ('all' for every sample); default test")
    p.add_argument("--val-data", default=None, metavar="DIR",
                   help="data set whose validation split chooses λ (default: --data)")
    p.add_argument("--val-split", default="val", help="split of --val-data that chooses λ (default val)")
    p.add_argument("--noise", type=percent, default=0.0, metavar="PERCENT",
                   help="measurement noise level δ on the far field, in percent (default 0), on the validation "
                        "and evaluated splits alike")
    p.add_argument("--noise-model", choices=MODELS, default="fan",
                   help="noise model (bcrdist.noise): fan X(1 + δε) on Re F and Im F separately (default), complex "
                        "(1 + δZ)·F, additive F + δ‖F‖/√n·Z")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the noise draws (default 0; a run's seed gives the draws of its evaluation)")
    p.add_argument("--entries", choices=("farfield", "measure"), default="farfield",
                   help="use all of F (default) or only the even offsets that BCR-Net's `measure` holds")
    p.add_argument("--method", choices=("tikhonov", "lsqr"), default="tikhonov",
                   help="tikhonov: Tikhonov-regularised Born inversion, λ chosen on validation (default); lsqr: the "
                        "study's damped least squares Re lsqr(A, F, damp) (needs --damp; far-field/image layout)")
    p.add_argument("--damp", type=float, default=None, metavar="D",
                   help="damping d of --method lsqr (the study's Born γ = 1: 1; its CNNB: 0.1)")
    p.add_argument("--norm", choices=("area", "euclidean"), default=None,
                   help="Tikhonov regulariser: area-weighted L2 norm of η (default) or plain coefficient norm")
    p.add_argument("--lambda", dest="lam", type=float, default=None,
                   help="Tikhonov: use this λ instead of choosing it on the validation split")
    p.add_argument("--grid", type=int, default=None,
                   help="Tikhonov: λ candidates, log-spaced over σ_max²·[1e-12, 1] (default 49)")
    p.add_argument("--out-scale", type=float, default=None,
                   help="PSNR units: divide images by this, as BCR-Net's training units (default: half the "
                        "coe range in --val-data's statistics, as training uses; without statistics, of "
                        "the validation split)")
    p.add_argument("--batch-size", type=int, default=256, help="samples per evaluation batch")
    g = p.add_argument_group("grid of a far-field/image data set that records none (a converted port file)")
    g.add_argument("--k", type=float, default=None, help="wavenumber in absolute units (the port's κ = 16)")
    g.add_argument("--box", type=float, default=None,
                   help="side of the square the image covers, centred at 0 (the port's [−1, 1]²: 2)")
    g.add_argument("--angles", choices=("endpoint", "periodic"), default=None,
                   help="direction grid: endpoint −π + 2πj/(Na − 1) (default for converted files) or periodic 2πj/Na")
    g.add_argument("--image-points", choices=("nodes", "centres"), default=None,
                   help="pixels at the nodes (both edges; default for converted files) or the cell centres")
    g.add_argument("--image-index", choices=("xy", "yx"), default=None,
                   help="image[i, j] = η(x_i, y_j) (xy, default) or η(x_j, y_i)")
    g.add_argument("--sign", choices=("auto", "-1", "+1"), default="auto",
                   help="far-field sign convention: -1 e^{−ik x̂·y} (ours), +1 its conjugate (the port's Born "
                        "kernel e^{+iκ(x̂−d)·y}), auto: recorded, else detected on the validation split")
    g.add_argument("--calibrate", action="store_true",
                   help="divide the far fields by the complex factor that best fits them to the Born far field of "
                        "the validation images (data normalised otherwise than γk²)")
    p.add_argument("--out", default=None, metavar="FILE.json",
                   help="write the result (metrics, λ, grid, fit diagnostics) as JSON to this file")
    p.add_argument("--json", action="store_true",
                   help="print the result as JSON on stdout instead of the one-line summary")


def run_baseline(args: argparse.Namespace) -> int:
    options = {"k": args.k, "box": args.box, "angles": args.angles, "image_points": args.image_points,
               "image_index": args.image_index, "sign": None if args.sign == "auto" else int(args.sign)}
    doc = evaluate_born_baseline(args.data, args.split, args.val_data, args.val_split, args.noise, args.seed,
                                 args.entries, norm=args.norm, lam=args.lam, grid=args.grid, out_scale=args.out_scale,
                                 batch_size=args.batch_size, grid_options=options, calibrate=args.calibrate,
                                 noise_model=args.noise_model, method=args.method, damp=args.damp)
    m = doc["metrics"]
    weighted = (f"radius-weighted relative error {m['weighted']['mean']:.4f} (max {m['weighted']['max']:.4f}), "
                if "weighted" in m else "")
    fitted = (f"damped least squares, damp = {doc['damp']:g}" if args.method == "lsqr" else
              f"λ = {doc['lambda']:.3g} = {doc['lambda_relative']:.2g}·σ_max²")
    summary = (f"{args.split}: {m['rel_l2']['count']} samples, Born baseline ({fitted}), noise {args.noise:g} % "
               f"({args.noise_model}): {weighted}relative L2 "
               f"{m['rel_l2']['mean']:.4f}, relative L1 {m['rel_l1']['mean']:.4f}, PSNR {m['psnr']['mean']:.1f} dB "
               f"(pixel max {m['psnr']['pixel_max']:g})")
    # one key per line but each list on one line: the per-sample errors ("samples") stay a few lines long
    text = to_json(json_safe(doc))
    if args.out:
        out = Path(args.out)
        atomic_write_bytes(out, (text + "\n").encode())
        summary = f"{summary}; written to {out}"
    if args.json:
        # stdout holds the JSON document alone, for a pipe; the summary goes to stderr
        print(summary, file=sys.stderr)
        print(text)
    else:
        print(summary)
    return 0
