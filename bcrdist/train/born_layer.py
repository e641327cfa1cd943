"""BCNN's Born layer made from the run's data: the Tikhonov inversion of `bcrdist baseline` on the data set's
grid, λ chosen on the validation split at its noise, and its dense reconstruction matrix.

The rule is the baseline's (`bcrdist.train.baseline`): the grid from the manifest
(`bcrdist.data.grid.grid_from_manifest`); the polar `BornInversion` for a `coe` target, the Cartesian
`CartesianBornInversion` for an `image` target; on a Cartesian grid whose far-field sign is not recorded, the
sign detected on the first validation samples (`detect_sign`); λ = argmin over the log grid σ_max²·10^t,
t ∈ [−12, 0] (`model.bcnn.lambda_grid` candidates) of the mean validation error (`selection_metric`: radius-
weighted on polar targets, relative L2 on Cartesian ones) of the estimates from the validation far fields with
the validation split's noise (`data.eval_noise` of `data.eval_noise_model`, by default the training noise
`data.noise` of `data.noise_model`; seeded by (seed, sample) as the baseline's `--noise --noise-model
--seed`), the noise the run selects its model at. The
validation samples are those the run selects on: the first `data.n_valid` of the validation split. With
`model.bcnn.born_lambda` set, that λ is used. The baseline's `--calibrate` (data normalised otherwise than
γk²) is not offered: generated and port data need none.

Ranks: rank 0 alone reads the validation split, chooses λ and computes the matrix; its record (λ, …) or its
error reaches every rank by a broadcast, and the matrix (with λ, both buffers of `BornLayer`) by the trainer's
`broadcast_module` of the whole model right after construction (before DDP), so every rank holds rank 0's
bytes; DDP then leaves the fixed matrix out of its per-step buffer broadcast.
"""

from __future__ import annotations

import numpy as np

from bcrdist.data.grid import TARGET_DATASET, grid_from_manifest
from bcrdist.errors import BcrdistError, ConfigError, DataError
from bcrdist.physics.born import BornInversion, CartesianBornInversion, detect_sign, noisy_far_field
from bcrdist.train.baseline import FIT_SAMPLES, load

ERRORS = {cls.__name__: cls for cls in (ConfigError, DataError, BcrdistError)}


def check_bcnn_data(cfg, choice) -> None:
    """ConfigError unless the run reads the complex far field with both parts (`data.input: farfield`,
    `data.use_imag: true`), as BCNN's Born layer needs."""
    d = cfg.data
    if choice.input != "farfield.real" or choice.input_imag != "farfield.imag":
        raise ConfigError(f"model.type: bcnn reconstructs from the complex far field; set data.input: farfield and "
                          f"data.use_imag: true (got data.input {d.input!r}, data.use_imag {d.use_imag})")


def born_inversion(cfg, manifest, F_val=None, target_val=None):
    """(inversion, sign_source) for the data set of `manifest`, per `model.bcnn.norm`; an unknown Cartesian sign
    is detected on (F_val, target_val) (the first FIT_SAMPLES)."""
    geometry = grid_from_manifest(manifest)
    expected = TARGET_DATASET[geometry.target]
    if cfg.data.target != expected:
        raise ConfigError(f"data.target: BCNN's Born layer reconstructs the {geometry.target} target "
                          f"{expected!r} of {manifest.root}, not {cfg.data.target!r}")
    norm = cfg.model.bcnn.norm
    if geometry.target == "polar":
        return BornInversion(geometry.k, geometry.n_obs, geometry.polar_nr, geometry.polar_radius, norm=norm), None
    source = "recorded"
    if geometry.farfield_sign is None:
        if F_val is None:
            raise DataError(f"{manifest.root}: the far field's sign convention is not recorded; BCNN detects it "
                            f"on the validation split")
        try:
            sign, _ = detect_sign(geometry, F_val[:FIT_SAMPLES], target_val[:FIT_SAMPLES])
        except ValueError as exc:
            raise DataError(f"{manifest.root}: {exc}") from None
        geometry, source = geometry.with_sign(sign), "detected on the validation split"
    return CartesianBornInversion(geometry, norm=norm), source


def born_reconstruction(cfg, manifest, val_indices) -> tuple[np.ndarray, dict]:
    """(M (n_pixels, 2·n_entries) float64, record) of the data set of `manifest`: λ chosen on the samples
    `val_indices` (see the module docstring), or `model.bcnn.born_lambda`."""
    b = cfg.model.bcnn
    F_val = target_val = None
    if b.born_lambda is None or grid_from_manifest(manifest).farfield_sign is None:
        F_val, target_val, idx = load(cfg.data.path, np.asarray(val_indices), target=cfg.data.target)
        noise_model, noise = cfg.data.evaluation_noise()
        F_val = noisy_far_field(F_val, noise, idx, cfg.seed, noise_model)
    inv, sign_source = born_inversion(cfg, manifest, F_val, target_val)
    record = {"norm": b.norm, "selection_metric": inv.selection_metric}
    if b.born_lambda is None:
        lam = inv.fit_lambda(F_val, target_val, inv.lambda_grid(b.lambda_grid))
        errors = inv.val_curve[1]
        record.update(lambda_source="validation", val_error=float(errors.min()), val_count=int(len(F_val)),
                      noise=noise, noise_model=noise_model, seed=cfg.seed)
    else:
        lam = float(b.born_lambda)
        record["lambda_source"] = "model.bcnn.born_lambda"
    record.update({"lambda": float(lam), "lambda_relative": float(lam / inv.sigma_max ** 2)})
    if sign_source is not None:
        record.update(farfield_sign=inv.grid.farfield_sign, sign_source=sign_source)
    return inv.reconstruction_matrix(lam), record


def fit_born_layer(model, cfg, data) -> dict:
    """Give BCNN `model` (a ScatteringModel) its Born layer from the run's `data` (TrainingData): rank 0
    computes it (`born_reconstruction`), every rank gets its record (stored in `model.born_record`) or its error
    (raised alike on every rank). The caller broadcasts the model's buffers (the trainer does)."""
    ctx = data.ctx
    matrix, shared, error = None, None, None
    if ctx.is_main:
        try:
            matrix, record = born_reconstruction(cfg, data.manifest, data.splits["val"][:cfg.data.n_valid])
            shared = {"record": record}
        except Exception as exc:        # every rank waits for this broadcast: it must carry any failure
            error, shared = exc, {"error": type(exc).__name__, "message": str(exc)}
    shared = ctx.broadcast_object(shared)
    if error is not None:
        raise error
    if "error" in shared:
        raise ERRORS.get(shared["error"], BcrdistError)(shared["message"])
    record = shared["record"]
    if matrix is not None:
        model.net.born.set_matrix(matrix, record["lambda"])
    model.born_record = record
    return record
