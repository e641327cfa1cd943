"""The grid of a data set (`bcrdist.physics.layout.GridInfo`): read from its manifest's `grid` record, from
the generator's config in `provenance.config`, or, for a converted far-field/image file that records neither,
from options (`GRID_OPTIONS`: k, angles, box, image_points, image_index, sign); an option that contradicts the
record is refused. `layout_of` is the lighter question the trainer asks: which angle grid and which target
kind, with Fan's layout (periodic angles, polar target) for data sets written before grid records.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from bcrdist.errors import ConfigError, DataError, shown
from bcrdist.physics.layout import GridInfo

TARGET_DATASET = {"polar": "coe", "cartesian": "image"}
GRID_OPTIONS = ("k", "angles", "box", "image_points", "image_index", "sign")
CONVERTED_DEFAULTS = {"angles": "endpoint", "image_points": "nodes", "image_index": "xy", "sign": None}


def _option_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _from_config(manifest, cfg: dict, target: str) -> dict:
    """GridInfo fields of a generated data set from its generator config (sizes come from the datasets)."""
    try:
        box = float(cfg.get("box", 1.0))
        fields = {"k": float(cfg["k_over_pi"]) * math.pi, "angles": cfg.get("angles", "periodic"), "farfield_sign": -1}
        if target == "polar":
            fields["polar_radius"] = float(cfg["polar_radius"]) * box
        else:
            fields.update(image_extent=box, image_points=cfg.get("image_points", "centres"), image_index="xy")
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{manifest.path}: provenance.config lacks k_over_pi/polar_radius (not made by "
                        f"`bcrdist generate`?)") from None
    return fields


def _from_options(manifest, options: dict, target: str) -> dict:
    """GridInfo fields of a converted data set (no grid record, no generator config) from the options."""
    if target == "polar":
        raise DataError(f"{manifest.path}: provenance.config lacks k_over_pi/polar_radius (not made by "
                        f"`bcrdist generate`?)")
    missing = [_option_flag(key) for key in ("k", "box") if options.get(key) is None]
    if missing:
        raise ConfigError(f"{manifest.path}: no grid record and no generator config: pass {' and '.join(missing)} "
                          f"(the wavenumber and the side of the square the image covers, e.g. --k 16 --box 2 for "
                          f"the port's [−1, 1]²)")
    picked = {key: options[key] if options.get(key) is not None else CONVERTED_DEFAULTS[key]
              for key in CONVERTED_DEFAULTS}
    return {"k": float(options["k"]), "image_extent": float(options["box"]), "angles": picked["angles"],
            "image_points": picked["image_points"], "image_index": picked["image_index"],
            "farfield_sign": picked["sign"]}


def _check_options(manifest, fields: dict, options: dict, source: str) -> None:
    """Refuse an option that contradicts what the data set records."""
    recorded = {"k": fields.get("k"), "angles": fields.get("angles"), "box": fields.get("image_extent"),
                "image_points": fields.get("image_points"), "image_index": fields.get("image_index"),
                "sign": fields.get("farfield_sign")}
    for key, value in options.items():
        if value is None or key not in recorded:
            continue
        have = recorded[key]
        same = (math.isclose(float(value), float(have), rel_tol=1e-12) if isinstance(have, float) else value == have)
        if have is not None and not same:
            raise ConfigError(f"{_option_flag(key)}: {shown(value)} contradicts {source} of {manifest.root} "
                              f"({shown(have)}); drop the option")


def grid_from_manifest(manifest, options: dict | None = None) -> GridInfo:
    """The grid of a data set for the Born baseline; DataError when absent or inconsistent with its datasets.

    `options` ({GRID_OPTIONS key: value or None}) fill in what the manifest does not record (converted files);
    the sign None stays unknown (the baseline detects it).
    """
    options = {key: value for key, value in (options or {}).items() if value is not None}
    unknown = sorted(set(options) - set(GRID_OPTIONS))
    if unknown:
        raise ConfigError(f"grid options: unknown {unknown} (expected {', '.join(GRID_OPTIONS)})")
    datasets = manifest.datasets
    target = "polar" if "coe" in datasets else "cartesian" if "image" in datasets else None
    missing = [d for d in ("farfield",) + ((TARGET_DATASET[target],) if target else ("coe",)) if d not in datasets]
    if missing:
        raise DataError(f"{manifest.root}: no {' or '.join(repr(m) for m in missing)} dataset; the Born baseline "
                        f"needs the complex far field F[obs, src] and the polar `coe` or the Cartesian `image` "
                        f"target (as `bcrdist generate` writes)")
    spec = datasets["farfield"]
    if len(spec.shape) != 2 or not np.iscomplexobj(np.zeros(0, dtype=spec.dtype)):
        raise DataError(f"{manifest.root}: 'farfield' must be complex (B, n_obs, n_inc), got {spec.dtype} "
                        f"{spec.shape} per sample")
    provenance_cfg = (manifest.provenance or {}).get("config") or {}
    record = manifest.raw.get("grid")
    if record is not None:
        grid = GridInfo.from_record(record, f"{manifest.path}: grid")
        fields, source = dataclasses.asdict(grid), "the manifest's grid record"
    elif "k_over_pi" in provenance_cfg or target == "polar":
        fields, source = _from_config(manifest, provenance_cfg, target), "provenance.config"
    else:
        fields, source = _from_options(manifest, options, target), "the options"
    _check_options(manifest, fields, options, source)
    if fields.get("farfield_sign") is None and options.get("sign") is not None:
        fields["farfield_sign"] = options["sign"]
    target_shape = datasets[TARGET_DATASET[target]].shape
    fields.update(target=target, n_obs=spec.shape[0], n_inc=spec.shape[1])
    if target == "polar":
        if spec.shape[0] != spec.shape[1] or target_shape[0] != spec.shape[0]:
            raise DataError(f"{manifest.root}: farfield {spec.shape} and coe {target_shape} do not share Na angles")
        fields.update(polar_nt=target_shape[0], polar_nr=target_shape[1])
    else:
        if len(target_shape) != 2 or target_shape[0] != target_shape[1]:
            raise DataError(f"{manifest.root}: 'image' must be square (n, n) per sample, got {target_shape}")
        fields["image_size"] = target_shape[0]
    fields.pop("version", None)
    fields.pop("conventions", None)
    try:
        grid = GridInfo(**fields)
    except ValueError as exc:
        raise DataError(f"{manifest.root}: {str(exc).removeprefix('GridInfo: ')}") from None
    if record is not None and not same_operator(grid, GridInfo.from_record(record)):
        raise DataError(f"{manifest.path}: the grid record does not match the datasets' shapes "
                        f"(farfield {spec.shape}, {TARGET_DATASET[target]} {target_shape})")
    return grid


def same_operator(a: GridInfo, b: GridInfo) -> bool:
    da, db = dataclasses.asdict(a), dataclasses.asdict(b)
    da.pop("farfield_sign"), db.pop("farfield_sign")
    return all(math.isclose(v, db[key], rel_tol=1e-9) if isinstance(v, float) else v == db[key]
               for key, v in da.items())


@dataclasses.dataclass(frozen=True)
class Layout:
    """What training needs to know of a data set's grid: whether its angle axis is `periodic` and whether the
    target is `polar` or `cartesian` (`target_kind`), and where that was read (`source`)."""

    periodic: bool
    target_kind: str
    source: str


def layout_of(manifest, target: str) -> Layout:
    """The layout of `manifest` for training on dataset `target`: from the grid record (`manifest.grid`); for a
    data set without one, Fan's (periodic angles, polar target) when it holds `measure` and the target is
    `coe`, else the far-field layout's defaults (endpoint angles, Cartesian target), as `bcrdist shard` assumes."""
    grid = manifest.grid
    if grid is not None:
        return Layout(grid.periodic, grid.target, f"{manifest.path}: grid")
    if target == "coe" and "measure" in manifest.datasets:
        return Layout(True, "polar", f"{manifest.path} (no grid record: Fan's layout)")
    return Layout(False, "cartesian", f"{manifest.path} (no grid record: the far-field layout)")
