"""The sharded HDF5 data-set format: writing shards and the manifest, reading and checking the manifest.

A data set is a directory holding `manifest.json` and `shard-00000.h5`, `shard-00001.h5`, … Each shard holds
the same datasets for a contiguous range of global sample indices, sample axis first, chunked along the sample
axis, uncompressed. See docs/data-format.md for the full specification.

The writer API used by the sharding tool and by the data generator:

    info = write_shard(out_dir, shard_index, first_index, arrays, attrs)
    info = existing_shard(out_dir, shard_index, first_index, num_samples)   # resume: None → write it again
    write_manifest(out_dir, infos, provenance={...}, statistics={...})

Every file is written under a temporary name in the same directory, fsynced and renamed, so an interrupted
writer never leaves a file that looks complete. A shard's SHA-256 also goes into a small side file
`shard-NNNNN.h5.json`, written after the shard itself; `existing_shard` trusts a shard only when both agree.
A write that fails (disk full, I/O error) raises a one-line DataError naming the file and leaves the files
that were there before untouched. Shard entries of a manifest are file names relative to the data-set folder;
`..` and absolute paths are refused, so a manifest cannot make a reader open files of another data set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from typing import Any, Iterable

import h5py
import numpy as np

from bcrdist.errors import DataError, shown
from bcrdist.physics.layout import GridInfo
from bcrdist.fileio import (HeldErrorFile, PathLike, atomic_write_json, fd_sha256, file_sha256, fsync_file,
                            one_line, os_message, remove_stale_temps, temp_path)

FORMAT_NAME = "bcrdist-sharded-hdf5"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
# 1 MiB chunks: large enough that a block read is a few long requests, small enough that a partial read of a
# chunk (the first and last of a block) wastes little
CHUNK_BYTES = 1 << 20
_RESERVED_ATTRS = ("bcrdist_format", "format_version", "shard_index", "first_index", "num_samples")

def shard_name(shard_index: int) -> str:
    """File name of shard `shard_index`: `shard-00000.h5`."""
    return f"shard-{int(shard_index):05d}.h5"


def _sidecar(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(path.name + ".json")


def chunk_samples_for(sample_nbytes: int, num_samples: int) -> int:
    """Samples per chunk: about `CHUNK_BYTES` per chunk, at least 1, at most the shard length."""
    return int(max(1, min(num_samples, CHUNK_BYTES // max(1, sample_nbytes))))


def _check_name(name: str, where: str) -> None:
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise DataError(f"{where}: invalid dataset name {shown(name)} (non-empty, no '/', not starting with '.')")


def _check_dtype(dtype: np.dtype, where: str) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind not in "biufc" or dtype.fields is not None:
        raise DataError(f"{where}: unsupported dtype {dtype} (numeric, bool or complex only)")
    return dtype


def _json_attr(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


class ShardWriter:
    """Write one shard dataset by dataset, slab by slab, then commit it atomically.

        with ShardWriter(out_dir, shard_index, first_index, num_samples) as w:
            w.create("measure", (Ns, Nd), "float32")
            w.write("measure", 0, slab)            # slab (k, Ns, Nd); slabs in order
            info = w.commit()

    Leaving the block without `commit()` (or with an exception) deletes the temporary file. HDF5 writes
    through a `HeldErrorFile`: a disk-full or I/O error surfaces as one DataError naming the shard, after
    HDF5 has closed the temporary file cleanly.
    """

    def __init__(self, out_dir: PathLike, shard_index: int, first_index: int, num_samples: int,
                 attrs: dict | None = None):
        self.out_dir = pathlib.Path(out_dir)
        self.shard_index = int(shard_index)
        self.first_index = int(first_index)
        self.num_samples = int(num_samples)
        if self.shard_index < 0 or self.first_index < 0 or self.num_samples < 1:
            raise DataError(f"{self.out_dir}: shard {shard_index}: need shard_index ≥ 0, first_index ≥ 0 and at "
                            f"least one sample, got first_index={first_index}, num_samples={num_samples}")
        self.final = self.out_dir / shard_name(self.shard_index)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.final)
        self.tmp = temp_path(self.final)
        self._written: dict[str, int] = {}
        try:
            self._raw = HeldErrorFile(self.tmp)
        except OSError as exc:
            raise DataError(f"{self.final}: cannot write: {exc.strerror or one_line(exc)}") from None
        self._file = h5py.File(self._raw, "w")
        self._file.attrs["bcrdist_format"] = FORMAT_NAME
        self._file.attrs["format_version"] = FORMAT_VERSION
        self._file.attrs["shard_index"] = self.shard_index
        self._file.attrs["first_index"] = self.first_index
        self._file.attrs["num_samples"] = self.num_samples
        for key, value in (attrs or {}).items():
            if key in _RESERVED_ATTRS:
                self.abort()
                raise DataError(f"{self.final}: attribute {shown(key)} is reserved by the format")
            self._file.attrs[key] = value

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.abort()

    def create(self, name: str, sample_shape: Iterable[int], dtype) -> None:
        """Create dataset `name` of shape (num_samples, *sample_shape), chunked along the sample axis."""
        _check_name(name, str(self.final))
        dtype = _check_dtype(dtype, f"{self.final}: dataset {shown(name)}")
        sample_shape = tuple(int(s) for s in sample_shape)
        sample_nbytes = int(np.prod(sample_shape, dtype=np.int64)) * dtype.itemsize
        chunk = chunk_samples_for(sample_nbytes, self.num_samples)
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        # all chunks allocated at creation, in order, without a fill pass: a shard's chunks then lie back to
        # back in the file, which the reader exploits for long contiguous reads
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
        self._file.create_dataset(name, shape=(self.num_samples, *sample_shape), dtype=dtype,
                                  chunks=(chunk, *sample_shape) if sample_nbytes else None,
                                  track_times=False, dcpl=dcpl)
        self._written[name] = 0

    def write(self, name: str, start: int, data: np.ndarray) -> None:
        """Write `data` (k, *sample_shape) at sample offset `start`; slabs must come in order."""
        if name not in self._written:
            raise DataError(f"{self.final}: dataset {shown(name)} was not created")
        if start != self._written[name]:
            raise DataError(f"{self.final}: dataset {shown(name)}: slab starts at {start}, expected "
                            f"{self._written[name]}")
        dset = self._file[name]
        if data.shape[1:] != dset.shape[1:] or start + len(data) > self.num_samples:
            raise DataError(f"{self.final}: dataset {shown(name)}: slab of shape {data.shape} at {start} does not "
                            f"fit {dset.shape}")
        if len(data):
            dset[start:start + len(data)] = data
        self._written[name] = start + len(data)
        self._raise_held()

    def _raise_held(self) -> None:
        """After a failed write: close HDF5's file, delete the temporary, raise one line naming the shard."""
        if self._raw.error is not None:
            error = self._raw.error
            self.abort()
            raise DataError(f"{self.final}: cannot write: {error.strerror or one_line(error)}")

    def commit(self) -> dict:
        """Close, fsync, checksum and rename the shard, then write its side file; returns the shard info."""
        if not self._written:
            raise DataError(f"{self.final}: a shard needs at least one dataset")
        short = {k: v for k, v in self._written.items() if v != self.num_samples}
        if short:
            raise DataError(f"{self.final}: incomplete datasets {short} (expected {self.num_samples} samples)")
        self._file.close()
        self._raise_held()
        try:
            self._raw.close()
            fsync_file(self.tmp)
            info = {"file": self.final.name, "num_samples": self.num_samples, "first_index": self.first_index,
                    "sha256": file_sha256(self.tmp), "bytes": self.tmp.stat().st_size}
            os.replace(self.tmp, self.final)
        except OSError as exc:
            self.abort()
            raise DataError(f"{self.final}: cannot write: {exc.strerror or one_line(exc)}") from None
        try:
            atomic_write_json(_sidecar(self.final), info)
        except OSError as exc:
            # the shard is complete, only its resume marker is missing: a rerun writes it again
            raise DataError(os_message(exc)) from None
        return dict(info)

    def abort(self) -> None:
        """Discard the temporary file (no effect after `commit`)."""
        if self._file.id.valid:
            self._file.close()
        self._raw.close()
        self.tmp.unlink(missing_ok=True)


