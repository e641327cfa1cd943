"""Raw reads of sample rows from shard files into batch buffers.

Reading: a rank reads only its own samples, one shuffle window at a time: its samples of the window, sorted,
are read with one request per run of back-to-back samples, scattered straight into the batch buffers
(`os.preadv` on the shard files' chunk offsets; h5py slicing when a dataset is compressed), after the whole
window was announced to the kernel (`posix_fadvise`), so the disk works on a few MiB-sized regions at a time
while batches are still drawn across `shuffle_blocks` blocks. Files are opened lazily in the process that
reads (so forked DataLoader workers never share an HDF5 handle) and kept open (up to `max_open_shards`).

Checks (`ShardChecks`): before a shard's first sample is used, its SHA-256 is compared with the manifest's
(one read of the whole shard, once per shard per process — shared by the readers of a process, and by a
reader with its DataLoader workers — valid while the file's identity, i.e. device, inode, size, mtime and
ctime, is unchanged), and the reader's samples of it are scanned for NaN/inf unless the manifest's
statistics already count none in that dataset. So a corrupt or replaced shard, or a non-finite value in the
split, stops the reader before training on it, while the batches themselves are read as fast as without.
"""

from __future__ import annotations

import collections
import os
import sys
import warnings

import h5py
import numpy as np

from bcrdist.data.format import Manifest, check_shard_bytes, open_h5
from bcrdist.data.stats import proves_finite
from bcrdist.errors import DataError, shown
from bcrdist.fileio import one_line

_IOV_MAX = 1024
_INHERITED_HANDLES: list = []


