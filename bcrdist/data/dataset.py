"""Rank-aware batches of a sharded data set, for DDP training and exact distributed evaluation.

The order of an epoch is `bcrdist.data.order.epoch_order`; reading is `bcrdist.data.shard_io`; the
prefetching loader is `bcrdist.data.loader`.

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
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from bcrdist.data.format import read_manifest
from bcrdist.data.loader import ShardedLoader
from bcrdist.data.order import default_block_size, epoch_order
from bcrdist.data.preprocess import Preprocess, Preprocessor
from bcrdist.data.shard_io import BufferArenas, ShardChecks, ShardPool
from bcrdist.data.splits import load_split
from bcrdist.errors import ConfigError, DataError, shown

STATE_VERSION = 1


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
    `max_open_shards` bounds the open files per process; `verify` (default True) checks every shard before
    its first sample is used — SHA-256 against the manifest, and no NaN/inf in this split's samples unless
    the manifest's statistics count none (`bcrdist.data.shard_io.ShardChecks`; False only to measure the
    reader without them); `split_name` names the split in those messages when `split` is an index array.

    Each batch is a dict of tensors; "index" (B,) int64 holds the global sample indices. Iterate directly, via
    `loader()` (prefetch thread or worker processes, pinned memory, exact `state_dict`), or through a
    `torch.utils.data.DataLoader(ds, batch_size=None, num_workers=k)`, which yields the same batches in the
    same order for any k.
    """

    def __init__(self, path, *, split=None, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = True, exact: bool = False, batch_size: int = 32,
                 preprocess: Preprocess | None = None, datasets: list[str] | None = None,
                 block_size: int | None = None, shuffle_blocks: int = 8, preload: bool = False,
                 max_open_shards: int = 64, verify: bool = True, split_name: str | None = None):
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
        # which shards passed the checks: in shared memory, so DataLoader workers (re-created every epoch)
        # check each shard once, not once per epoch
        self._passed = torch.zeros((len(self.manifest.shards), 6), dtype=torch.int64).share_memory_()
        checks = ShardChecks(self.manifest, self.datasets, self.indices, self._describe(split, split_name),
                             self._passed) if verify else None
        self._pool = ShardPool(self.manifest, self.datasets, max_open_shards, checks)
        self._arenas = BufferArenas({d: (self.manifest.datasets[d].shape, self.manifest.datasets[d].dtype)
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

    def check(self) -> None:
        """Check every shard of the split now, as its first read would (`verify`: SHA-256 against the manifest,
        NaN/inf in the split's samples unless the statistics count none): a corrupt or truncated shard, or a
        non-finite sample, is then refused, with the same one-line DataError, before a run trains on anything."""
        self._pool.check(self.indices)

    def _describe(self, split, split_name: str | None) -> str:
        """How messages name this reader's samples: "split 'train' of data/ds"."""
        if split_name is not None:
            return f"split {shown(split_name)} of {self.manifest.root}"
        if split is None:
            return f"data set {self.manifest.root} (all samples)"
        if isinstance(split, np.ndarray):
            return f"the reader's split of {len(self.indices)} samples of {self.manifest.root}"
        return f"split {shown(str(split))} of {self.manifest.root}"

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
        them. At an epoch boundary (batch 0) anything goes. A state of only {"epoch", "batch"} (training
        checkpoints of bcrdist before 0.2 kept the position in the trainer's counters, without the reader's
        order settings) is taken as a position in this reader's order: only its range is checked.
        """
        position_only = "version" not in state
        key = self._order_key()
        diff = {k: (state.get(k), v) for k, v in key.items() if state.get(k) != v}
        if diff and not position_only:
            raise ConfigError(f"data state does not match this reader (saved, now): {diff}")
        batch = int(state["batch"])
        saved = (state.get("world_size"), state.get("batch_size"))
        same = (saved == (self.world_size, self.batch_size) if self.exact else
                None not in saved and saved[0] * saved[1] == self.world_size * self.batch_size)
        if batch and not same and not position_only:
            raise ConfigError(f"cannot resume mid-epoch with world_size × batch_size = "
                              f"{self.world_size} × {self.batch_size}; the state was saved with "
                              f"{saved[0]} × {saved[1]}")
        if not 0 <= batch <= self.num_batches:
            raise ConfigError(f"data state batch {batch} is outside [0, {self.num_batches}]")
        self._shared[0] = int(state["epoch"])
        self._shared[1] = batch
        self._consumed = batch

    def take_start(self) -> int:
        """The batch the next iteration of the current epoch starts at (the pending resume point, then 0): the
        iterator of an epoch calls it once, and reports its progress with `note_consumed`."""
        start = self._resume
        self._shared[1] = 0
        self._consumed = start
        return start

    def note_consumed(self, batches: int) -> None:
        """This rank has consumed `batches` batches of the current epoch (what `state_dict` saves)."""
        self._consumed = int(batches)

    # --- reading ------------------------------------------------------------------------------------------

    def _allocate(self, rows: int) -> dict[str, np.ndarray]:
        return {name: np.empty((rows, *self.manifest.datasets[name].shape), dtype=self.manifest.datasets[name].dtype)
                for name in self.datasets}

    def _read_batches(self, batches: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Per batch of global indices (repeats allowed), arrays (len, …) per dataset holding those samples.

        All samples of the group are read in one sorted sweep, straight into the batches' rows of a recycled
        arena (see `BufferArenas`).
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

    def epoch_batches(self, epoch: int, start: int, worker: int = 0, num_workers: int = 1) -> Iterator[dict]:
        """Batches start + worker, start + worker + num_workers, … of `epoch` for this rank (a worker's share; see
        `_groups`), read one window at a time.

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
            yield from self.epoch_batches(self.epoch, self._resume, info.id, info.num_workers)
            return
        start = self.take_start()
        for k, batch in enumerate(self.epoch_batches(self.epoch, start)):
            self.note_consumed(start + k + 1)
            yield batch

    def loader(self, *, num_workers: int = 0, pin_memory: bool = False, prefetch: int = 2,
               multiprocessing_context=None) -> ShardedLoader:
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
