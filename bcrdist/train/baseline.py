"""The Born-inversion baseline evaluated on a data set (`bcrdist baseline`).

The linear baseline of `bcrdist.physics.born`: Tikhonov-regularised Born inversion of the far field F,
λ chosen on a validation split (by default of the same data set; `val_data` names another one, e.g. the
in-distribution set when the data are an out-of-distribution test set, so that the baseline learns no more
from the test family than BCR-Net does). Reports the metrics in the layout of `bcrdist evaluate`'s
metrics.json plus the chosen λ. Noise (a model of `bcrdist.noise` at a level in percent,
`bcrdist.physics.born.noisy_far_field`) is applied to validation and evaluation far fields alike: the
regularisation is tuned for the noise, as one would in practice. Each sample's draw is the one the data
pipeline makes for the evaluation splits, so with the same seed `bcrdist evaluate` of a far-field model sees the
same noisy far field.

Two layouts: Fan's (`farfield` + polar `coe`: radius-weighted error, relative L2 and L1, PSNR; λ on the
weighted error) and the far-field/image layout (`farfield` + Cartesian `image`: relative L2 and L1, PSNR; λ on
relative L2). The grid (`bcrdist.data.grid.grid_from_manifest`) comes from, in this order: the manifest's `grid`
record; the generator's config in `provenance.config`; for a converted far-field/image file, the shapes of its
datasets and the options (`GRID_OPTIONS`: k, angles, box, image_points, image_index, sign). An option that
contradicts the record is refused. On the Cartesian layout an unknown sign is detected on the validation split
(`bcrdist.physics.born.detect_sign`), `born_fit` (how well the Born far field of the validation images explains
the data) is reported, and `calibrate` divides the data by its fitted complex factor (for data whose far-field
normalisation is not γk²; applied after the noise, as processing of a measurement).
"""

from __future__ import annotations

import math
import time

import numpy as np

from bcrdist.data.dataset import ShardedDataset
from bcrdist.data.format import read_manifest
from bcrdist.errors import ConfigError, DataError
from bcrdist.noise import check_model
from bcrdist.metrics import PIXEL_MAX, REPORTED_FOR, SELECTION_DEFAULT, sample_statistics, summarize
from bcrdist.physics.born import (BornInversion, CartesianBornInversion, born_fit, detect_sign, noisy_far_field,
                                  sample_errors)
from bcrdist.data.grid import TARGET_DATASET, grid_from_manifest, same_operator
from bcrdist.transforms import output_scale

FIT_SAMPLES = 64         # validation samples of the Born fit


def operator_settings(manifest) -> dict:
    """{k, Na, Nr, polar_radius} of a data set with a polar target, from its manifest (the `operator` entry of
    the polar baseline's result); DataError if absent/inconsistent."""
    grid = grid_from_manifest(manifest)
    if grid.cartesian:
        raise DataError(f"{manifest.root}: the target is Cartesian ('image'); see grid_from_manifest")
    return {"k": grid.k, "Na": grid.n_obs, "Nr": grid.polar_nr, "polar_radius": grid.polar_radius}


def iterate(path, split, batch_size: int = 256, target: str = "coe"):
    """Batches (F complex (B, n_obs, n_inc), target (B, …), index (B,)) of a split ('all': every sample)."""
    reader = ShardedDataset(path, split=None if str(split) == "all" else split, shuffle=False, exact=True,
                            batch_size=batch_size, datasets=["farfield", target])
    for batch in reader:
        yield batch["farfield"].numpy(), batch[target].numpy(), batch["index"].numpy()


def load(path, split, batch_size: int = 256, target: str = "coe"):
    """The whole split at once: (F, target, index)."""
    parts = list(iterate(path, split, batch_size, target))
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


def _fit_record(fits: dict) -> dict:
    return {str(sign): {"score": f["score"], "scale": [f["scale"].real, f["scale"].imag]} for sign, f in fits.items()}