class _Field:
    """How to read one dataset of one open shard: raw file offsets, or None for h5py slicing."""

    def __init__(self, dset: h5py.Dataset, fd: int, sample_nbytes: int):
        self.dset = dset
        self.filename = dset.file.filename
        self.nbytes = sample_nbytes
        self.chunk, self.offsets = 0, None
        layout = self._raw_layout(dset)
        if layout is not None:
            self.chunk, self.offsets = layout
            if not self._raw_matches_h5py(fd):
                warnings.warn(f"{dset.file.filename}: dataset {shown(dset.name)}: raw read disagrees with HDF5; "
                              "reading it through h5py", RuntimeWarning, stacklevel=2)
                self.chunk, self.offsets = 0, None

    def _raw_layout(self, dset: h5py.Dataset) -> tuple[int, np.ndarray] | None:
        """(samples per chunk, byte offset of each chunk) when the data lie unfiltered in the file."""
        n = dset.shape[0]
        if self.nbytes == 0 or dset.id.get_create_plist().get_nfilters():
            return None
        if dset.chunks is None:
            offset = dset.id.get_offset()
            return None if offset is None else (n, np.array([offset], dtype=np.int64))
        chunk = dset.chunks[0]
        if tuple(dset.chunks[1:]) != tuple(dset.shape[1:]):
            return None
        nchunks = -(-n // chunk)
        if dset.id.get_num_chunks() != nchunks:
            return None
        offsets = np.full(nchunks, -1, dtype=np.int64)
        for i in range(nchunks):
            info = dset.id.get_chunk_info(i)
            if info.filter_mask or info.size != chunk * self.nbytes or info.byte_offset is None:
                return None
            offsets[info.chunk_offset[0] // chunk] = info.byte_offset
        return (chunk, offsets) if (offsets >= 0).all() else None

    def _raw_matches_h5py(self, fd: int) -> bool:
        probe = np.empty((1, *self.dset.shape[1:]), dtype=self.dset.dtype)
        _preadv_all(fd, [probe.reshape(-1).view(np.uint8)], int(self.offsets[0]), self.filename)
        return probe.tobytes() == self.dset[0:1].tobytes()

    def _file_pos(self, local: np.ndarray) -> np.ndarray:
        """Byte offset of each sample in the file."""
        return self.offsets[local // self.chunk] + (local % self.chunk) * self.nbytes

    def advise(self, fd: int, local: np.ndarray) -> None:
        """Ask the kernel to start reading all runs now, so the reads that follow overlap on the device."""
        if self.offsets is None or not hasattr(os, "posix_fadvise"):
            return
        file_pos = self._file_pos(local)
        for a, b in _runs(np.diff(file_pos) == self.nbytes):
            os.posix_fadvise(fd, int(file_pos[a]), (b - a) * self.nbytes, os.POSIX_FADV_WILLNEED)

    def read(self, fd: int, local: np.ndarray, dests: list[np.ndarray], batch: np.ndarray,
             row: np.ndarray) -> None:
        """dests[batch[j]][row[j]] = dataset[local[j]]; local sorted unique, dests (R, …) C-contiguous."""
        if self.offsets is None:
            for a, b in _runs(np.diff(local) == 1):
                data = self.dset[int(local[a]):int(local[b - 1]) + 1]
                for k in np.unique(batch[a:b]):
                    sel = batch[a:b] == k
                    dests[k][row[a:b][sel]] = data[sel]
            return
        flats = [d.reshape(len(d), -1).view(np.uint8) for d in dests]
        file_pos = self._file_pos(local)
        in_file_run = np.diff(file_pos) == self.nbytes
        # one system call per run of back-to-back samples in the file, one buffer per piece of that run that
        # is also back to back in one destination array
        pieces = _runs(in_file_run & (np.diff(row) == 1) & (np.diff(batch) == 0))
        continues = [False, *in_file_run.tolist()]
        pos, rows, batches = file_pos.tolist(), row.tolist(), batch.tolist()
        views: list[np.ndarray] = []
        for a, b in pieces:
            if views and not continues[a]:
                _preadv_all(fd, views, offset, self.filename)
                views = []
            if not views:
                offset = pos[a]
            views.append(flats[batches[a]][rows[a]:rows[a] + b - a].reshape(-1))
        if views:
            _preadv_all(fd, views, offset, self.filename)


def _runs(continues: np.ndarray) -> list[tuple[int, int]]:
    """[(start, stop)] of the maximal runs of a sequence; continues[j]: element j+1 extends element j's run."""
    edges = [0, *(np.flatnonzero(~continues) + 1).tolist(), len(continues) + 1]
    return list(zip(edges[:-1], edges[1:]))


def _preadv_all(fd: int, views: list, offset: int, filename: str) -> None:
    """Fill `views` from the file at `offset` (one system call per 1024 buffers unless a read comes up short)."""
    pending = [memoryview(v).cast("B") for v in views]
    while pending:
        batch = pending[:_IOV_MAX]
        wanted = sum(len(v) for v in batch)
        if hasattr(os, "preadv"):
            got = os.preadv(fd, batch, offset)
        else:
            got = 0
            for v in batch:
                data = os.pread(fd, len(v), offset + got)
                v[:len(data)] = data
                got += len(data)
                if len(data) < len(v):
                    break
        if got == 0 and wanted:
            raise DataError(f"{filename}: unexpected end of file at byte {offset} (truncated shard?)")
        offset += got
        rest = pending[len(batch):]
        done = 0
        for i, v in enumerate(batch):
            if got >= done + len(v):
                done += len(v)
                continue
            rest = [v[got - done:]] + batch[i + 1:] + rest
            break
        pending = rest


_SCAN_BYTES = 8 << 20
_IDENTITY = ("st_dev", "st_ino", "st_size", "st_mtime_ns", "st_ctime_ns")
# (file identity, SHA-256) of every shard file whose bytes this process found equal to a manifest's: the
# readers of one process (training, validation, test, normalisation) then hash each shard once
_MATCHED: set[tuple] = set()


class ShardChecks:
    """What a reader checks when it first opens a shard (module docstring), and which shards passed.

    `indices` the reader's split (sorted global indices), `describe` how messages name it ("split 'train'").
    `passed` (S, 6) int64 array or tensor, zeros at first, in shared memory to reach DataLoader workers: per
    shard 1 and the identity of the file that passed.
    """

    def __init__(self, manifest: Manifest, datasets: list[str], indices: np.ndarray, describe: str, passed):
        self.manifest, self.indices, self.describe, self.passed = manifest, indices, describe, passed
        self.scan = [d for d in datasets if manifest.datasets[d].dtype.kind in "fc" and not proves_finite(manifest, d)]

    @staticmethod
    def _identity(fd: int) -> list[int]:
        st = os.fstat(fd)
        return [1, *(int(getattr(st, key)) for key in _IDENTITY)]

    def known_good(self, shard: int, fd: int) -> bool:
        """This very file (same identity) passed the checks before, in this process or another reader's."""
        return np.asarray(self.passed)[shard].tolist() == self._identity(fd)

    def mark_good(self, shard: int, fd: int) -> None:
        np.asarray(self.passed)[shard] = self._identity(fd)

    def check_bytes(self, shard: int, fd: int) -> None:
        """Size and SHA-256 of the open shard against the manifest (DataError), unless this process found
        this very file to match that checksum before."""
        key = (*self._identity(fd), str(self.manifest.shards[shard]["sha256"]))
        if key not in _MATCHED:
            check_shard_bytes(self.manifest, shard, fd)
            _MATCHED.add(key)

    def check_finite(self, shard: int, handle: "_OpenShard") -> None:
        """NaN/inf in the reader's samples of the shard, for the datasets the statistics do not clear."""
        lo, hi = int(self.manifest.starts[shard]), int(self.manifest.starts[shard + 1])
        a, b = np.searchsorted(self.indices, [lo, hi])
        local = self.indices[a:b] - lo
        for name in self.scan:
            spec = self.manifest.datasets[name]
            rows = max(1, min(len(local), _SCAN_BYTES // max(1, spec.sample_nbytes)))
            buf = np.empty((rows, *spec.shape), dtype=spec.dtype)
            for start in range(0, len(local), rows):
                part = local[start:start + rows]
                dest = buf[:len(part)]
                handle.read(name, part, [dest], np.zeros(len(part), dtype=np.int64), np.arange(len(part)))
                finite = np.isfinite(dest.reshape(len(part), -1)).all(axis=1)
                if not finite.all():
                    sample = lo + int(part[np.argmin(finite)])
                    raise DataError(f"{handle.path}: dataset {shown(name)}: non-finite value (NaN or inf) in sample "
                                    f"{sample} of {self.describe}; the reader refuses it")


class _OpenShard:
    """One shard opened in this process: the h5py file (metadata, compressed data) and a raw descriptor.

    With `checks`, a shard not known to be good is checked (`ShardChecks`) before anything is read from it.
    """

    def __init__(self, manifest: Manifest, shard: int, datasets: list[str], cache_bytes: int,
                 checks: ShardChecks | None = None):
        self.path = manifest.shard_path(shard)
        info = manifest.shards[shard]
        self.h5 = None
        self.fd = None
        self.fields: dict[str, _Field] = {}
        try:
            self.fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise DataError(f"{self.path}: shard file not found") from None
        try:
            size = os.fstat(self.fd).st_size
            if "bytes" in info and size != int(info["bytes"]):
                raise DataError(f"{self.path}: {size} bytes, the manifest says {info['bytes']} (truncated or "
                                "replaced shard; run `bcrdist verify`)")
            fresh = checks is not None and not checks.known_good(shard, self.fd)
            if fresh:
                checks.check_bytes(shard, self.fd)
            # read-once access: a cache of a few chunks, and fully read chunks evicted first
            self.h5 = open_h5(self.path, rdcc_nbytes=cache_bytes, rdcc_w0=1.0)
            for name in datasets:
                spec = manifest.datasets[name]
                if name not in self.h5:
                    raise DataError(f"{self.path}: dataset {shown(name)} missing")
                dset = self.h5[name]
                expected = (int(info["num_samples"]), *spec.shape)
                if dset.shape != expected or dset.dtype != spec.dtype:
                    raise DataError(f"{self.path}: dataset {shown(name)} is {dset.shape} {dset.dtype}, the manifest "
                                    f"says {expected} {spec.dtype}")
                self.fields[name] = _Field(dset, self.fd, spec.sample_nbytes)
            if fresh:
                checks.check_finite(shard, self)
                checks.mark_good(shard, self.fd)
        except BaseException:
            self.close()
            raise

    def advise(self, local: np.ndarray) -> None:
        for field in self.fields.values():
            field.advise(self.fd, local)

    def read(self, name: str, local: np.ndarray, dests: list[np.ndarray], batch: np.ndarray,
             row: np.ndarray) -> None:
        try:
            self.fields[name].read(self.fd, local, dests, batch, row)
        except OSError as exc:
            raise DataError(f"{self.path}: dataset {shown(name)}: read failed (truncated or corrupt?): "
                            f"{one_line(exc)}") from None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.h5 is not None and self.h5.id.valid:
            self.h5.close()


class ShardPool:
    """Shards opened on demand in the current process, the least recently used closed beyond `max_open`;
    each checked by `checks` (when given) before its first use."""

    def __init__(self, manifest: Manifest, datasets: list[str], max_open: int, checks: ShardChecks | None = None):
        self.manifest = manifest
        self.datasets = datasets
        self.checks = checks
        self.max_open = max(1, int(max_open))
        widest = max(manifest.datasets[d].chunk_samples * manifest.datasets[d].sample_nbytes for d in datasets)
        self.cache_bytes = int(max(1 << 20, 2 * widest))
        self._pid = os.getpid()
        self._open: collections.OrderedDict[int, _OpenShard] = collections.OrderedDict()

    def _shard(self, shard: int) -> _OpenShard:
        if self._pid != os.getpid():
            # inherited through fork: never touch the parent's HDF5 handles, not even to close them (that
            # would run HDF5 code on the parent's library state); keep them referenced and start afresh
            _INHERITED_HANDLES.append(self._open)
            self._open = collections.OrderedDict()
            self._pid = os.getpid()
        handle = self._open.get(shard)
        if handle is None:
            handle = _OpenShard(self.manifest, shard, self.datasets, self.cache_bytes, self.checks)
            self._open[shard] = handle
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)[1].close()
        else:
            self._open.move_to_end(shard)
        return handle

    def read(self, indices: np.ndarray, batch: np.ndarray, row: np.ndarray,
             out: dict[str, list[np.ndarray]]) -> None:
        """out[name][batch[j]][row[j]] = sample indices[j] for every dataset; `indices` sorted and unique."""
        for shard, a, b in self._segments(indices):
            handle = self._shard(shard)
            local = indices[a:b] - self.manifest.starts[shard]
            for name in self.datasets:
                handle.read(name, local, out[name], batch[a:b], row[a:b])

    def check(self, indices: np.ndarray) -> None:
        """Open, and so check (`checks`), every shard holding one of the samples `indices` (sorted, unique)
        now, then close them again."""
        for shard, _, _ in self._segments(indices):
            self._shard(shard)
        self.close()

    def advise(self, indices: np.ndarray) -> None:
        """Announce upcoming reads of these samples (sorted, unique) to the kernel (`posix_fadvise`)."""
        for shard, a, b in self._segments(indices):
            self._shard(shard).advise(indices[a:b] - self.manifest.starts[shard])

    def _segments(self, indices: np.ndarray) -> list[tuple[int, int, int]]:
        """[(shard, start, stop)]: the sorted `indices` split by shard."""
        shard_of = self.manifest.shard_of(indices)
        return [(int(shard_of[a]), a, b) for a, b in _runs(np.diff(shard_of) == 0)]

    def close(self) -> None:
        if self._pid == os.getpid():
            for handle in self._open.values():
                handle.close()
        self._open = collections.OrderedDict()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_open"] = collections.OrderedDict()
        return state


class BufferArenas:
    """Group-sized read buffers, recycled once nothing refers to them any more.

    A window's batches are views into one arena per dataset. Fresh buffers of this size would come from the
    kernel zero-filled and page-faulted every time, which costs as much as the read itself when the data are
    in the page cache. A batch tensor (`torch.from_numpy` of a view) keeps its view and so the arena alive; an
    arena whose only references are our own is free. Pinned or device copies do not refer to it.
    """

    def __init__(self, shapes: dict[str, tuple[tuple[int, ...], np.dtype]], capacity: int, keep: int = 4):
        self.shapes, self.capacity, self.keep = shapes, capacity, keep
        self._arenas: list[dict[str, np.ndarray]] = []

    def take(self, rows: int) -> dict[str, np.ndarray]:
        """Buffers of at least `rows` rows per dataset: a free arena, a new one, or (too large) a one-off."""
        if rows <= self.capacity:
            for arena in self._arenas:
                # references: the arena dict, the loop variable and getrefcount's argument
                if all(sys.getrefcount(arr) == 3 for arr in arena.values()):
                    return arena
        arena = {name: np.empty((max(rows, self.capacity), *shape), dtype=dtype)
                 for name, (shape, dtype) in self.shapes.items()}
        if rows <= self.capacity and len(self._arenas) < self.keep:
            self._arenas.append(arena)
        return arena

    def __getstate__(self):
        return {**self.__dict__, "_arenas": []}
