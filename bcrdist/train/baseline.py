"""The Born-inversion baseline evaluated on a data set (`bcrdist baseline`).

The linear baseline: the Born reconstruction of one Born fit (`bcrdist.train.born_fit.fit_born`, its
definition applied by `bcrdist.physics.born_definition.make_inversion`), either the Tikhonov-regularised Born
inversion of the far field F (`method` tikhonov, `bcrdist.physics.born`), λ chosen on a validation split (by
default of the same data set; `val_data` names another one, e.g. the in-distribution set when the data are an
out-of-distribution test set, so that the baseline learns no more from the test family than BCR-Net does), or
the study's damped least squares (`method` lsqr with damping `damp`, `bcrdist.physics.born_lsqr`; the study's
"Born γ = 1" is damp 1). Reports the metrics in the layout of `bcrdist evaluate`'s metrics.json, every
sample's errors as its "samples" ({"index": [...], metric: [...]}, index order; PSNR in dB), plus the
chosen λ (tikhonov) or the damping (lsqr). Noise (a model of `bcrdist.noise` at a level in percent,
`bcrdist.physics.born.noisy_far_field`) is applied to validation and evaluation far fields alike: the
regularisation is tuned for the noise, as one would in practice. Each sample's draw is the one the data
pipeline makes for the evaluation splits, so with the same seed `bcrdist evaluate` of a far-field model sees the
same noisy far field.

Two layouts: Fan's (`farfield` + polar `coe`: radius-weighted error, relative L2 and L1, PSNR; λ on the
weighted error) and the far-field/image layout (`farfield` + Cartesian `image`: relative L2 and L1, PSNR; λ on
relative L2; lsqr: this layout only). The grid (`bcrdist.data.grid.grid_from_manifest`) comes from, in this
order: the manifest's `grid` record; the generator's config in `provenance.config`; for a converted
far-field/image file, the shapes of its datasets and the options (`GRID_OPTIONS`: k, angles, box,
image_points, image_index, sign). An option that contradicts the record is refused. On the Cartesian layout an
unknown sign is detected on the validation split (`bcrdist.physics.born.detect_sign`), `born_fit` (how well
the Born far field of the validation images explains the data) is reported, and `calibrate` (either method)
divides the data by its fitted complex factor (for data whose far-field normalisation is not γk²; applied
after the noise, as processing of a measurement).
"""

from __future__ import annotations

import math
import time

import numpy as np

from bcrdist.data.format import read_manifest
from bcrdist.data.grid import TARGET_DATASET, grid_from_manifest
from bcrdist.errors import ConfigError, DataError
from bcrdist.metrics import PIXEL_MAX, REPORTED_FOR, SELECTION_DEFAULT, sample_statistics, summarize
from bcrdist.physics.born import noisy_far_field, sample_errors
from bcrdist.physics.born_definition import make_inversion
# `load` lives in born_fit since the Born fit moved there; callers still import it from here
from bcrdist.train.born_fit import BornRequest, fit_born, iterate, load  # noqa: F401
from bcrdist.transforms import output_scale


def operator_settings(manifest) -> dict:
    """{k, Na, Nr, polar_radius} of a data set with a polar target, from its manifest (the `operator` entry of
    the polar baseline's result); DataError if absent/inconsistent."""
    grid = grid_from_manifest(manifest)
    if grid.cartesian:
        raise DataError(f"{manifest.root}: the target is Cartesian ('image'); see grid_from_manifest")
    return {"k": grid.k, "Na": grid.n_obs, "Nr": grid.polar_nr, "polar_radius": grid.polar_radius}


