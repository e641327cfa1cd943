"""Raw reads of sample rows from shard files into batch buffers.

Reading: a rank reads only its own samples, one shuffle window at a time: its samples of the window, sorted,
are read with one request per run of back-to-back samples, scattered straight into the batch buffers
(`os.preadv` on the shard files' chunk offsets; h5py slicing when a dataset is compressed), after the whole
window was announced to the kernel (`posix_fadvise`), so the disk works on a few MiB-sized regions at a time
while batches are still drawn across `shuffle_blocks` blocks. Files are opened lazily in the process that
reads (so forked DataLoader workers never share an HDF5 handle) and kept open (up to `max_open_shards`).
"""

from __future__ import annotations

import collections
import os
import sys
import warnings

import h5py
import numpy as np

from bcrdist.data.format import Manifest, open_h5
from bcrdist.errors import DataError

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
                warnings.warn(f"{dset.file.filename}: dataset {dset.name!r}: raw read disagrees with HDF5; "
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


class _OpenShard:
    """One shard opened in this process: the h5py file (metadata, compressed data) and a raw descriptor."""

    def __init__(self, manifest: Manifest, shard: int, datasets: list[str], cache_bytes: int):
        self.path = manifest.shard_path(shard)
        info = manifest.shards[shard]
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            raise DataError(f"{self.path}: shard file not found") from None
        if "bytes" in info and size != int(info["bytes"]):
            raise DataError(f"{self.path}: {size} bytes, the manifest says {info['bytes']} (truncated or "
                            "replaced shard; run `bcrdist verify`)")
        # read-once access: a cache of a few chunks, and fully read chunks evicted first
        self.h5 = open_h5(self.path, rdcc_nbytes=cache_bytes, rdcc_w0=1.0)
        self.fd = None
        self.fields: dict[str, _Field] = {}
        try:
            self.fd = os.open(self.path, os.O_RDONLY)
            for name in datasets:
                spec = manifest.datasets[name]
                if name not in self.h5:
                    raise DataError(f"{self.path}: dataset {name!r} missing")
                dset = self.h5[name]
                expected = (int(info["num_samples"]), *spec.shape)
                if dset.shape != expected or dset.dtype != spec.dtype:
                    raise DataError(f"{self.path}: dataset {name!r} is {dset.shape} {dset.dtype}, the manifest "
                                    f"says {expected} {spec.dtype}")
                self.fields[name] = _Field(dset, self.fd, spec.sample_nbytes)
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
            raise DataError(f"{self.path}: dataset {name!r}: read failed (truncated or corrupt?): {exc}") from None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.h5.id.valid:
            self.h5.close()


class ShardPool:
    """Shards opened on demand in the current process, the least recently used closed beyond `max_open`."""

    def __init__(self, manifest: Manifest, datasets: list[str], max_open: int):
        self.manifest = manifest
        self.datasets = datasets
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
            handle = _OpenShard(self.manifest, shard, self.datasets, self.cache_bytes)
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
