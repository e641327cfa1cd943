"""`bcrdist merge`: write a sharded data set back into one HDF5 file, shard by shard (bounded memory).

layout "original" rebuilds the file the data set was converted from (recorded in the manifest by
`bcrdist shard`): the same dataset names, shapes, dtypes, creation properties (chunks, compression) and
attributes, with data identical byte for byte. layout "samples" writes every dataset as (N, …) under its
shard name (the only choice for data sets made by the generator). The output appears atomically; a write
that fails (disk full, I/O error) leaves the previous file, if any, and raises one line naming it. Each shard's
SHA-256 is checked against the manifest before it is copied, so corrupt bytes never reach the merged file.
"""

from __future__ import annotations

import pathlib

import h5py
import numpy as np

from bcrdist.data.convert import decode_attrs
from bcrdist.data.format import MANIFEST_NAME, check_shard_bytes, open_h5, read_manifest
from bcrdist.fileio import HeldErrorFile, atomic_write_held, os_message, remove_stale_temps
from bcrdist.data.stats import iter_slabs
from bcrdist.errors import ConfigError, DataError, shown

SLAB_BYTES = 256 << 20


def _create(fh: h5py.File, item: dict) -> h5py.Dataset:
    storage = item.get("storage") or {}
    chunks = storage.get("chunks")
    dset = fh.create_dataset(item["name"], shape=tuple(item["shape"]), dtype=np.dtype(item["dtype"]),
                             chunks=tuple(chunks) if chunks else None, compression=storage.get("compression"),
                             compression_opts=storage.get("compression_opts"),
                             shuffle=bool(storage.get("shuffle")), fletcher32=bool(storage.get("fletcher32")),
                             scaleoffset=storage.get("scaleoffset"))
    dset.attrs.update(decode_attrs(item.get("attrs") or {}))
    return dset


def merge_dataset(path, out, *, layout: str = "auto", overwrite: bool = False,
                  slab_bytes: int = SLAB_BYTES) -> pathlib.Path:
    """Write the data set at `path` into the single file `out`; returns `out`."""
    manifest = read_manifest(path)
    out = pathlib.Path(out)
    if layout == "auto":
        layout = "original" if manifest.layout else "samples"
    if layout not in ("original", "samples"):
        raise ConfigError(f"layout: expected auto, original or samples, got {shown(layout)}")
    if layout == "original" and not manifest.layout:
        raise DataError(f"{manifest.path}: no source layout recorded (not made by `bcrdist shard`); "
                        "use --layout samples")
    if out.is_dir():
        raise DataError(f"{out}: is a folder; name the HDF5 file to write")
    if _belongs_to(out, manifest):
        raise DataError(f"{out}: is a file of the data set being merged; write the merged file elsewhere")
    if out.exists() and not overwrite:
        raise DataError(f"{out}: exists; remove it or pass --overwrite")
    if layout == "original":
        record = manifest.layout
        items = record["datasets"]
        columns = record["kind"] == "farfield"
    else:
        record = {"attrs": {}}
        items = [{"name": name, "shard": name, "part": None, "shape": [manifest.num_samples, *spec.shape],
                  "dtype": spec.dtype.str} for name, spec in manifest.datasets.items()]
        columns = False
    missing = sorted({item["shard"] for item in items} - set(manifest.datasets))
    if missing:
        raise DataError(f"{manifest.path}: layout refers to datasets {missing} that the shards lack")
    remove_stale_temps(out)

    def write(raw: HeldErrorFile) -> None:
        with h5py.File(raw, "w") as fh:
            fh.attrs.update(decode_attrs(record.get("attrs") or {}))
            targets = [(item, _create(fh, item)) for item in items]
            for shard in range(len(manifest.shards)):
                if raw.error is not None:
                    return
                check_shard_bytes(manifest, shard)
                _copy_shard(manifest, shard, targets, columns, slab_bytes, raw)

    try:
        return atomic_write_held(out, write)
    except OSError as exc:
        raise DataError(os_message(exc)) from None


def _copy_shard(manifest, shard: int, targets: list, columns: bool, slab_bytes: int, raw: HeldErrorFile) -> None:
    """Copy one shard's samples into the output datasets, slab by slab (stopping at a held write error)."""
    first = int(manifest.shards[shard]["first_index"])
    with open_h5(manifest.shard_path(shard)) as src:
        for item, dset in targets:
            if item["shard"] not in src:
                raise DataError(f"{manifest.shard_path(shard)}: dataset {shown(item['shard'])} missing")
            for start, slab in iter_slabs(src[item["shard"]], slab_bytes):
                if item.get("part"):
                    slab = getattr(slab, item["part"])
                slab = slab.astype(dset.dtype, copy=False)
                a, b = first + start, first + start + len(slab)
                if columns:
                    dset[:, a:b] = slab.reshape(len(slab), -1).T
                else:
                    dset[a:b] = slab
                if raw.error is not None:
                    return


def _belongs_to(out: pathlib.Path, manifest) -> bool:
    """`out` is the manifest, a shard or a shard's side file of the data set."""
    own = {MANIFEST_NAME} | {s["file"] for s in manifest.shards} | {s["file"] + ".json" for s in manifest.shards}
    root = manifest.root.resolve()
    target = out.resolve()
    return any(target == (root / name).resolve() for name in own)
