"""The Born-inversion baseline evaluated on a data set (`bcrdist baseline`).

The linear baseline of `bcrdist.physics.born`: Tikhonov-regularised Born inversion of the far field F,
λ chosen on a validation split (by default of the same data set; `val_data` names another one, e.g. the
in-distribution set when the data are an out-of-distribution test set, so that the baseline learns no more
from the test family than BCR-Net does). Reports the metrics in the layout of `bcrdist evaluate`'s
metrics.json plus the chosen λ. Noise is applied to validation and evaluation far fields alike: the
regularisation is tuned for the noise level, as one would in practice.
"""

from __future__ import annotations

import math
import time

import numpy as np

from bcrdist.data.dataset import ShardedDataset
from bcrdist.data.format import read_manifest
from bcrdist.errors import ConfigError, DataError
from bcrdist.metrics import sample_statistics, summarize
from bcrdist.physics.born import BornInversion, noisy_far_field, sample_errors
from bcrdist.transforms import output_scale

REQUIRED = ("farfield", "coe")


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


def evaluate_born_baseline(data, split="test", val_data=None, val_split="val", noise=0.0, seed=0, entries="farfield",
                 norm="area", lam=None, grid=49, out_scale=None, batch_size=256) -> dict:
    """Fit λ (unless given) and evaluate; returns the result document (see module docstring)."""
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
    doc["metrics"] = summarize({name: sample_statistics(name, np.concatenate(e)) for name, e in errors.items()})
    doc["seconds"] = time.monotonic() - start
    return doc
