"""`bcrdist baseline --data DIR [--split test] [--val-split val] [--noise PERCENT] [--out FILE.json]`: the
Tikhonov-regularised Born inversion baseline (`bcrdist.train.baseline`) on a split."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bcrdist.fileio import atomic_write_bytes
from bcrdist.train.baseline import evaluate_born_baseline


def add_baseline_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="data set to evaluate on (needs 'farfield' and 'coe')")
    p.add_argument("--split", default="test", help="split name or file ('all' for every sample); default test")
    p.add_argument("--val-data", default=None, metavar="DIR",
                   help="data set whose validation split chooses λ (default: --data)")
    p.add_argument("--val-split", default="val", help="split of --val-data that chooses λ (default val)")
    p.add_argument("--noise", type=float, default=0.0, metavar="PERCENT",
                   help="multiplicative noise X(1 + σε) on Re F and Im F, in percent (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise draws (default 0)")
    p.add_argument("--entries", choices=("farfield", "measure"), default="farfield",
                   help="use all of F (default) or only the even offsets that BCR-Net's `measure` holds")
    p.add_argument("--norm", choices=("area", "euclidean"), default="area",
                   help="regulariser: area-weighted L2 norm of η (default) or plain coefficient norm")
    p.add_argument("--lambda", dest="lam", type=float, default=None,
                   help="use this λ instead of choosing it on the validation split")
    p.add_argument("--grid", type=int, default=49, help="λ candidates, log-spaced over σ_max²·[1e-12, 1]")
    p.add_argument("--out-scale", type=float, default=None,
                   help="PSNR units: divide images by this, as BCR-Net's training units (default: half the "
                        "coe range in --val-data's statistics, as training uses; without statistics, of "
                        "the validation split)")
    p.add_argument("--batch-size", type=int, default=256, help="samples per evaluation batch")
    p.add_argument("--out", default=None, metavar="FILE.json", help="write the result here (default: stdout)")


def run_baseline(args: argparse.Namespace) -> int:
    doc = evaluate_born_baseline(args.data, args.split, args.val_data, args.val_split, args.noise, args.seed, args.entries,
                                 args.norm, args.lam, args.grid, args.out_scale, args.batch_size)
    m = doc["metrics"]
    summary = (f"{args.split}: {m['weighted']['count']} samples, Born baseline (λ = {doc['lambda']:.3g} = "
               f"{doc['lambda_relative']:.2g}·σ_max²), noise {args.noise:g} %: radius-weighted relative error "
               f"{m['weighted']['mean']:.4f} (max {m['weighted']['max']:.4f}), relative L2 "
               f"{m['rel_l2']['mean']:.4f}, PSNR {m['psnr']['mean']:.1f} dB")
    text = json.dumps(doc, indent=2)
    if args.out:
        out = Path(args.out)
        atomic_write_bytes(out, (text + "\n").encode())
        print(f"{summary}; written to {out}")
    else:
        print(summary, file=sys.stderr)
        print(text)
    return 0
