"""Streaming per-field statistics (count, min, max, mean, std, non-finite count) of a sharded data set.

A field is a real dataset (`coe`) or one part of a complex dataset (`farfield.real`, `farfield.imag`).
Shards are read in slabs of bounded size; partial results are merged with Chan et al.'s pairwise update,
always in shard order, so the result does not depend on the number of MPI ranks. Non-finite values are
counted and left out of the other statistics.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator

import h5py
import numpy as np

from bcrdist.data.format import open_h5, read_manifest, update_manifest
from bcrdist.distributed.mpi import gather_or_raise, world
from bcrdist.errors import DataError, shown
from bcrdist.fileio import one_line, os_message

SLAB_BYTES = 64 << 20


@dataclasses.dataclass
class RunningStats:
    """Mergeable summary of a stream of numbers; `m2` is the sum of squared deviations from the mean."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    nonfinite: int = 0

    def update(self, values: np.ndarray) -> None:
        """Add all entries of a real array (any shape)."""
        values = np.asarray(values)
        finite = np.isfinite(values)
        if not finite.all():
            self.nonfinite += int(values.size - np.count_nonzero(finite))
            values = values[finite]
        if values.size == 0:
            return
        mean = float(np.mean(values, dtype=np.float64))
        m2 = float(np.var(values, dtype=np.float64)) * values.size
        self.merge(RunningStats(int(values.size), mean, m2, float(values.min()), float(values.max())))

    def merge(self, other: "RunningStats") -> None:
        self.nonfinite += other.nonfinite
        if other.count == 0:
            return
        if self.count == 0:
            self.count, self.mean, self.m2 = other.count, other.mean, other.m2
        else:
            n = self.count + other.count
            delta = other.mean - self.mean
            self.mean += delta * other.count / n
            self.m2 += other.m2 + delta * delta * self.count * other.count / n
            self.count = n
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def to_dict(self) -> dict:
        """JSON form; min/max/mean/std are None when there was no finite value."""
        has = self.count > 0
        return {"count": self.count, "min": self.min if has else None, "max": self.max if has else None,
                "mean": self.mean if has else None, "std": math.sqrt(self.m2 / self.count) if has else None,
                "nonfinite": self.nonfinite}


def field_parts(name: str, dtype: np.dtype) -> list[tuple[str, str | None]]:
    """[(field, part)]: [("coe", None)] for a real dataset, [("f.real", "real"), ("f.imag", "imag")] for complex."""
    if np.dtype(dtype).kind == "c":
        return [(f"{name}.real", "real"), (f"{name}.imag", "imag")]
    return [(name, None)]


def proves_finite(manifest, name: str) -> bool:
    """True when the manifest's statistics cover every value of dataset `name` and count none non-finite."""
    spec = manifest.datasets[name]
    values = manifest.num_samples * int(np.prod(spec.shape, dtype=np.int64))
    for field, _ in field_parts(name, spec.dtype):
        stats = (manifest.statistics or {}).get(field)
        if not isinstance(stats, dict) or stats.get("nonfinite") != 0 or stats.get("count") != values:
            return False
    return True


def iter_slabs(dset: h5py.Dataset, slab_bytes: int = SLAB_BYTES) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (start, dset[start:start+k]) covering the sample axis, k chunk-aligned and about `slab_bytes`."""
    n = dset.shape[0]
    sample_nbytes = max(1, int(np.prod(dset.shape[1:], dtype=np.int64)) * dset.dtype.itemsize)
    chunk = dset.chunks[0] if dset.chunks else 1
    step = max(chunk, (slab_bytes // sample_nbytes) // chunk * chunk)
    for start in range(0, n, step):
        try:
            yield start, dset[start:start + step]
        except OSError as exc:
            raise DataError(f"{dset.file.filename}: dataset {shown(dset.name.lstrip('/'))}: read failed at sample "
                            f"{start} (truncated or corrupt?): {one_line(exc)}") from None


def shard_statistics(path, dtypes: dict[str, np.dtype], slab_bytes: int = SLAB_BYTES) -> dict[str, RunningStats]:
    """Statistics of every field of the shard file `path`; `dtypes` maps its dataset names to their dtypes."""
    out: dict[str, RunningStats] = {}
    with open_h5(path) as fh:
        for name, dtype in dtypes.items():
            if name not in fh:
                raise DataError(f"{path}: dataset {shown(name)} missing")
            parts = field_parts(name, dtype)
            for field, _ in parts:
                out[field] = RunningStats()
            for _, slab in iter_slabs(fh[name], slab_bytes):
                for field, part in parts:
                    out[field].update(getattr(slab, part) if part else slab)
    return out


def merge_statistics(per_shard: dict[int, dict[str, RunningStats]]) -> dict[str, dict]:
    """Combine per-shard statistics in shard order → {field: RunningStats.to_dict()}."""
    total: dict[str, RunningStats] = {}
    for shard in sorted(per_shard):
        for field, stats in per_shard[shard].items():
            total.setdefault(field, RunningStats()).merge(stats)
    return {field: stats.to_dict() for field, stats in total.items()}


def compute_statistics(path, *, comm=None, slab_bytes: int = SLAB_BYTES, manifest=None) -> dict[str, dict]:
    """Whole-data-set statistics per field. Under MPI each rank reads every size-th shard."""
    manifest = manifest if manifest is not None else read_manifest(path)
    comm = comm if comm is not None else world()
    dtypes = {name: spec.dtype for name, spec in manifest.datasets.items()}
    mine, error = {}, None
    try:
        for shard in range(comm.rank, len(manifest.shards), comm.size):
            mine[shard] = shard_statistics(manifest.shard_path(shard), dtypes, slab_bytes)
    except (DataError, OSError) as exc:
        error = exc if isinstance(exc, DataError) else DataError(os_message(exc))
    per_shard: dict[int, dict[str, RunningStats]] = {}
    for part in gather_or_raise(comm, mine, error):
        per_shard.update(part)
    return merge_statistics(per_shard)


def store_statistics(path, *, comm=None, slab_bytes: int = SLAB_BYTES) -> dict[str, dict]:
    """`compute_statistics`, then write them into the manifest (rank 0 writes; all ranks return them).

    Only the statistics entry changes, and only in the manifest of the data set they were computed for: if
    the manifest was replaced meanwhile, nothing is written (DataError). A failed write leaves the old one.
    """
    comm = comm if comm is not None else world()
    manifest = read_manifest(path)
    stats = compute_statistics(path, comm=comm, slab_bytes=slab_bytes, manifest=manifest)
    error = None
    if comm.rank == 0:
        try:
            update_manifest(path, expect_id=manifest.dataset_id, statistics=stats)
        except DataError as exc:
            error = exc
    gather_or_raise(comm, None, error)
    return stats
