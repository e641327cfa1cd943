"""Rank-aware batch reader for sharded data sets, for DDP training and exact distributed evaluation.

Order of an epoch (a function of seed, epoch, the split and the two block parameters only — never of the
rank, the world size, the worker count or the batch size):

1. the split's samples, in index order, are cut into blocks of `block_size` consecutive samples;
2. the blocks are permuted by a generator seeded with (seed, epoch);
3. consecutive runs of `shuffle_blocks` blocks form shuffle windows; the samples inside each window are
   permuted with the same generator.

Training: the order is cut into global batches of world·batch samples; at step i rank r takes the r-th
batch-sized slice of global batch i, so the samples of a step do not depend on how the global batch is split
over ranks (W ranks × B = one process × W·B, as with torch's DistributedSampler).

- `drop_last=True` (default): ⌊N / (world·batch)⌋ batches on every rank; the last
  N mod (world·batch) ≤ world·batch − 1 samples of the epoch's order are dropped (different ones each epoch);
- `drop_last=False`: ⌈N / (world·batch)⌉ batches on every rank, the shortfall filled by repeating samples
  from the start of the epoch's order (like DistributedSampler);
- `exact=True` (evaluation): each sample exactly once, no padding; rank r gets the contiguous part
  [⌊rN/W⌋, ⌊(r+1)N/W⌋) of the order, so counts differ by at most one and the last batch may be short. Ranks
  may then run different numbers of batches: compute per-rank sums and all-reduce them after the loop (see
  `rank_sample_counts`), never a collective per batch.

Reading: a rank reads only its own samples, one shuffle window at a time: its samples of the window, sorted,
are read with one request per run of back-to-back samples, scattered straight into the batch buffers
(`os.preadv` on the shard files' chunk offsets; h5py slicing when a dataset is compressed), after the whole
window was announced to the kernel (`posix_fadvise`), so the disk works on a few MiB-sized regions at a time
while batches are still drawn across `shuffle_blocks` blocks. Files are opened lazily in the process that
reads (so forked DataLoader workers never share an HDF5 handle) and kept open (up to `max_open_shards`).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import queue
import signal
import sys
import threading
import warnings
from typing import Iterator

import h5py
import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from bcrdist.data.format import Manifest, open_h5, read_manifest
from bcrdist.data.preprocess import Preprocess, Preprocessor
from bcrdist.data.splits import load_split
from bcrdist.errors import ConfigError, DataError

SHUFFLE_STREAM = 0x53485546
STATE_VERSION = 1
BLOCK_BYTES = 4 << 20
_IOV_MAX = 1024
_INHERITED_HANDLES: list = []


def default_block_size(sample_nbytes: int) -> int:
    """Largest power of two ≤ 4 MiB / bytes per sample, between 1 and 1024."""
    n = max(1, BLOCK_BYTES // max(1, sample_nbytes))
    return int(min(1024, 1 << (n.bit_length() - 1)))


def epoch_order(num_samples: int, *, seed: int, epoch: int, shuffle: bool, block_size: int,
                shuffle_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions, window) of one epoch, both (num_samples,) int64.

    positions[k] is the position in the split (0 … N−1) of the k-th sample of the epoch's global order;
    window[k] is the shuffle window that sample belongs to (windows are read as a unit).
    """
    n, bs = int(num_samples), int(block_size)
    nblocks = -(-n // bs)
    if not shuffle:
        pos = np.arange(n, dtype=np.int64)
        return pos, pos // (bs * shuffle_blocks)
    rng = np.random.default_rng(np.random.SeedSequence([SHUFFLE_STREAM, int(seed), int(epoch)]))
    blocks = rng.permutation(nblocks).astype(np.int64)
    starts = blocks * bs
    lengths = np.minimum(bs, n - starts)
    block_window = np.arange(nblocks, dtype=np.int64) // shuffle_blocks
    # block order → sample positions, without a Python loop: the k-th sample of block b is starts[b] + k
    pos = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(n, dtype=np.int64)
    window = np.repeat(block_window, lengths)
    within = np.lexsort((rng.random(n), window))
    return pos[within], window


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


class _ShardPool:
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


class _Arenas:
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


@dataclasses.dataclass(frozen=True)
class _Part:
    """This rank's share of an epoch: batch i holds global-order positions lo + i·stride + (0 … len−1), mod N.

    Training: lo = rank·B, stride = world·B (global batch i is positions [i·world·B, (i+1)·world·B), rank r
    its r-th slice). Evaluation: lo = ⌊rank·N/world⌋, stride = B (a contiguous part of the order).
    """

    lo: int
    stride: int
    count: int
    batch_size: int

    @property
    def num_batches(self) -> int:
        return -(-self.count // self.batch_size)

    def positions(self, batch: int, n: int) -> np.ndarray:
        length = min(self.batch_size, self.count - batch * self.batch_size)
        return (self.lo + batch * self.stride + np.arange(length, dtype=np.int64)) % n


class ShardedDataset(IterableDataset):
    """Batches of one rank's part of a sharded data set (or of one split of it).

    Parameters: `path` the data-set directory; `split` None (all samples), a split name ("train" →
    path/splits/train.json), a split file, or a sorted array of global sample indices; `rank`/`world_size` this process's place in the job; `seed`,
    `shuffle`, `drop_last`, `exact` the order and partition rules (module docstring); `batch_size` samples per
    batch on this rank; `preprocess` a `Preprocess` (batches {"index", "input", "target", …}) or None (batches
    {"index", <dataset>: (B, …) raw array, …} for `datasets`, default all); `block_size` samples per contiguous
    read block (default ≈ 4 MiB of data), `shuffle_blocks` blocks per shuffle window (default 8);
    `preload` reads the whole split into memory once (in this process, before workers fork, so they share it);
    `max_open_shards` bounds the open files per process.

    Each batch is a dict of tensors; "index" (B,) int64 holds the global sample indices. Iterate directly, via
    `loader()` (prefetch thread or worker processes, pinned memory, exact `state_dict`), or through a
    `torch.utils.data.DataLoader(ds, batch_size=None, num_workers=k)`, which yields the same batches in the
    same order for any k.
    """

    def __init__(self, path, *, split=None, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = True, exact: bool = False, batch_size: int = 32,
                 preprocess: Preprocess | None = None, datasets: list[str] | None = None,
                 block_size: int | None = None, shuffle_blocks: int = 8, preload: bool = False,
                 max_open_shards: int = 64):
        super().__init__()
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is outside [0, world_size={world_size})")
        if batch_size < 1 or shuffle_blocks < 1 or (block_size is not None and block_size < 1):
            raise ConfigError(f"batch_size ({batch_size}), block_size ({block_size}) and shuffle_blocks "
                              f"({shuffle_blocks}) must be ≥ 1")
        if seed < 0:
            raise ConfigError(f"seed must be ≥ 0, got {seed}")
        self.manifest = read_manifest(path)
        self.split = split
        self.indices = load_split(self.manifest, split)
        self.rank, self.world_size, self.seed = int(rank), int(world_size), int(seed)
        self.shuffle, self.drop_last, self.exact = bool(shuffle), bool(drop_last), bool(exact)
        self.batch_size = int(batch_size)
        self.preprocessor = Preprocessor(preprocess, self.manifest) if preprocess is not None else None
        if self.preprocessor is not None:
            if datasets is not None:
                raise ConfigError("give either preprocess or datasets, not both")
            self.datasets = self.preprocessor.datasets
        else:
            self.datasets = list(datasets) if datasets is not None else list(self.manifest.datasets)
            missing = [d for d in self.datasets if d not in self.manifest.datasets]
            if missing:
                raise DataError(f"{self.manifest.path}: no datasets {missing}")
        sample_nbytes = sum(self.manifest.datasets[d].sample_nbytes for d in self.datasets)
        self.block_size = int(block_size) if block_size is not None else default_block_size(sample_nbytes)
        self.shuffle_blocks = int(shuffle_blocks)
        self.part = self._part(self.rank)
        self._pool = _ShardPool(self.manifest, self.datasets, max_open_shards)
        self._arenas = _Arenas({d: (self.manifest.datasets[d].shape, self.manifest.datasets[d].dtype)
                                for d in self.datasets}, self.block_size * self.shuffle_blocks + self.batch_size)
        self._preloaded: dict[str, np.ndarray] | None = None
        if preload:
            self._preloaded = self._allocate(len(self.indices))
            self._pool.read(self.indices, np.zeros(len(self.indices), dtype=np.int64),
                            np.arange(len(self.indices)), {k: [v] for k, v in self._preloaded.items()})
            self._pool.close()
        # epoch and pending resume point live in shared memory: DataLoader workers (persistent ones too, and
        # spawned ones) read them when an epoch starts, so set_epoch/load_state_dict always reach them
        self._shared = torch.zeros(2, dtype=torch.int64).share_memory_()
        self._consumed = 0
        self._plan: tuple[int, np.ndarray, np.ndarray] | None = None

    # --- partition --------------------------------------------------------------------------------------

    def _part(self, rank: int) -> _Part:
        n, w, b = len(self.indices), self.world_size, self.batch_size
        if self.exact:
            lo = n * rank // w
            return _Part(lo, b, n * (rank + 1) // w - lo, b)
        if self.drop_last:
            batches = n // (w * b)
            if batches == 0:
                raise ConfigError(f"{n} samples are fewer than world_size × batch_size = {w * b}; nothing to "
                                  "train on with drop_last (use a smaller batch or drop_last=False)")
        else:
            batches = -(-n // (w * b))
        return _Part(rank * b, w * b, batches * b, b)

    @property
    def num_samples(self) -> int:
        """Samples in the split (all ranks together)."""
        return len(self.indices)

    @property
    def num_batches(self) -> int:
        """Batches this rank yields per epoch (the same on every rank unless `exact`)."""
        return self.part.num_batches

    def __len__(self) -> int:
        return self.num_batches

    def rank_sample_counts(self) -> list[int]:
        """Samples each rank yields per epoch (including repeats when padding): divide all-reduced sums by these."""
        return [self._part(r).count for r in range(self.world_size)]

    @property
    def target_scale(self) -> float:
        """Factor the targets were divided by (1.0 without normalisation); multiply predictions by it."""
        return self.preprocessor.target_scale if self.preprocessor is not None else 1.0

    # --- order --------------------------------------------------------------------------------------------

    def _epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(global indices in the epoch's order, their shuffle window), cached for the last epoch asked."""
        if self._plan is None or self._plan[0] != epoch:
            pos, window = epoch_order(len(self.indices), seed=self.seed, epoch=epoch, shuffle=self.shuffle,
                                      block_size=self.block_size, shuffle_blocks=self.shuffle_blocks)
            self._plan = (epoch, self.indices[pos], window)
        return self._plan[1], self._plan[2]

    def batch_indices(self, epoch: int | None = None, rank: int | None = None) -> list[np.ndarray]:
        """Global sample indices of every batch of `rank` (default this one) in `epoch` (default current)."""
        order, _ = self._epoch_plan(self.epoch if epoch is None else epoch)
        part = self.part if rank is None else self._part(rank)
        n = len(self.indices)
        return [order[part.positions(i, n)] for i in range(part.num_batches)]

    @property
    def epoch(self) -> int:
        """The epoch the next iteration follows."""
        return int(self._shared[0])

    @property
    def _resume(self) -> int:
        return int(self._shared[1])

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration follows (call it before each epoch)."""
        epoch = int(epoch)
        if epoch < 0:
            raise ConfigError(f"epoch must be ≥ 0, got {epoch}")
        if epoch != self.epoch:
            self._shared[1] = 0
            self._consumed = 0
        self._shared[0] = epoch

    # --- state ----------------------------------------------------------------------------------------------

    def _order_key(self) -> dict:
        return {"dataset_id": self.manifest.dataset_id, "num_samples": len(self.indices), "seed": self.seed,
                "shuffle": self.shuffle, "block_size": self.block_size, "shuffle_blocks": self.shuffle_blocks,
                "mode": "exact" if self.exact else ("drop_last" if self.drop_last else "pad")}

    def state_dict(self, batches_consumed: int | None = None) -> dict:
        """Position in the data stream: the epoch and the number of this rank's batches already consumed.

        The count is tracked when the data set is iterated in this process or through `loader()`; with a
        plain multi-worker DataLoader pass it as `batches_consumed`. The state is the same on every rank (all
        ranks step together), so rank 0's copy restores every rank.
        """
        batch = self._consumed if batches_consumed is None else int(batches_consumed)
        return {"version": STATE_VERSION, "epoch": self.epoch, "batch": batch,
                "world_size": self.world_size, "batch_size": self.batch_size, **self._order_key()}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly after the last consumed batch of `state` (the next iteration yields the rest).

        The order settings must match. Mid-epoch, a training reader may change world size and batch size as
        long as their product (the global batch) is unchanged; an exact (evaluation) reader may not change
        them. At an epoch boundary (batch 0) anything goes.
        """
        key = self._order_key()
        diff = {k: (state.get(k), v) for k, v in key.items() if state.get(k) != v}
        if diff:
            raise ConfigError(f"data state does not match this reader (saved, now): {diff}")
        batch = int(state["batch"])
        saved = (state.get("world_size"), state.get("batch_size"))
        same = (saved == (self.world_size, self.batch_size) if self.exact else
                None not in saved and saved[0] * saved[1] == self.world_size * self.batch_size)
        if batch and not same:
            raise ConfigError(f"cannot resume mid-epoch with world_size × batch_size = "
                              f"{self.world_size} × {self.batch_size}; the state was saved with "
                              f"{saved[0]} × {saved[1]}")
        if not 0 <= batch <= self.num_batches:
            raise ConfigError(f"data state batch {batch} is outside [0, {self.num_batches}]")
        self._shared[0] = int(state["epoch"])
        self._shared[1] = batch
        self._consumed = batch

    def _take_resume(self) -> int:
        start = self._resume
        self._shared[1] = 0
        self._consumed = start
        return start

    # --- reading ------------------------------------------------------------------------------------------

    def _allocate(self, rows: int) -> dict[str, np.ndarray]:
        return {name: np.empty((rows, *self.manifest.datasets[name].shape), dtype=self.manifest.datasets[name].dtype)
                for name in self.datasets}

    def _read_batches(self, batches: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Per batch of global indices (repeats allowed), arrays (len, …) per dataset holding those samples.

        All samples of the group are read in one sorted sweep, straight into the batches' rows of a recycled
        arena (see `_Arenas`).
        """
        arena = self._arenas.take(sum(len(ix) for ix in batches))
        bounds = np.cumsum([0] + [len(ix) for ix in batches]).tolist()
        outs = [{name: arr[a:b] for name, arr in arena.items()} for a, b in zip(bounds[:-1], bounds[1:])]
        if self._preloaded is not None:
            for ix, out in zip(batches, outs):
                where = np.searchsorted(self.indices, ix)
                for name in self.datasets:
                    np.take(self._preloaded[name], where, axis=0, out=out[name])
            return outs
        indices = np.concatenate(batches)
        batch_of = np.repeat(np.arange(len(batches)), [len(ix) for ix in batches])
        row_of = np.concatenate([np.arange(len(ix)) for ix in batches])
        order = np.argsort(indices, kind="stable")
        sorted_idx = indices[order]
        first = np.concatenate(([True], sorted_idx[1:] != sorted_idx[:-1]))
        take = order[first]
        self._pool.read(sorted_idx[first], batch_of[take], row_of[take],
                        {name: [out[name] for out in outs] for name in self.datasets})
        if not first.all():
            source = take[np.cumsum(first) - 1]
            for dup, src in zip(order[~first], source[~first]):
                for name in self.datasets:
                    outs[batch_of[dup]][name][row_of[dup]] = outs[batch_of[src]][name][row_of[src]]
        return outs

    def _batch(self, raw: dict[str, np.ndarray], index: np.ndarray, epoch: int) -> dict[str, torch.Tensor]:
        if self.preprocessor is not None:
            return self.preprocessor(raw, index, seed=self.seed, epoch=epoch)
        out = {"index": torch.from_numpy(index)}
        # torch has no byte-swapped tensors: a big-endian dataset becomes native here
        out.update({name: torch.from_numpy(arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("=")))
                    for name, arr in raw.items()})
        return out

    def _groups(self, epoch: int, start: int, worker: int, num_workers: int) -> list[list[np.ndarray]]:
        """Global indices of batches start+worker, start+worker+num_workers, …, grouped by starting window."""
        order, window = self._epoch_plan(epoch)
        n = len(self.indices)
        groups: list[list[np.ndarray]] = []
        key = None
        for i in range(start + worker, self.part.num_batches, num_workers):
            first = int(window[(self.part.lo + i * self.part.stride) % n])
            if not groups or first != key:
                groups.append([])
                key = first
            groups[-1].append(order[self.part.positions(i, n)])
        return groups

    def _iter_batches(self, epoch: int, start: int, worker: int, num_workers: int) -> Iterator[dict]:
        """This process's batches of the epoch (see `_groups`), read one window at a time.

        While a window's batches are handed out, the next window's reads are already announced to the kernel,
        so the device stays busy between windows.
        """
        groups = self._groups(epoch, start, worker, num_workers)
        if groups and self._preloaded is None:
            self._pool.advise(np.unique(np.concatenate(groups[0])))
        for g, group in enumerate(groups):
            raws = self._read_batches(group)
            if g + 1 < len(groups) and self._preloaded is None:
                self._pool.advise(np.unique(np.concatenate(groups[g + 1])))
            for index, raw in zip(group, raws):
                yield self._batch(raw, index, epoch)
            del raws, raw                   # so the next window can reuse this arena

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        if info is not None:
            # a worker of a plain DataLoader: the main process owns the resume point, so only read it
            yield from self._iter_batches(self.epoch, self._resume, info.id, info.num_workers)
            return
        start = self._take_resume()
        for k, batch in enumerate(self._iter_batches(self.epoch, start, 0, 1)):
            self._consumed = start + k + 1
            yield batch

    def loader(self, *, num_workers: int = 0, pin_memory: bool = False, prefetch: int = 2,
               multiprocessing_context=None) -> "ShardedLoader":
        """A `ShardedLoader` over this data set (see there)."""
        return ShardedLoader(self, num_workers=num_workers, pin_memory=pin_memory, prefetch=prefetch,
                             multiprocessing_context=multiprocessing_context)

    def close(self) -> None:
        """Close the shard files this process opened."""
        self._pool.close()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_plan"] = None
        return state


def ignore_job_signals(_worker_id: int) -> None:
    """DataLoader workers ignore the signals Slurm sends to every process of a job step (USR1/USR2/TERM):
    the main process handles them at a step boundary and needs its workers alive until it has saved."""
    for name in ("SIGUSR1", "SIGUSR2", "SIGTERM"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)


class _EpochView(IterableDataset):
    """One epoch of a ShardedDataset from a fixed start, as handed to DataLoader worker processes."""

    def __init__(self, dataset: ShardedDataset, epoch: int, start: int):
        super().__init__()
        self.dataset, self.epoch, self.start = dataset, epoch, start

    def __len__(self) -> int:
        return self.dataset.num_batches - self.start

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.dataset._iter_batches(self.epoch, self.start, worker, num_workers)


class _Prefetcher:
    """Run a batch iterator in a background thread, `depth` batches ahead (reads release the GIL)."""

    _DONE = object()

    def __init__(self, iterator: Iterator[dict], depth: int, pin: bool):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iterator, pin), daemon=True,
                                        name="bcrdist-prefetch")
        self._thread.start()

    def _run(self, iterator: Iterator[dict], pin: bool) -> None:
        try:
            for batch in iterator:
                if pin:
                    batch = {k: v.pin_memory() for k, v in batch.items()}
                while not self._stop.is_set():
                    try:
                        self._queue.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            item = self._DONE
        except BaseException as exc:
            item = exc
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[dict]:
        try:
            while True:
                item = self._queue.get()
                if item is self._DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._stop.set()
            self._thread.join()


class ShardedLoader:
    """Iterates a ShardedDataset's current epoch with prefetching and keeps its `state_dict` exact.

    num_workers = 0: one background thread reads and preprocesses `prefetch` batches ahead. num_workers > 0:
    a torch DataLoader with that many worker processes (each reads only its own batches' samples; batches
    arrive in the same order as with one process). pin_memory pins the batches for asynchronous copies to the
    GPU (ignored without CUDA). Re-created workers each epoch, so `set_epoch` always reaches them.
    """

    def __init__(self, dataset: ShardedDataset, *, num_workers: int = 0, pin_memory: bool = False,
                 prefetch: int = 2, multiprocessing_context=None):
        if num_workers < 0 or prefetch < 1:
            raise ConfigError(f"num_workers ({num_workers}) must be ≥ 0 and prefetch ({prefetch}) ≥ 1")
        self.dataset = dataset
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory) and torch.cuda.is_available()
        self.prefetch = int(prefetch)
        self.multiprocessing_context = multiprocessing_context

    def __len__(self) -> int:
        return self.dataset.num_batches

    def __iter__(self) -> Iterator[dict]:
        ds = self.dataset
        epoch, start = ds.epoch, ds._take_resume()
        if self.num_workers == 0:
            batches = iter(_Prefetcher(ds._iter_batches(epoch, start, 0, 1), self.prefetch, self.pin_memory))
        else:
            batches = iter(torch.utils.data.DataLoader(
                _EpochView(ds, epoch, start), batch_size=None, num_workers=self.num_workers,
                pin_memory=self.pin_memory, prefetch_factor=self.prefetch,
                multiprocessing_context=self.multiprocessing_context, worker_init_fn=ignore_job_signals))
        try:
            for k, batch in enumerate(batches):
                ds._consumed = start + k + 1
                yield batch
        finally:
            # stop the prefetch thread now; a DataLoader iterator shuts its workers down when released
            if hasattr(batches, "close"):
                batches.close()
            del batches

    def state_dict(self) -> dict:
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.dataset.load_state_dict(state)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