def write_shard(out_dir: PathLike, shard_index: int, first_index: int, arrays: dict[str, np.ndarray],
                attrs: dict | None = None) -> dict:
    """Write `out_dir/shard-{shard_index:05d}.h5` holding `arrays` for samples first_index … first_index+n−1.

    `arrays` maps dataset name → array (n, *sample_shape); all share n ≥ 1 along the first axis. Numeric, bool
    and complex dtypes are stored as given. `attrs` become HDF5 file attributes. Returns
    {"file", "num_samples", "first_index", "sha256", "bytes"}.
    """
    out = pathlib.Path(out_dir) / shard_name(shard_index)
    if not arrays:
        raise DataError(f"{out}: no arrays to write")
    lengths = {}
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        if arr.ndim < 1:
            raise DataError(f"{out}: dataset {shown(name)}: needs a sample axis, got a scalar")
        lengths[name] = arr.shape[0]
    if len(set(lengths.values())) != 1:
        raise DataError(f"{out}: inconsistent sample counts {lengths}")
    with ShardWriter(out_dir, shard_index, first_index, next(iter(lengths.values())), attrs) as writer:
        for name, arr in arrays.items():
            arr = np.asarray(arr)
            writer.create(name, arr.shape[1:], arr.dtype)
            writer.write(name, 0, arr)
        return writer.commit()