def evaluate_born_baseline(data, split="test", val_data=None, val_split="val", noise=0.0, seed=0, entries="farfield",
                           norm="area", lam=None, grid=49, out_scale=None, batch_size=256, grid_options=None,
                           calibrate=False, noise_model="fan") -> dict:
    """Fit λ (unless given) and evaluate; returns the result document (see module docstring).

    `noise` percent of `noise_model` (`bcrdist.noise.MODELS`), drawn per sample from `seed`.

    `grid_options`: {GRID_OPTIONS key: value} for data sets that do not record their grid (sign −1, +1 or None
    = detect); `calibrate`: divide the far fields by the complex factor of the Born fit on the validation split.
    """
    start = time.monotonic()
    if noise < 0:
        raise ConfigError(f"--noise: must be ≥ 0 (percent), got {noise}")
    check_model(noise_model, "--noise-model")
    if grid < 2:
        raise ConfigError(f"--grid: need at least 2 λ candidates, got {grid}")
    val_data = data if val_data is None else val_data
    geometry = grid_from_manifest(read_manifest(data), grid_options)
    val_manifest = read_manifest(val_data)
    val_geometry = grid_from_manifest(val_manifest, grid_options)
    kind = geometry.target
    target_name = TARGET_DATASET[kind]
    if not same_operator(geometry, val_geometry):
        what = "k, Na, Nr and polar radius" if kind == "polar" else "k, angle grids and image grid"
        raise DataError(f"{val_data} and {data} were generated with different operators "
                        f"({val_geometry.to_record()} vs {geometry.to_record()}); λ must be chosen on data of the "
                        f"same {what}")
    if kind == "polar" and calibrate:
        raise ConfigError("--calibrate: applies to the Cartesian (far-field/image) layout only")
    scale_source = "--out-scale"
    if out_scale is None:
        stats = (val_manifest.statistics or {}).get(target_name)
        if stats is not None:
            out_scale, scale_source = output_scale(stats["min"], stats["max"]), f"statistics of {val_data}"
    elif not (math.isfinite(out_scale) and out_scale > 0):
        raise ConfigError(f"--out-scale: must be finite and > 0, got {out_scale}")
    metric = SELECTION_DEFAULT[kind]
    doc = {"method": "born-tikhonov", "data": str(data), "split": str(split), "noise": noise,
           "noise_model": noise_model, "seed": seed, "entries": entries, "norm": norm}
    need_val = lam is None or (kind == "cartesian" and (geometry.farfield_sign is None or calibrate))
    if need_val:
        F_val, target_val, idx_val = load(val_data, val_split, batch_size, target_name)
        F_val = noisy_far_field(F_val, noise, idx_val, seed, noise_model)
    factor = 1.0
    if kind == "polar":
        settings = {"k": geometry.k, "Na": geometry.n_obs, "Nr": geometry.polar_nr, "polar_radius": geometry.polar_radius}
        doc["operator"] = settings
        inv = BornInversion(settings["k"], settings["Na"], settings["Nr"], settings["polar_radius"], entries=entries,
                            norm=norm)
    else:
        if entries != "farfield":
            raise ConfigError("--entries: 'measure' applies to Fan's polar layout only")
        if need_val:
            fit_f, fit_img = F_val[:FIT_SAMPLES], target_val[:FIT_SAMPLES]
            if geometry.farfield_sign is None:
                try:
                    sign, fits = detect_sign(geometry, fit_f, fit_img)
                except ValueError as exc:
                    raise DataError(f"{val_data}: {exc}; pass --sign") from None
                geometry = geometry.with_sign(sign)
                doc["sign_source"] = f"detected on {val_data} split {val_split}"
            else:
                fits = born_fit(geometry, fit_f, fit_img)
                doc["sign_source"] = "recorded"
            doc["born_fit"] = _fit_record(fits)
            if calibrate:
                factor = fits[geometry.farfield_sign]["scale"]
                doc["calibration"] = [factor.real, factor.imag]
                F_val = F_val / factor
        inv = CartesianBornInversion(geometry, norm=norm)
    doc["grid"] = geometry.to_record()
    if lam is None:
        if out_scale is None:   # no statistics stored: the validation targets' range
            out_scale = output_scale(target_val.min(), target_val.max())
            scale_source = f"range of {val_data} split {val_split}"
        lam = inv.fit_lambda(F_val, target_val, inv.lambda_grid(grid))
        lambdas, errors = inv.val_curve
        best = int(np.argmin(errors))
        doc.update({"val_data": str(val_data), "val_split": str(val_split),
                    f"val_{metric}": float(errors[best]), "val_count": int(len(idx_val)),
                    "lambda_curve": {"lambda_relative": (lambdas / inv.sigma_max ** 2).tolist(),
                                     f"val_{metric}": errors.tolist()}})
    elif not (math.isfinite(lam) and lam >= 0):
        raise ConfigError(f"--lambda: must be finite and ≥ 0, got {lam}")
    elif out_scale is None:
        raise DataError(f"{val_manifest.path}: no statistics for {target_name!r} to set the PSNR units; run "
                        f"`bcrdist stats {val_data}` or pass --out-scale")
    doc["out_scale"], doc["out_scale_source"] = float(out_scale), scale_source
    errors = {name: [] for name in REPORTED_FOR[kind]}
    for F, target, idx in iterate(data, split, batch_size, target_name):
        pred = inv.predict(noisy_far_field(F, noise, idx, seed, noise_model) / factor, lam)
        for name, e in sample_errors(pred, target, out_scale, kind).items():
            errors[name].append(e)
    doc["lambda"] = float(lam)
    doc["lambda_relative"] = float(lam / inv.sigma_max ** 2)
    doc["metrics"] = summarize({name: sample_statistics(name, np.concatenate(e)) for name, e in errors.items()},
                               pixel_max=PIXEL_MAX)
    doc["seconds"] = time.monotonic() - start
    return doc
