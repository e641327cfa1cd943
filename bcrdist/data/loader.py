"""Loading a `ShardedDataset` epoch: a prefetch thread or DataLoader worker processes, pinned memory, and
an exact resume point.

The loader uses the data set's public iteration protocol only — `epoch`, `take_start()` (where this epoch's
iteration starts), `epoch_batches(epoch, start, worker, num_workers)` (a worker's batches), `note_consumed(n)`,
`num_batches`, `state_dict`/`load_state_dict`/`set_epoch` — so it needs no import of the data set's module
(`bcrdist.data.dataset` imports this one).
"""

from __future__ import annotations

import queue
import signal
import threading
from typing import Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from bcrdist.errors import ConfigError, DataError


def ignore_job_signals(_worker_id: int) -> None:
    """DataLoader workers ignore the signals Slurm sends to every process of a job step (USR1/USR2/TERM):
    the main process handles them at a step boundary and needs its workers alive until it has saved."""
    for name in ("SIGUSR1", "SIGUSR2", "SIGTERM"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)


def worker_message(exc: DataError) -> str:
    """The original one-line message of a DataError raised in a DataLoader worker: torch re-raises it in the
    main process with "Caught DataError in DataLoader worker process N. Original Traceback: …" around it."""
    text = str(exc)
    marker = f"{DataError.__module__}.{DataError.__name__}: "
    if "Original Traceback" in text and marker in text:
        return text.rsplit(marker, 1)[1].strip().splitlines()[0]
    return text


class _EpochView(IterableDataset):
    """One epoch of a ShardedDataset from a fixed start, as handed to DataLoader worker processes."""

    def __init__(self, dataset, epoch: int, start: int):
        super().__init__()
        self.dataset, self.epoch, self.start = dataset, epoch, start

    def __len__(self) -> int:
        return self.dataset.num_batches - self.start

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.dataset.epoch_batches(self.epoch, self.start, worker, num_workers)


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
                if not self._put(batch):
                    return
            item = self._DONE
        except BaseException as exc:
            item = exc
        self._put(item)

    def _put(self, item) -> bool:
        """Queue `item`, waiting while the queue is full; False once the consumer has stopped us."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

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

    def __init__(self, dataset, *, num_workers: int = 0, pin_memory: bool = False,
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
        epoch, start = ds.epoch, ds.take_start()
        if self.num_workers == 0:
            batches = iter(_Prefetcher(ds.epoch_batches(epoch, start), self.prefetch, self.pin_memory))
        else:
            batches = iter(torch.utils.data.DataLoader(
                _EpochView(ds, epoch, start), batch_size=None, num_workers=self.num_workers,
                pin_memory=self.pin_memory, prefetch_factor=self.prefetch,
                multiprocessing_context=self.multiprocessing_context, worker_init_fn=ignore_job_signals))
        try:
            for k, batch in enumerate(batches):
                ds.note_consumed(start + k + 1)
                yield batch
        except DataError as exc:
            raise DataError(worker_message(exc)) from None
        finally:
            # stop the prefetch thread, and the DataLoader's workers, now: after an error the traceback keeps
            # the iterator alive, and the workers ignore SIGTERM (see ignore_job_signals), so multiprocessing's
            # exit handler, which terminates and then joins them, would wait for them forever
            if hasattr(batches, "close"):
                batches.close()
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            del batches

    def state_dict(self) -> dict:
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.dataset.load_state_dict(state)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)