def existing_shard(out_dir: PathLike, shard_index: int, first_index: int, num_samples: int) -> dict | None:
    """Info of a complete existing shard holding exactly samples [first_index, first_index + num_samples).

    Complete means: the shard and its side file exist, agree on the range, and the file's size and SHA-256
    match the side file. Anything else (missing, interrupted, other range, corrupt) returns None, and the
    caller writes the shard again.
    """
    path = pathlib.Path(out_dir) / shard_name(shard_index)
    try:
        info = json.loads(_sidecar(path).read_text())
        ok = (path.is_file() and info.get("file") == path.name
              and int(info.get("first_index", -1)) == int(first_index)
              and int(info.get("num_samples", -1)) == int(num_samples)
              and path.stat().st_size == int(info.get("bytes", -1))
              and file_sha256(path) == info.get("sha256"))
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    if not ok:
        return None
    return {k: info[k] for k in ("file", "num_samples", "first_index", "sha256", "bytes")}


def open_h5(path: PathLike, **kwargs) -> h5py.File:
    """`h5py.File(path, "r")`, with an unreadable or truncated file reported as a one-line DataError."""
    try:
        return h5py.File(path, "r", **kwargs)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file (truncated or corrupt?): {one_line(exc)}") from None


def _describe_shard(path: pathlib.Path) -> dict[str, dict]:
    """Per dataset of one shard file: {"shape": per-sample shape, "dtype": typestr, "chunk_samples", "n"}."""
    with open_h5(path) as fh:
        out = {}
        for name, dset in fh.items():
            if not isinstance(dset, h5py.Dataset) or dset.ndim < 1:
                raise DataError(f"{path}: dataset {shown(name)}: not an array with a sample axis")
            dtype = _check_dtype(dset.dtype, f"{path}: dataset {shown(name)}")
            out[name] = {"shape": list(dset.shape[1:]), "dtype": dtype.str,
                         "chunk_samples": int(dset.chunks[0]) if dset.chunks else int(dset.shape[0]),
                         "n": int(dset.shape[0])}
    if not out:
        raise DataError(f"{path}: shard holds no datasets")
    return out


def dataset_id(shards: list[dict]) -> str:
    """A short identifier of a data set's content: a hash over its shards' ranges and checksums."""
    text = "\n".join(f"{s['first_index']}:{s['num_samples']}:{s['sha256']}" for s in shards)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _sorted_contiguous(shards: list[dict], where: str) -> list[dict]:
    shards = sorted(shards, key=lambda s: int(s["first_index"]))
    expected = 0
    for s in shards:
        if int(s["first_index"]) != expected:
            raise DataError(f"{where}: shards are not contiguous: {s['file']} starts at sample {s['first_index']}, "
                            f"expected {expected}")
        if int(s["num_samples"]) < 1:
            raise DataError(f"{where}: shard {s['file']} holds no samples")
        expected += int(s["num_samples"])
    return shards


