"""`bcrdist verify`: check a sharded data set against its manifest.

Checks: manifest structure and shard contiguity; per shard the size, SHA-256, HDF5 readability, range
attributes, dataset names, shapes and dtypes, and (scan) that every value is finite; the statistics' counts;
every split file in `splits/`. Under MPI the shards are divided among the ranks.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from bcrdist.data.format import Manifest, open_h5, read_manifest
from bcrdist.fileio import file_sha256
from bcrdist.distributed.mpi import world
from bcrdist.data.splits import list_splits, load_split
from bcrdist.data.stats import field_parts, iter_slabs
from bcrdist.errors import DataError, shown


def check_shard(manifest: Manifest, shard: int, *, checksums: bool = True, scan: bool = True) -> list[str]:
    """Problems found in one shard, each one line naming the file (and dataset)."""
    info = manifest.shards[shard]
    path = manifest.shard_path(shard)
    if not path.is_file():
        return [f"{path}: shard file missing"]
    size = path.stat().st_size
    if "bytes" in info and size != int(info["bytes"]):
        return [f"{path}: {size} bytes, the manifest says {info['bytes']} (truncated or replaced)"]
    if checksums and file_sha256(path) != info["sha256"]:
        return [f"{path}: SHA-256 mismatch (corrupt or replaced shard)"]
    problems = []
    try:
        with open_h5(path) as fh:
            for key in ("first_index", "num_samples"):
                if key in fh.attrs and int(fh.attrs[key]) != int(info[key]):
                    problems.append(f"{path}: attribute {key} = {int(fh.attrs[key])}, the manifest says {info[key]}")
            extra = sorted(set(fh) - set(manifest.datasets))
            if extra:
                problems.append(f"{path}: datasets {extra} not in the manifest")
            for name, spec in manifest.datasets.items():
                if name not in fh:
                    problems.append(f"{path}: dataset {shown(name)} missing")
                    continue
                dset = fh[name]
                expected = (int(info["num_samples"]), *spec.shape)
                if dset.shape != expected or dset.dtype != spec.dtype:
                    problems.append(f"{path}: dataset {shown(name)} is {dset.shape} {dset.dtype}, the manifest says "
                                    f"{expected} {spec.dtype}")
                    continue
                if scan and dset.dtype.kind in "fc":
                    for start, slab in iter_slabs(dset):
                        bad = ~np.isfinite(slab.reshape(len(slab), -1)).all(axis=1)
                        if bad.any():
                            sample = int(info["first_index"]) + start + int(np.argmax(bad))
                            problems.append(f"{path}: dataset {shown(name)}: non-finite value (NaN or inf) in "
                                            f"sample {sample}")
                            break
    except DataError as exc:
        problems.append(str(exc))
    return problems


def statistics_problems(manifest: Manifest) -> list[str]:
    problems = []
    for name, spec in manifest.datasets.items():
        for field, _ in field_parts(name, spec.dtype):
            stats = (manifest.statistics or {}).get(field)
            if stats is None:
                continue
            values = manifest.num_samples * int(np.prod(spec.shape, dtype=np.int64))
            if int(stats.get("count", -1)) + int(stats.get("nonfinite", 0)) != values:
                problems.append(f"{manifest.path}: statistics of {shown(field)} cover {stats.get('count')} values, "
                                f"the data set has {values} (stale statistics; run `bcrdist stats`)")
    return problems


def verify_dataset(path, *, checksums: bool = True, scan: bool = True, comm=None,
                   log: Callable[[str], None] = lambda _: None) -> list[str]:
    """All problems found in the data set at `path` (empty when it is sound); the same list on every rank."""
    comm = comm if comm is not None else world()
    manifest = read_manifest(path)
    mine = []
    for shard in range(comm.rank, len(manifest.shards), comm.size):
        found = check_shard(manifest, shard, checksums=checksums, scan=scan)
        log(f"{manifest.shards[shard]['file']}: " + ("ok" if not found else f"{len(found)} problem(s)"))
        mine.append((shard, found))
    everyone = sorted(item for part in comm.allgather(mine) for item in part)
    problems = [p for _, found in everyone for p in found]
    problems += statistics_problems(manifest)
    for split in list_splits(manifest.root):
        try:
            load_split(manifest, split)
        except DataError as exc:
            problems.append(str(exc))
    return problems
