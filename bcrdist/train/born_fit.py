"""One Born fit: the linear Born reconstruction (`bcrdist.physics.born_definition.BornDefinition`) of a data set,
as `bcrdist baseline` evaluates it and a Born-based network uses it as a layer.

The rule (`fit_born`):
- the grid from the data set's manifest (`bcrdist.data.grid.grid_from_manifest`; `grid_options` for converted
  files that record none); the validation data set (`val_data`, default the data set itself) must have the same
  operator;
- the validation far fields get the evaluation noise (`noisy_far_field`: `noise` percent of `noise_model`, the
  draw seeded by (`seed`, global sample index));
- on a Cartesian grid whose far-field sign is not recorded, the sign is detected on the first FIT_SAMPLES
  validation samples (`detect_sign`); whenever those are read, the Born fit scores of both conventions are
  recorded (`born_fit`), and with `calibrate` the far fields are divided by the fitted complex factor (data
  normalised otherwise than γk²; the record's `calibration`, which the caller applies to every far field);
- method `tikhonov`: λ given (`lam`), or the λ of the log grid σ_max²·10^t, t ∈ [−12, 0] (`lambda_grid`
  candidates) with the least mean validation error (`fit_lambda`: radius-weighted on polar targets, relative L2
  on Cartesian ones; on Cartesian grids its solve drops the eigenpairs that rounding made negative, which the
  definition's estimator keeps: ~1e-16·σ_max²/λ apart on Born data); norm area (default) or euclidean; entries
  farfield or measure (polar only);
- method `lsqr`: the study's damped least squares with damping `damp` (required, > 0); Cartesian targets with the
  same observation and incident directions; the validation split is read only to detect the sign or calibrate.
Bad values are one-line ConfigErrors naming the key: `keys` maps the request's fields (and noise, noise_model,
calibrate, sign) to the names the caller wants in messages (default: `bcrdist baseline`'s flags).

`iterate`/`load` read a split's far fields and targets.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from bcrdist.data.dataset import ShardedDataset
from bcrdist.data.format import read_manifest
from bcrdist.data.grid import TARGET_DATASET, grid_from_manifest, same_operator
from bcrdist.errors import ConfigError, DataError
from bcrdist.noise import check_model
from bcrdist.physics.born import DEFAULT_GRID_SIZE, ENTRIES, NORMS, born_fit, detect_sign, noisy_far_field
from bcrdist.physics.born_definition import METHODS, BornDefinition, decomposition
from bcrdist.physics.born_lsqr import check_lsqr_grid
from bcrdist.physics.layout import GridInfo

FIT_SAMPLES = 64         # validation samples of the sign detection and the Born fit scores
KEYS = {"method": "--method", "norm": "--norm", "lam": "--lambda", "lambda_grid": "--grid", "damp": "--damp",
        "entries": "--entries", "noise": "--noise", "noise_model": "--noise-model", "calibrate": "--calibrate",
        "sign": "--sign"}


@dataclasses.dataclass(frozen=True)
class BornRequest:
    """What to fit. method: tikhonov | lsqr; norm (tikhonov): area | euclidean, None = area; lam (tikhonov): λ
    ≥ 0 absolute, None = chosen on validation; lambda_grid (tikhonov): candidates, None = 49; damp (lsqr): d > 0;
    entries: farfield | measure (polar tikhonov)."""

    method: str = "tikhonov"
    norm: str | None = None
    lam: float | None = None
    lambda_grid: int | None = None
    damp: float | None = None
    entries: str = "farfield"


def iterate(path, split, batch_size: int = 256, target: str = "coe"):
    """Batches (F complex (B, n_obs, n_inc), target (B, …), index (B,)) of a split (a name, a split file, an index
    array, or 'all': every sample)."""
    reader = ShardedDataset(path, split=None if str(split) == "all" else split, shuffle=False, exact=True,
                            batch_size=batch_size, datasets=["farfield", target])
    for batch in reader:
        yield batch["farfield"].numpy(), batch[target].numpy(), batch["index"].numpy()


def load(path, split, batch_size: int = 256, target: str = "coe"):
    """The whole split at once: (F, target, index)."""
    parts = list(iterate(path, split, batch_size, target))
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


def _check_request(request: BornRequest, keys: dict) -> None:
    r = request
    if r.method not in METHODS:
        raise ConfigError(f"{keys['method']}: expected one of {', '.join(METHODS)}, got {r.method!r}")
    if r.entries not in ENTRIES:
        raise ConfigError(f"{keys['entries']}: expected one of {', '.join(ENTRIES)}, got {r.entries!r}")
    if r.method == "lsqr":
        for field in ("norm", "lam", "lambda_grid"):
            if getattr(r, field) is not None:
                raise ConfigError(f"{keys[field]}: applies to {keys['method']} tikhonov only (lsqr has the damping "
                                  f"{keys['damp']} and the plain coefficient norm)")
        if r.damp is None:
            raise ConfigError(f"{keys['damp']}: {keys['method']} lsqr needs the damping d (the study's Born γ = 1 "
                              f"is d = 1)")
        if isinstance(r.damp, bool) or not (math.isfinite(r.damp) and r.damp > 0):
            raise ConfigError(f"{keys['damp']}: must be finite and > 0, got {r.damp}")
        return
    if r.damp is not None:
        raise ConfigError(f"{keys['damp']}: applies to {keys['method']} lsqr only")
    if r.norm is not None and r.norm not in NORMS:
        raise ConfigError(f"{keys['norm']}: expected one of {', '.join(NORMS)}, got {r.norm!r}")
    if r.lam is not None and not (math.isfinite(r.lam) and r.lam >= 0):
        raise ConfigError(f"{keys['lam']}: must be finite and ≥ 0, got {r.lam}")
    if r.lambda_grid is not None and r.lambda_grid < 2:
        raise ConfigError(f"{keys['lambda_grid']}: need at least 2 λ candidates, got {r.lambda_grid}")


def _split_name(split) -> str:
    return str(split) if isinstance(split, (str, os.PathLike)) else f"{len(np.atleast_1d(split))} samples by index"


def _fit_record(fits: dict) -> dict:
    return {str(sign): {"score": f["score"], "scale": [f["scale"].real, f["scale"].imag]} for sign, f in fits.items()}


def read_grid(data_path, val_data=None, grid_options: dict | None = None) -> GridInfo:
    """The grid of `data_path` (sign as recorded, None if not); DataError unless `val_data` has the same
    operator."""
    geometry = grid_from_manifest(read_manifest(data_path), grid_options)
    if val_data is not None and str(val_data) != str(data_path):
        val_geometry = grid_from_manifest(read_manifest(val_data), grid_options)
        if not same_operator(geometry, val_geometry):
            what = "k, Na, Nr and polar radius" if geometry.target == "polar" else "k, angle grids and image grid"
            raise DataError(f"{val_data} and {data_path} were generated with different operators "
                            f"({val_geometry.to_record()} vs {geometry.to_record()}); the Born reconstruction must "
                            f"be fitted on data of the same {what}")
    return geometry


def fit_born(data_path, request: BornRequest, *, val_data=None, val_split="val", noise: float = 0.0,
             noise_model: str = "fan", seed: int = 0, grid_options: dict | None = None, calibrate: bool = False,
             batch_size: int = 256, keys: dict | None = None) -> tuple[BornDefinition, dict]:
    """(definition, record) of the Born reconstruction of `data_path` per `request` (module docstring).

    val_data: the data set whose `val_split` (a split name or an index array) chooses λ / detects the sign
    (default `data_path`). record (JSON): method, norm, entries; tikhonov: lambda, lambda_relative (λ/σ_max²),
    lambda_source ("validation" or the key of λ), sigma_max and, when chosen on validation, selection_metric,
    val_error, val_count, lambda_curve {lambda_relative, val_error}; lsqr: damp; when the validation split was
    read: val_data, val_split, noise, noise_model, seed, val_target_range [min, max] and on Cartesian grids
    born_fit {sign: {score, scale}}; sign_source and farfield_sign on Cartesian grids; calibration [re, im] with
    `calibrate`.
    """
    keys = {**KEYS, **(keys or {})}
    _check_request(request, keys)
    if not noise >= 0:
        raise ConfigError(f"{keys['noise']}: must be ≥ 0 (percent), got {noise}")
    check_model(noise_model, keys["noise_model"])
    val_data = data_path if val_data is None else val_data
    geometry = read_grid(data_path, val_data, grid_options)
    kind, lsqr = geometry.target, request.method == "lsqr"
    target_name = TARGET_DATASET[kind]
    if kind == "polar":
        if calibrate:
            raise ConfigError(f"{keys['calibrate']}: applies to the Cartesian (far-field/image) layout only")
        if lsqr:
            raise ConfigError(f"{keys['method']}: lsqr reconstructs Cartesian images; {data_path} has Fan's polar "
                              f"target 'coe'")
    elif request.entries != "farfield":
        raise ConfigError(f"{keys['entries']}: 'measure' applies to Fan's polar layout only")
    if lsqr:
        check_lsqr_grid(geometry.with_sign(geometry.farfield_sign or -1), f"{keys['method']} lsqr")
    record: dict = {"method": request.method, "norm": request.norm or ("euclidean" if lsqr else "area"),
                    "entries": request.entries}
    sign_unknown = kind == "cartesian" and geometry.farfield_sign is None
    need_val = sign_unknown or calibrate or (not lsqr and request.lam is None)
    if need_val:
        F_val, target_val, idx_val = load(val_data, val_split, batch_size, target_name)
        F_val = noisy_far_field(F_val, noise, idx_val, seed, noise_model)
        record.update(val_data=str(val_data), val_split=_split_name(val_split), noise=noise, noise_model=noise_model,
                      seed=seed, val_target_range=[float(target_val.min()), float(target_val.max())])
        if kind == "cartesian":
            fit_f, fit_img = F_val[:FIT_SAMPLES], target_val[:FIT_SAMPLES]
            if sign_unknown:
                try:
                    sign, fits = detect_sign(geometry, fit_f, fit_img)
                except ValueError as exc:
                    raise DataError(f"{val_data}: {exc}; pass {keys['sign']}") from None
                geometry = geometry.with_sign(sign)
                record["sign_source"] = f"detected on {val_data} split {_split_name(val_split)}"
            else:
                fits = born_fit(geometry, fit_f, fit_img)
            record["born_fit"] = _fit_record(fits)
            if calibrate:
                factor = fits[geometry.farfield_sign]["scale"]
                record["calibration"] = [factor.real, factor.imag]
                F_val = F_val / factor
    if kind == "cartesian":
        record.setdefault("sign_source", "recorded")
        record["farfield_sign"] = geometry.farfield_sign
    elif geometry.farfield_sign is None:      # Fan's layout: the generator's convention
        geometry = geometry.with_sign(-1)
    if lsqr:
        record["damp"] = float(request.damp)
        return BornDefinition(geometry, "lsqr", request.damp), record
    inv = decomposition(geometry, record["norm"], request.entries)
    if request.lam is None:
        lam = inv.fit_lambda(F_val, target_val, inv.lambda_grid(request.lambda_grid or DEFAULT_GRID_SIZE))
        lambdas, errors = inv.val_curve
        record.update(lambda_source="validation", selection_metric=inv.selection_metric,
                      val_error=float(np.nanmin(errors)), val_count=int(len(idx_val)),
                      lambda_curve={"lambda_relative": (lambdas / inv.sigma_max ** 2).tolist(),
                                    "val_error": errors.tolist()})
    else:
        lam = float(request.lam)
        record["lambda_source"] = keys["lam"]
    record.update({"lambda": float(lam), "lambda_relative": float(lam / inv.sigma_max ** 2),
                   "sigma_max": inv.sigma_max})
    return BornDefinition(geometry, "tikhonov", lam, record["norm"], request.entries), record