def write_manifest(out_dir: PathLike, shard_infos: list[dict], *, provenance: dict,
                   statistics: dict | None = None, layout: dict | None = None,
                   grid: dict | None = None, discretisation: dict | None = None) -> pathlib.Path:
    """Write `out_dir/manifest.json` atomically; returns its path.

    `shard_infos` are the dicts returned by `write_shard`/`existing_shard`, in any order; they are sorted by
    first_index and must cover 0 … N−1 without gaps or overlaps. Dataset names, per-sample shapes and dtypes
    come from the first shard; every other shard must hold the same. `provenance` records how the data set
    was made (tool, version, source, seed, config). `statistics` maps field → {count, min, max, mean, std,
    nonfinite} (see `bcrdist.data.stats`); `layout` records the source file layout for `merge`; `grid` is the
    data set's `GridInfo.to_record()` (angle grid, polar or Cartesian target, sign; checked here);
    `discretisation` the far fields' estimated discretisation error (`bcrdist.data.discretisation`).
    """
    out_dir = pathlib.Path(out_dir)
    where = str(out_dir / MANIFEST_NAME)
    if not shard_infos:
        raise DataError(f"{where}: no shards")
    if not isinstance(provenance, dict) or "tool" not in provenance:
        raise DataError(f"{where}: provenance must be a mapping with at least a 'tool' entry")
    shards = []
    for i, info in enumerate(shard_infos):
        missing = {"file", "num_samples", "first_index", "sha256"} - set(info)
        if missing:
            raise DataError(f"{where}: shard info {info} lacks {sorted(missing)}")
        check_shard_file(info["file"], where, i)
        path = out_dir / info["file"]
        size = int(info["bytes"]) if "bytes" in info else path.stat().st_size
        shards.append({"file": str(info["file"]), "first_index": int(info["first_index"]),
                       "num_samples": int(info["num_samples"]), "sha256": str(info["sha256"]), "bytes": size})
    shards = _sorted_contiguous(shards, where)
    if grid is not None:
        GridInfo.from_record(grid, f"{where}: grid")
    first = _describe_shard(out_dir / shards[0]["file"])
    datasets = {name: {"shape": d["shape"], "dtype": d["dtype"], "chunk_samples": 0} for name, d in first.items()}
    for s in shards:
        desc = first if s is shards[0] else _describe_shard(out_dir / s["file"])
        if {k: (v["shape"], v["dtype"]) for k, v in desc.items()} != \
                {k: (v["shape"], v["dtype"]) for k, v in datasets.items()}:
            found = {k: (v["shape"], v["dtype"]) for k, v in desc.items()}
            raise DataError(f"{out_dir / s['file']}: datasets {found} differ from those of {shards[0]['file']}")
        bad = {k: v["n"] for k, v in desc.items() if v["n"] != s["num_samples"]}
        if bad:
            raise DataError(f"{out_dir / s['file']}: sample counts {bad} differ from the shard info "
                            f"({s['num_samples']})")
        for name, d in desc.items():
            datasets[name]["chunk_samples"] = max(datasets[name]["chunk_samples"], d["chunk_samples"])
    provenance = {k: _json_attr(v) for k, v in provenance.items()}
    provenance.setdefault("version", _version())
    manifest = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "dataset_id": dataset_id(shards),
                "num_samples": sum(s["num_samples"] for s in shards), "datasets": datasets, "shards": shards,
                "statistics": statistics, "provenance": provenance, "layout": layout}
    if grid is not None:
        manifest["grid"] = grid
    if discretisation is not None:
        manifest["discretisation"] = discretisation
    return _write_manifest_file(out_dir / MANIFEST_NAME, manifest)


def _write_manifest_file(path: pathlib.Path, manifest: dict) -> pathlib.Path:
    try:
        return atomic_write_json(path, manifest)
    except OSError as exc:
        raise DataError(os_message(exc)) from None


def check_shard_file(name: Any, where: str, entry: int) -> None:
    """Refuse a shard entry that is not a relative path inside the data-set folder (DataError)."""
    text = name if isinstance(name, str) else ""
    rel = pathlib.PurePosixPath(text.replace("\\", "/"))
    if not rel.parts or rel.is_absolute() or ".." in rel.parts or ":" in rel.parts[0] or "\0" in text:
        raise DataError(f"{where}: shard entry {entry} names {shown(name)}, which is not inside the data-set folder "
                        "(shard files are paths relative to the folder, without '..')")


def _version() -> str:
    from bcrdist import __version__

    return __version__


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One dataset of a data set: per-sample `shape`, `dtype`, and the largest `chunk_samples` of any shard."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    chunk_samples: int

    @property
    def sample_nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A parsed and checked `manifest.json`. `starts` (S+1,) holds each shard's first index, then N."""

    root: pathlib.Path
    num_samples: int
    datasets: dict[str, DatasetSpec]
    shards: list[dict]
    starts: np.ndarray
    statistics: dict | None
    provenance: dict
    layout: dict | None
    dataset_id: str
    raw: dict

    @property
    def path(self) -> pathlib.Path:
        return self.root / MANIFEST_NAME

    @property
    def grid(self) -> GridInfo | None:
        """The data set's grid record (`GridInfo`), None for data sets written without one (before grid records,
        or converted without `--k`/`--box`); DataError for a malformed record."""
        record = self.raw.get("grid")
        return None if record is None else GridInfo.from_record(record, f"{self.path}: grid")

    def shard_path(self, i: int) -> pathlib.Path:
        return self.root / self.shards[i]["file"]

    def shard_of(self, indices: np.ndarray) -> np.ndarray:
        """Shard number of each global sample index (int64 array of the same shape)."""
        return np.searchsorted(self.starts, indices, side="right") - 1

    def field_statistics(self, field: str) -> dict:
        """Statistics of `field` ('coe', or 'farfield.real' for a complex dataset); DataError if absent."""
        stats = (self.statistics or {}).get(field)
        if stats is None:
            raise DataError(f"{self.path}: no statistics for {shown(field)}; run `bcrdist stats {self.root}` first")
        return stats


