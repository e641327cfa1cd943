"""`bcrdist shard`: convert an original single-file data set into a sharded data set, in bounded memory.

Source layouts (detected from the dataset names, or forced with `layout=`):

- "fan" — Fan's `{prefix}.h5`: `measure` (N, Ns, Nd), `coe` (N, Nt, Nr) and optionally `measure2` or any
  further top-level dataset with N samples on its first axis. Shards keep the names, shapes and dtypes.
- "farfield" — the far-field/image `.hdf5`: `farfield.real`, optional `farfield.imag`, `image`, each stored
  (M, N) with M a perfect square, sample j being `column j reshaped (√M, √M)` (the original's
  `.T.reshape(N, √M, √M)`). Shards hold `farfield` (N, √M, √M), complex when the imaginary part is present,
  and `image` (N, √M', √M'). With the grid options (`converted_grid`: --k, --box, and --angles, --image-points,
  --image-index, --sign with the port's defaults endpoint, nodes, xy, unknown) the manifest records the grid.

Memory is bounded by a few times `slab_bytes`: each dataset is copied in slabs of about that size (the
far-field layout reads a column slab across all M rows and transposes it). Shards are independent: under
mpiexec/srun rank r converts shards r, r+size, …; an interrupted run is resumed by running it again
(complete shards from the same source are kept). The manifest, with statistics and the source layout needed
by `merge`, is written last.

An output folder that holds another data set (a manifest made otherwise, shards of another source or of
another shard size) is refused; `overwrite=True` removes that data set (manifest, shards, side files, and
its split files in `splits/`) first.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time
from typing import Callable

import h5py
import numpy as np

from bcrdist.data.format import (MANIFEST_NAME, ShardWriter, existing_shard, open_h5, shard_name,
                                 write_manifest)
from bcrdist.distributed.mpi import gather_or_raise, world
from bcrdist.data.stats import merge_statistics, shard_statistics
from bcrdist.errors import ConfigError, DataError, shown
from bcrdist.fileio import one_line, os_message
from bcrdist.physics.layout import GridInfo

SLAB_BYTES = 256 << 20
FAN_REQUIRED = {"measure": 3, "coe": 3}
FARFIELD_NAMES = ("farfield.real", "farfield.imag", "image")


@dataclasses.dataclass(frozen=True)
class ShardField:
    """One dataset of the shards and where it comes from in the source file."""

    name: str
    sources: tuple[str, ...]   # one source dataset, or (real, imag) combined into a complex field
    sample_shape: tuple[int, ...]
    dtype: np.dtype
    columns: bool              # far-field layout: samples are the columns of (M, N) datasets

    @property
    def sample_nbytes(self) -> int:
        return int(np.prod(self.sample_shape, dtype=np.int64)) * self.dtype.itemsize


def _storage(dset: h5py.Dataset) -> dict:
    """Creation properties of a source dataset, so `merge` can recreate it the same way."""
    return {"chunks": list(dset.chunks) if dset.chunks else None, "compression": dset.compression,
            "compression_opts": dset.compression_opts, "shuffle": bool(dset.shuffle),
            "fletcher32": bool(dset.fletcher32), "scaleoffset": dset.scaleoffset}


def encode_attrs(attrs: h5py.AttributeManager) -> dict:
    """HDF5 attributes → {name: {"value", "dtype"}} (JSON); strings have dtype None.

    Attributes of other types (references, compound or string arrays) are recorded as text with dtype
    "unsupported" and not restored by `merge`: they are metadata, not the data the round trip guarantees.
    """
    out = {}
    for key, value in attrs.items():
        if isinstance(value, (bytes, str)):
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            out[key] = {"value": text, "dtype": None}
            continue
        arr = np.asarray(value)
        if arr.dtype.kind not in "biufc" or arr.dtype.fields is not None:
            out[key] = {"value": repr(value)[:200], "dtype": "unsupported"}
        elif arr.dtype.kind == "c":
            out[key] = {"value": [arr.real.tolist(), arr.imag.tolist()], "dtype": arr.dtype.str}
        else:
            out[key] = {"value": arr.tolist(), "dtype": arr.dtype.str}
    return out


def decode_attrs(encoded: dict) -> dict:
    """Inverse of `encode_attrs` (unsupported attributes are left out)."""
    out = {}
    for key, item in encoded.items():
        dtype = item["dtype"]
        if dtype == "unsupported":
            continue
        if dtype is None:
            out[key] = item["value"]
        elif np.dtype(dtype).kind == "c":
            re, im = item["value"]
            out[key] = (np.asarray(re) + 1j * np.asarray(im)).astype(dtype)
        else:
            out[key] = np.asarray(item["value"], dtype=dtype)
    return out


def _dataset(fh: h5py.File, name: str, src: str) -> h5py.Dataset:
    obj = fh.get(name)
    if obj is None:
        raise DataError(f"{src}: dataset {shown(name)} missing")
    if not isinstance(obj, h5py.Dataset):
        raise DataError(f"{src}: {shown(name)} is a group, expected a dataset")
    if obj.dtype.kind not in "biufc" or obj.dtype.fields is not None:
        raise DataError(f"{src}: dataset {shown(name)}: unsupported dtype {obj.dtype}")
    return obj


def detect_layout(fh: h5py.File) -> str:
    """"fan" when `measure` and `coe` exist, "farfield" when `farfield.real` and `image` exist."""
    if "measure" in fh and "coe" in fh:
        return "fan"
    if "farfield.real" in fh and "image" in fh:
        return "farfield"
    raise DataError(f"{fh.filename}: neither Fan's layout (measure, coe) nor the far-field layout "
                    f"(farfield.real, image); found {sorted(fh)}")


def inspect_source(fh: h5py.File, layout: str = "auto") -> tuple[str, int, list[ShardField], dict]:
    """Check a source file: (layout, N, shard fields, layout record for the manifest)."""
    src = fh.filename
    layout = detect_layout(fh) if layout == "auto" else layout
    record = {"kind": layout, "attrs": encode_attrs(fh.attrs), "datasets": []}
    fields: list[ShardField] = []
    if layout == "fan":
        for name, rank in FAN_REQUIRED.items():
            dset = _dataset(fh, name, src)
            if dset.ndim != rank:
                raise DataError(f"{src}: dataset {shown(name)} has rank {dset.ndim} {dset.shape}, expected {rank}")
        n = fh["measure"].shape[0]
        for name in fh:
            dset = _dataset(fh, name, src)
            if dset.ndim < 1 or dset.shape[0] != n:
                raise DataError(f"{src}: dataset {shown(name)} has shape {dset.shape}; inconsistent sample count "
                                f"(measure has {n})")
            fields.append(ShardField(name, (name,), tuple(dset.shape[1:]), dset.dtype, False))
            record["datasets"].append({"name": name, "shard": name, "part": None, "shape": list(dset.shape),
                                       "dtype": dset.dtype.str, "storage": _storage(dset),
                                       "attrs": encode_attrs(dset.attrs)})
    elif layout == "farfield":
        unexpected = sorted(set(fh) - set(FARFIELD_NAMES))
        if unexpected:
            raise DataError(f"{src}: unexpected datasets {unexpected} in the far-field layout "
                            f"({', '.join(FARFIELD_NAMES)})")
        has_imag = "farfield.imag" in fh
        names = [name for name in FARFIELD_NAMES if has_imag or name != "farfield.imag"]
        dsets = {name: _dataset(fh, name, src) for name in names}
        for name in ("farfield.real", "farfield.imag"):
            # a part of the far field named by its file: complex numbers there are not that part, and
            # assigning them to one would drop their imaginary parts
            if name in dsets and dsets[name].dtype.kind == "c":
                raise DataError(f"{src}: dataset {shown(name)} holds complex numbers ({dsets[name].dtype}); it must "
                                f"hold the far field's {name.partition('.')[2]} part, real numbers")
        n = dsets["farfield.real"].shape[-1]
        sides = {}
        for name, dset in dsets.items():
            if dset.ndim != 2:
                raise DataError(f"{src}: dataset {shown(name)} has rank {dset.ndim} {dset.shape}, expected 2 (M, N)")
            if dset.shape[1] != n:
                raise DataError(f"{src}: dataset {shown(name)} has {dset.shape[1]} samples (columns), farfield.real "
                                f"has {n}; inconsistent sample counts")
            side = math.isqrt(dset.shape[0])
            if side * side != dset.shape[0]:
                raise DataError(f"{src}: dataset {shown(name)}: {dset.shape[0]} rows is not a square grid")
            sides[name] = side
            part = name.split(".")[1] if name != "image" and has_imag else None
            record["datasets"].append({"name": name, "shard": "image" if name == "image" else "farfield",
                                       "part": part, "shape": list(dset.shape), "dtype": dset.dtype.str,
                                       "storage": _storage(dset),
                                       "attrs": encode_attrs(dset.attrs)})
        if has_imag:
            re, im = dsets["farfield.real"], dsets["farfield.imag"]
            if re.shape != im.shape:
                raise DataError(f"{src}: farfield.imag {im.shape} differs from farfield.real {re.shape}")
            dtype = np.result_type(re.dtype, im.dtype, np.complex64)
            fields.append(ShardField("farfield", ("farfield.real", "farfield.imag"),
                                     (sides["farfield.real"],) * 2, dtype, True))
        else:
            fields.append(ShardField("farfield", ("farfield.real",), (sides["farfield.real"],) * 2,
                                     dsets["farfield.real"].dtype, True))
        fields.append(ShardField("image", ("image",), (sides["image"],) * 2, dsets["image"].dtype, True))
    else:
        raise ConfigError(f"layout: expected auto, fan or farfield, got {shown(layout)}")
    if n < 1:
        raise DataError(f"{src}: the data set holds no samples")
    return layout, n, fields, record


def _read_slab(fh: h5py.File, field: ShardField, start: int, stop: int) -> np.ndarray:
    """Samples [start, stop) of `field` as (k, *sample_shape)."""
    src = fh.filename
    try:
        parts = [fh[s][:, start:stop] if field.columns else fh[s][start:stop] for s in field.sources]
    except OSError as exc:
        raise DataError(f"{src}: dataset {shown(field.sources[0])}: read failed at samples {start}–{stop - 1} "
                        f"(truncated or corrupt?): {one_line(exc)}") from None
    if field.columns:
        parts = [p.T.reshape(stop - start, *field.sample_shape) for p in parts]
    if len(parts) == 1:
        return parts[0]
    out = np.empty(parts[0].shape, dtype=field.dtype)
    out.real, out.imag = parts
    return out


def _check_finite(slab: np.ndarray, field: ShardField, start: int, src: str) -> None:
    if slab.dtype.kind not in "fc":
        return
    parts = [slab.real, slab.imag] if len(field.sources) == 2 else [slab]
    for source, part in zip(field.sources, parts):
        bad = ~np.isfinite(part.reshape(len(part), -1)).all(axis=1)
        if bad.any():
            raise DataError(f"{src}: dataset {shown(source)}: non-finite value (NaN or inf) in sample "
                            f"{start + int(np.argmax(bad))}")


def _matches(path: pathlib.Path, fields: list[ShardField], source_id: dict) -> bool:
    """A shard made from this very source with these fields (checked before reusing it)."""
    try:
        with h5py.File(path, "r") as fh:
            same_source = all(fh.attrs.get(k) == v for k, v in source_id.items())
            return same_source and set(fh) == {f.name for f in fields} and all(
                fh[f.name].shape[1:] == f.sample_shape and fh[f.name].dtype == f.dtype for f in fields)
    except (OSError, KeyError):
        return False


def other_data_set(out: pathlib.Path, planned: list[str], fields: list[ShardField], source_id: dict,
                   config: dict) -> str | None:
    """Why `out` holds a data set other than the one this conversion makes; None when it holds nothing or
    this one (an interrupted or repeated run). Unreadable shards count as broken pieces of this one."""
    strays = sorted(p.name for p in out.glob("shard-*.h5") if p.name not in planned)
    if strays:
        return f"{out}: holds {strays[0]} which this conversion would not produce"
    manifest = out / MANIFEST_NAME
    if manifest.exists():
        try:
            provenance = json.loads(manifest.read_text()).get("provenance") or {}
            made = {"tool": provenance.get("tool"), "source": provenance.get("source"),
                    **{key: (provenance.get("config") or {}).get(key) for key in config}}
        except (OSError, ValueError, AttributeError):
            return f"{manifest}: an unreadable manifest of an unknown data set"
        wanted = {"tool": "bcrdist shard", "source": source_id["source"], **config}
        differ = [f"{key} {shown(made[key])}, this conversion {shown(wanted[key])}" for key in wanted
                  if made[key] != wanted[key]]
        if differ:
            return f"{manifest}: holds another data set ({'; '.join(differ)})"
    for name in planned:
        path = out / name
        try:
            with h5py.File(path, "r") as fh:
                made_from = {key: fh.attrs.get(key) for key in source_id}
        except OSError:
            continue
        if not _matches(path, fields, source_id):
            if made_from.get("source") is None:
                return f"{path}: a shard not made by `bcrdist shard`"
            return (f"{path}: made from {made_from['source']} ({made_from.get('source_bytes')} bytes, mtime_ns "
                    f"{made_from.get('source_mtime_ns')}), not from this source as it is now")
    return None


def remove_data_set(out: pathlib.Path) -> None:
    """Delete the data set in `out`: the manifest first (the folder then no longer claims a complete data
    set), then shards and side files, then those split files in `out/splits` that were made for it."""
    manifest = out / MANIFEST_NAME
    try:
        old_id = json.loads(manifest.read_text()).get("dataset_id")
    except (OSError, ValueError, AttributeError):
        old_id = None
    manifest.unlink(missing_ok=True)
    for path in sorted(out.glob("shard-*.h5")) + sorted(out.glob("shard-*.h5.json")):
        path.unlink(missing_ok=True)
    for path in sorted((out / "splits").glob("*.json")) if old_id else []:
        try:
            made_for = json.loads(path.read_text()).get("dataset_id")
        except (OSError, ValueError, AttributeError):
            continue
        if made_for == old_id:
            path.unlink()


def convert_shard(fh: h5py.File, fields: list[ShardField], out_dir: pathlib.Path, shard: int, first: int,
                  count: int, *, slab_bytes: int, allow_nonfinite: bool, source_id: dict) -> dict:
    """Write shard `shard` holding source samples [first, first + count); returns its info."""
    with ShardWriter(out_dir, shard, first, count, attrs=source_id) as writer:
        for field in fields:
            writer.create(field.name, field.sample_shape, field.dtype)
        for field in fields:
            step = max(1, slab_bytes // max(1, field.sample_nbytes * (2 if len(field.sources) > 1 else 1)))
            for a in range(0, count, step):
                b = min(count, a + step)
                slab = _read_slab(fh, field, first + a, first + b)
                if not allow_nonfinite:
                    _check_finite(slab, field, first + a, fh.filename)
                writer.write(field.name, a, slab)
        return writer.commit()


FARFIELD_GRID_DEFAULTS = {"angles": "endpoint", "image_points": "nodes", "image_index": "xy", "sign": None}


def converted_grid(layout: str, fields: list[ShardField], options: dict | None) -> dict | None:
    """The manifest's grid record of a converted far-field/image file: `options` {k, box, angles, image_points,
    image_index, sign} (None: not given) with the port's defaults (`FARFIELD_GRID_DEFAULTS`) and the sizes of the
    shard fields; None when neither k nor box is given (the grid is then not recorded). ConfigError naming the
    option for an incomplete or impossible grid, or grid options on Fan's layout (its grid is not recorded)."""
    options = {key: value for key, value in (options or {}).items() if value is not None}
    if not options:
        return None
    flag = "--" + sorted(options)[0].replace("_", "-")
    if layout != "farfield":
        raise ConfigError(f"{flag}: grid options describe the far-field/image layout; {shown(layout)} takes none")
    missing = [f"--{key}" for key in ("k", "box") if key not in options]
    if missing:
        raise ConfigError(f"{' and '.join(missing)}: needed with the other grid options (the wavenumber and the "
                          f"side of the square the image covers, e.g. --k 16 --box 2 for the port's [−1, 1]²)")
    picked = {**FARFIELD_GRID_DEFAULTS, **{k: v for k, v in options.items() if k in FARFIELD_GRID_DEFAULTS}}
    shapes = {f.name: f.sample_shape for f in fields}
    try:
        grid = GridInfo(k=float(options["k"]), angles=picked["angles"], n_obs=shapes["farfield"][0],
                        n_inc=shapes["farfield"][1], target="cartesian", farfield_sign=picked["sign"],
                        image_size=shapes["image"][0], image_extent=float(options["box"]),
                        image_points=picked["image_points"], image_index=picked["image_index"])
    except ValueError as exc:
        raise ConfigError(f"{flag}: {str(exc).removeprefix('GridInfo: ')}") from None
    return grid.to_record()


