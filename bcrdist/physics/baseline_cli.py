"""`bcrdist baseline --data DIR [--split test] [--val-split val] [--noise PERCENT] [--out FILE.json]`

The linear baseline of `bcrdist.physics.baseline`: Tikhonov-regularised Born inversion of the far field F,
λ chosen on a validation split (by default of the same data set; `--val-data` names another one, e.g. the
in-distribution set when DIR is an out-of-distribution test set, so that the baseline learns no more from the
test family than BCR-Net does). Reports the metrics in the layout of `bcrdist evaluate`'s metrics.json plus the
chosen λ. Noise (`--noise`) is applied to validation and evaluation far fields alike: the regularisation is
tuned for the noise level, as one would in practice.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from bcrdist.data.format import read_manifest
from bcrdist.data.reader import ShardedDataset
from bcrdist.errors import ConfigError, DataError

REQUIRED = ("farfield", "coe")


def add_arguments(p: argparse.ArgumentParser) -> None:
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


def operator_settings(manifest) -> dict:
    """{k, Na, Nr, polar_radius} of a generated data set, from its manifest; DataError if absent/inconsistent."""
    missing = [d for d in REQUIRED if d not in manifest.datasets]
    if missing:
        raise DataError(f"{manifest.root}: no {' or '.join(repr(m) for m in missing)} dataset; the Born baseline "
                        f"needs the complex far field F[obs, src] and the polar target that `bcrdist generate` "
                        f"writes")
    cfg = (manifest.provenance or {}).get("config") or {}
    try:
        k = float(cfg["k_over_pi"]) * math.pi
        radius = float(cfg["polar_radius"]) * float(cfg.get("box", 1.0))
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{manifest.path}: provenance.config lacks k_over_pi/polar_radius (not made by "
                        f"`bcrdist generate`?)") from None
    na, na2 = manifest.datasets["farfield"].shape
    nt, nr = manifest.datasets["coe"].shape
    if na != na2 or nt != na:
        raise DataError(f"{manifest.root}: farfield {(na, na2)} and coe {(nt, nr)} do not share Na angles")
    if not np.iscomplexobj(np.zeros(0, dtype=manifest.datasets["farfield"].dtype)):
        raise DataError(f"{manifest.root}: 'farfield' must be complex, got {manifest.datasets['farfield'].dtype}")
    return {"k": k, "Na": int(na), "Nr": int(nr), "polar_radius": radius}


def iterate(path, split, batch_size: int = 256):
    """Batches (F complex (B, Na, Na), coe (B, Nt, Nr), index (B,)) of a split ('all': every sample)."""
    reader = ShardedDataset(path, split=None if str(split) == "all" else split, shuffle=False, exact=True,
                            batch_size=batch_size, datasets=list(REQUIRED))
    for batch in reader:
        yield batch["farfield"].numpy(), batch["coe"].numpy(), batch["index"].numpy()


def load(path, split, batch_size: int = 256):
    """The whole split at once: (F, coe, index)."""
    parts = list(iterate(path, split, batch_size))
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


def run_baseline(data, split="test", val_data=None, val_split="val", noise=0.0, seed=0, entries="farfield",
                 norm="area", lam=None, grid=49, out_scale=None, batch_size=256) -> dict:
    """Fit λ (unless given) and evaluate; returns the result document (see module docstring)."""
    from bcrdist.compat.transforms import output_scale
    from bcrdist.physics.baseline import BornInversion, noisy_far_field, sample_errors, summarize

    start = time.monotonic()
    if noise < 0:
        raise ConfigError(f"--noise: must be ≥ 0 (percent), got {noise}")
    if grid < 2:
        raise ConfigError(f"--grid: need at least 2 λ candidates, got {grid}")
    val_data = data if val_data is None else val_data
    settings = operator_settings(read_manifest(data))
    val_manifest = read_manifest(val_data)
    val_settings = operator_settings(val_manifest)
    if any(not math.isclose(settings[key], val_settings[key], rel_tol=1e-9) for key in settings):
        raise DataError(f"{val_data} and {data} were generated with different operators ({val_settings} vs "
                        f"{settings}); λ must be chosen on data of the same k, Na, Nr and polar radius")
    scale_source = "--out-scale"
    if out_scale is None:
        stats = (val_manifest.statistics or {}).get("coe")
        if stats is not None:
            out_scale, scale_source = output_scale(stats["min"], stats["max"]), f"statistics of {val_data}"
    elif not (math.isfinite(out_scale) and out_scale > 0):
        raise ConfigError(f"--out-scale: must be finite and > 0, got {out_scale}")
    inv = BornInversion(settings["k"], settings["Na"], settings["Nr"], settings["polar_radius"], entries=entries,
                        norm=norm)
    doc = {"method": "born-tikhonov", "data": str(data), "split": str(split), "noise": noise, "seed": seed,
           "entries": entries, "norm": norm, "operator": settings}
    if lam is None:
        F_val, coe_val, idx_val = load(val_data, val_split, batch_size)
        if out_scale is None:   # no statistics stored: the validation targets' range
            out_scale = output_scale(coe_val.min(), coe_val.max())
            scale_source = f"range of {val_data} split {val_split}"
        lam = inv.fit_lambda(noisy_far_field(F_val, noise, idx_val, seed), coe_val,
                             inv.lambda_grid(grid))
        lambdas, errors = inv.val_curve
        best = int(np.argmin(errors))
        doc.update({"val_data": str(val_data), "val_split": str(val_split),
                    "val_weighted": float(errors[best]), "val_count": int(len(idx_val)),
                    "lambda_curve": {"lambda_relative": (lambdas / inv.sigma_max ** 2).tolist(),
                                     "val_weighted": errors.tolist()}})
    elif not (math.isfinite(lam) and lam >= 0):
        raise ConfigError(f"--lambda: must be finite and ≥ 0, got {lam}")
    elif out_scale is None:
        raise DataError(f"{val_manifest.path}: no statistics for 'coe' to set the PSNR units; run "
                        f"`bcrdist stats {val_data}` or pass --out-scale")
    doc["out_scale"], doc["out_scale_source"] = float(out_scale), scale_source
    errors = {"weighted": [], "rel_l2": [], "psnr": []}
    for F, coe, idx in iterate(data, split, batch_size):
        pred = inv.predict(noisy_far_field(F, noise, idx, seed), lam)
        for name, e in sample_errors(pred, coe, out_scale).items():
            errors[name].append(e)
    doc["lambda"] = float(lam)
    doc["lambda_relative"] = float(lam / inv.sigma_max ** 2)
    doc["metrics"] = summarize({name: np.concatenate(e) for name, e in errors.items()})
    doc["seconds"] = time.monotonic() - start
    return doc


def run(args: argparse.Namespace) -> int:
    doc = run_baseline(args.data, args.split, args.val_data, args.val_split, args.noise, args.seed, args.entries,
                       args.norm, args.lam, args.grid, args.out_scale, args.batch_size)
    m = doc["metrics"]
    summary = (f"{args.split}: {m['weighted']['count']} samples, Born baseline (λ = {doc['lambda']:.3g} = "
               f"{doc['lambda_relative']:.2g}·σ_max²), noise {args.noise:g} %: radius-weighted relative error "
               f"{m['weighted']['mean']:.4f} (max {m['weighted']['max']:.4f}), relative L2 "
               f"{m['rel_l2']['mean']:.4f}, PSNR {m['psnr']['mean']:.1f} dB")
    text = json.dumps(doc, indent=2)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        print(f"{summary}; written to {out}")
    else:
        print(summary, file=sys.stderr)
        print(text)
    return 0