def read_manifest(path: PathLike) -> Manifest:
    """Read and check a data set's manifest; `path` is the data-set directory or its manifest.json."""
    path = pathlib.Path(path)
    root = path.parent if path.name == MANIFEST_NAME or path.is_file() else path
    mpath = root / MANIFEST_NAME
    try:
        raw = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise DataError(f"{mpath}: no manifest (is {root} a bcrdist data set? `bcrdist shard` makes one)") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{mpath}: unreadable manifest: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
        raise DataError(f"{mpath}: not a {FORMAT_NAME} manifest")
    if not isinstance(raw.get("format_version"), int) or raw["format_version"] > FORMAT_VERSION:
        raise DataError(f"{mpath}: format_version {shown(raw.get('format_version'))} is not supported "
                        f"(this bcrdist reads ≤ {FORMAT_VERSION})")
    try:
        for entry, s in enumerate(raw["shards"]):
            check_shard_file(s.get("file") if isinstance(s, dict) else None, str(mpath), entry)
        shards = _sorted_contiguous([dict(s) for s in raw["shards"]], str(mpath))
        if not shards:
            raise DataError(f"{mpath}: no shards")
        datasets = {name: DatasetSpec(name, tuple(int(x) for x in d["shape"]),
                                      _check_dtype(d["dtype"], f"{mpath}: dataset {shown(name)}"),
                                      int(d.get("chunk_samples", 1)))
                    for name, d in raw["datasets"].items()}
        num_samples = int(raw["num_samples"])
    except DataError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{mpath}: malformed manifest ({type(exc).__name__}: {exc})") from None
    total = sum(int(s["num_samples"]) for s in shards)
    if total != num_samples:
        raise DataError(f"{mpath}: num_samples {num_samples} differs from the shards' total {total}")
    if not datasets:
        raise DataError(f"{mpath}: no datasets")
    starts = np.array([int(s["first_index"]) for s in shards] + [num_samples], dtype=np.int64)
    return Manifest(root=root, num_samples=num_samples, datasets=datasets, shards=shards, starts=starts,
                    statistics=raw.get("statistics"), provenance=raw.get("provenance") or {},
                    layout=raw.get("layout"), dataset_id=str(raw.get("dataset_id") or dataset_id(shards)),
                    raw=raw)


def update_manifest(path: PathLike, *, expect_id: str | None = None, **changes: Any) -> pathlib.Path:
    """Replace top-level entries of an existing manifest (e.g. `statistics=`), atomically.

    `expect_id`: the data set the changes were computed for; a manifest that now describes another data set
    (replaced meanwhile) is refused instead of being given them.
    """
    manifest = read_manifest(path)
    if expect_id is not None and manifest.dataset_id != expect_id:
        raise DataError(f"{manifest.path}: now describes data set {manifest.dataset_id}, not {expect_id} (replaced "
                        "while the update was computed); nothing written")
    raw = dict(manifest.raw)
    raw.update(changes)
    return _write_manifest_file(manifest.path, raw)


def check_shard_bytes(manifest: Manifest, shard: int, fd: int | None = None) -> None:
    """Refuse a shard whose size or SHA-256 differs from the manifest's entry (DataError naming the file).

    `fd`: the shard already open for reading (hashed by positional reads); else it is opened here.
    """
    path, info = manifest.shard_path(shard), manifest.shards[shard]
    try:
        own = fd is None
        fd = os.open(path, os.O_RDONLY) if own else fd
    except FileNotFoundError:
        raise DataError(f"{path}: shard file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or one_line(exc)}") from None
    try:
        size = os.fstat(fd).st_size
        if "bytes" in info and size != int(info["bytes"]):
            raise DataError(f"{path}: {size} bytes, the manifest says {info['bytes']} (truncated or replaced "
                            f"shard; run `bcrdist verify {manifest.root}`)")
        digest = fd_sha256(fd)
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or one_line(exc)}") from None
    finally:
        if own:
            os.close(fd)
    if digest != info["sha256"]:
        raise DataError(f"{path}: SHA-256 {digest[:12]}… differs from the manifest's {str(info['sha256'])[:12]}… "
                        f"(corrupt or replaced shard; run `bcrdist verify {manifest.root}`)")