def evaluate_born_baseline(data, split="test", val_data=None, val_split="val", noise=0.0, seed=0, entries="farfield",
                           norm=None, lam=None, grid=None, out_scale=None, batch_size=256, grid_options=None,
                           calibrate=False, noise_model="fan", method="tikhonov", damp=None) -> dict:
    """Fit the Born reconstruction (λ unless given; lsqr: at `damp`) and evaluate; returns the result document
    (see module docstring).

    `noise` percent of `noise_model` (`bcrdist.noise.MODELS`), drawn per sample from `seed`. norm (tikhonov):
    area (None) or euclidean; grid (tikhonov): λ candidates (None: 49).

    `grid_options`: {GRID_OPTIONS key: value} for data sets that do not record their grid (sign −1, +1 or None
    = detect); `calibrate`: divide the far fields by the complex factor of the Born fit on the validation split.
    """
    start = time.monotonic()
    if out_scale is not None and not (math.isfinite(out_scale) and out_scale > 0):
        raise ConfigError(f"--out-scale: must be finite and > 0, got {out_scale}")
    val_data = data if val_data is None else val_data
    request = BornRequest(method=method, norm=norm, lam=lam, lambda_grid=grid, damp=damp, entries=entries)
    definition, fit = fit_born(data, request, val_data=val_data, val_split=val_split, noise=noise,
                               noise_model=noise_model, seed=seed, grid_options=grid_options, calibrate=calibrate,
                               batch_size=batch_size)
    geometry = definition.grid
    kind = geometry.target
    target_name = TARGET_DATASET[kind]
    doc = {"method": f"born-{method}", "data": str(data), "split": str(split), "noise": noise,
           "noise_model": noise_model, "seed": seed, "entries": entries, "norm": definition.norm}
    if kind == "polar":
        doc["operator"] = {"k": geometry.k, "Na": geometry.n_obs, "Nr": geometry.polar_nr,
                           "polar_radius": geometry.polar_radius}
    else:
        doc["sign_source"] = fit["sign_source"]
        doc.update({key: fit[key] for key in ("born_fit", "calibration") if key in fit})
    doc["grid"] = geometry.to_record()
    if "val_data" in fit:
        doc.update(val_data=fit["val_data"], val_split=fit["val_split"])
    if fit.get("lambda_source") == "validation":
        metric = SELECTION_DEFAULT[kind]
        doc.update({f"val_{metric}": fit["val_error"], "val_count": fit["val_count"],
                    "lambda_curve": {"lambda_relative": fit["lambda_curve"]["lambda_relative"],
                                     f"val_{metric}": fit["lambda_curve"]["val_error"]}})
    scale_source = "--out-scale"
    if out_scale is None:
        val_manifest = read_manifest(val_data)
        stats = (val_manifest.statistics or {}).get(target_name)
        if stats is not None:
            out_scale, scale_source = output_scale(stats["min"], stats["max"]), f"statistics of {val_data}"
        elif "val_target_range" in fit:      # no statistics stored: the validation targets' range
            out_scale = output_scale(*fit["val_target_range"])
            scale_source = f"range of {val_data} split {val_split}"
        else:
            raise DataError(f"{val_manifest.path}: no statistics for {target_name!r} to set the PSNR units; run "
                            f"`bcrdist stats {val_data}` or pass --out-scale")
    doc["out_scale"], doc["out_scale_source"] = float(out_scale), scale_source
    estimator = make_inversion(definition)
    factor = complex(*fit["calibration"]) if "calibration" in fit else 1.0
    errors = {name: [] for name in REPORTED_FOR[kind]}
    indices = []
    for F, target, idx in iterate(data, split, batch_size, target_name):
        pred = estimator.predict(noisy_far_field(F, noise, idx, seed, noise_model) / factor)
        indices.append(idx)
        for name, e in sample_errors(pred, target, out_scale, kind).items():
            errors[name].append(e)
    if method == "lsqr":
        doc["damp"] = fit["damp"]
    else:
        doc["lambda"], doc["lambda_relative"] = fit["lambda"], fit["lambda_relative"]
    doc["metrics"] = summarize({name: sample_statistics(name, np.concatenate(e)) for name, e in errors.items()},
                               pixel_max=PIXEL_MAX)
    # every sample's errors in index order, to pair with another method's on the same samples (bcrdist.paired)
    order = np.argsort(np.concatenate(indices), kind="stable")
    doc["samples"] = {"index": np.concatenate(indices)[order].astype(np.int64).tolist(),
                      **{name: np.concatenate(e)[order].astype(np.float64).tolist() for name, e in errors.items()}}
    doc["seconds"] = time.monotonic() - start
    return doc