def shard_file(src, out, samples_per_shard: int, *, layout: str = "auto", slab_bytes: int = SLAB_BYTES,
               allow_nonfinite: bool = False, overwrite: bool = False, grid: dict | None = None, comm=None,
               log: Callable[[str], None] = lambda _: None) -> pathlib.Path:
    """Convert `src` into the sharded data set `out` (created if needed); returns the manifest path.

    `overwrite`: replace another data set found in `out` (see the module docstring) instead of refusing.
    `grid`: options of a far-field/image file's grid record (`converted_grid`).
    """
    comm = comm if comm is not None else world()
    src, out = pathlib.Path(src).resolve(), pathlib.Path(out)
    if samples_per_shard < 1:
        raise ConfigError(f"samples_per_shard must be ≥ 1, got {samples_per_shard}")
    if slab_bytes < 1:
        raise ConfigError(f"slab size must be positive, got {slab_bytes}")
    started = time.monotonic()
    with open_h5(src) as fh:
        layout, n, fields, record = inspect_source(fh, layout)
        grid_record = converted_grid(layout, fields, grid)
        plan = [(i, first, min(samples_per_shard, n - first))
                for i, first in enumerate(range(0, n, samples_per_shard))]
        # every rank checks (and fails) alike, so no rank waits for one that raised
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"{out}: cannot create the folder: {exc.strerror or one_line(exc)}") from None
        stat = src.stat()
        source_id = {"source": str(src), "source_bytes": stat.st_size, "source_mtime_ns": stat.st_mtime_ns}
        config = {"samples_per_shard": samples_per_shard, "layout": layout, "allow_nonfinite": allow_nonfinite}
        if grid_record is not None:
            config["grid"] = {key: value for key, value in grid_record.items() if key != "conventions"}
        other = other_data_set(out, [shard_name(i) for i, _, _ in plan], fields, source_id, config)
        if other and not overwrite:
            raise DataError(f"{other}; use an empty folder, or pass --overwrite to replace the data set in {out}")
        error = None
        if other and comm.rank == 0:
            log(f"{out}: removing the data set there (--overwrite): {other}")
            try:
                remove_data_set(out)
            except OSError as exc:
                error = DataError(f"{out}: cannot remove the old data set: {os_message(exc)}")
        gather_or_raise(comm, None, error)      # nobody writes before the old data set is gone
        infos, stats, error = [], {}, None
        try:
            for i, first, count in plan[comm.rank::comm.size]:
                info = existing_shard(out, i, first, count)
                if info is not None and _matches(out / info["file"], fields, source_id):
                    log(f"{info['file']}: samples {first}–{first + count - 1} already converted")
                else:
                    info = convert_shard(fh, fields, out, i, first, count, slab_bytes=slab_bytes,
                                         allow_nonfinite=allow_nonfinite, source_id=source_id)
                    log(f"{info['file']}: samples {first}–{first + count - 1} written")
                infos.append(info)
        except (DataError, OSError) as exc:
            error = exc if isinstance(exc, DataError) else DataError(f"{out}: {os_message(exc)}")
    all_infos = [info for part in gather_or_raise(comm, infos, error) for info in part]
    dtypes = {f.name: f.dtype for f in fields}
    try:
        for info in infos:
            stats[info["first_index"]] = shard_statistics(out / info["file"], dtypes, slab_bytes)
    except (DataError, OSError) as exc:
        error = exc if isinstance(exc, DataError) else DataError(f"{out}: {os_message(exc)}")
    per_shard = {}
    for part in gather_or_raise(comm, stats, error):
        per_shard.update(part)
    manifest_path, error = out / MANIFEST_NAME, None
    if comm.rank == 0:
        provenance = {"tool": "bcrdist shard", "source": str(src), "seed": None, "config": config,
                      "mpi_ranks": comm.size, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        try:
            write_manifest(out, all_infos, provenance=provenance, layout=record,
                           statistics=merge_statistics(per_shard), grid=grid_record)
            log(f"{out}: {n} samples in {len(plan)} shards ({layout} layout) in {time.monotonic() - started:.1f} s")
        except DataError as exc:
            error = exc
    gather_or_raise(comm, None, error)
    return manifest_path
