#!/usr/bin/env python
"""Benchmark: samples/s delivered by the sharded reader against naive per-sample HDF5 indexing and a raw read,
and what the reader's checks (SHA-256 of each shard, NaN/inf) cost.

Builds a synthetic data set in a temporary directory (deleted afterwards): one Fan-layout file with
`measure` and `coe`, SIZE×SIZE float32 each (contiguous datasets, as the original files), its sharded
copy, and a second manifest of the same shards without statistics (so the reader must scan for NaN/inf).
Then measures, in one process and in each of 2 concurrent ranks, one epoch per method:

  (a) sharded    — ShardedDataset(shuffle=True, drop_last=True) through its loader, checks on (the default),
                   a reader that has checked its shards already (every epoch after its first);
  (a0) unchecked — the same with verify=False: the reader as it was before the checks;
  (a1) isfinite  — (a0) plus np.isfinite over every batch's arrays: the per-batch NaN check not chosen;
  (f) first epoch of a new reader, checks on: SHA-256 of every shard it opens (statistics count no NaN);
  (f1) the same without statistics: SHA-256 plus a NaN/inf scan of the reader's samples;
  (f0) first epoch of a new reader, verify=False;
  (b) naive      — h5py `dset[i]` for each dataset, samples in random order, from the single big file,
                   stacked into batches as a map-style Dataset with DataLoader(batch_size=…) would;
  (c) raw        — plain sequential reads of the shard files into one reused buffer: the physical limit.

Methods are interleaved, --repeats epochs each; the report gives medians and min–max. Before every epoch the
files are read once (warm: served from the page cache) or, with --cold, evicted from it (posix_fadvise
DONTNEED), so every method starts from the same cache state.

    .venv/bin/python tools/bench_reader.py                   # 128×128, 1536 samples (≈ 400 MB on disk)
    .venv/bin/python tools/bench_reader.py --cold --markdown
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import pathlib
import platform
import shutil
import sys
import tempfile
import time

import h5py
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bcrdist.data import ShardedDataset, shard_io  # noqa: E402
from bcrdist.data.convert import shard_file  # noqa: E402
from bcrdist.data.format import update_manifest  # noqa: E402
from bcrdist.data.synthetic import make_fan_file  # noqa: E402

METHODS = ("sharded", "unchecked", "isfinite", "first", "first_scan", "first_unchecked", "naive", "raw")
NAMES = {"sharded": "(a) sharded reader, checked", "unchecked": "(a0) sharded reader, verify=False",
         "isfinite": "(a1) (a0) + np.isfinite per batch", "first": "(f) first epoch, SHA-256",
         "first_scan": "(f1) first epoch, SHA-256 + NaN scan", "first_unchecked": "(f0) first epoch, verify=False",
         "naive": "(b) naive h5py per-sample", "raw": "(c) raw contiguous"}


def warm(paths: list[pathlib.Path]) -> None:
    """Read the files once, so they are in the page cache (and recently used) when an epoch starts."""
    buffer = memoryview(bytearray(8 << 20))
    for path in paths:
        with open(path, "rb", buffering=0) as fh:
            while fh.readinto(buffer):
                pass


def evict(paths: list[pathlib.Path]) -> None:
    """Drop the files' pages from the page cache (clean pages only; no root needed)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


class Rank:
    """State of one benchmarking process: an open reader, an open big file, the shard list."""

    def __init__(self, workdir: pathlib.Path, rank: int, world: int, args):
        self.rank, self.world, self.args, self.workdir = rank, world, args, workdir
        self.dataset = self._reader("ds", True)
        self.plain = self._reader("ds", False)
        self._epoch(self.dataset, 0)                      # its shards checked, as after a first epoch
        self.big = h5py.File(workdir / "big.h5", "r")
        self.shards = sorted((workdir / "ds").glob("shard-*.h5"))[rank::world]
        self.sample_nbytes = sum(self.dataset.manifest.datasets[d].sample_nbytes for d in ("measure", "coe"))
        self.buffer = bytearray(8 << 20)

    def _reader(self, name: str, verify: bool) -> ShardedDataset:
        return ShardedDataset(self.workdir / name, rank=self.rank, world_size=self.world, batch_size=self.args.batch,
                              seed=0, datasets=["measure", "coe"], verify=verify)

    def _epoch(self, dataset: ShardedDataset, epoch: int, isfinite: bool = False) -> int:
        dataset.set_epoch(epoch)
        samples = 0
        for b in dataset.loader(num_workers=self.args.workers):
            if isfinite and not all(bool(np.isfinite(b[k].numpy()).all()) for k in ("measure", "coe")):
                raise ValueError("non-finite value")
            samples += len(b["index"])
        return samples

    def sharded(self, epoch: int) -> int:
        return self._epoch(self.dataset, epoch)

    def unchecked(self, epoch: int) -> int:
        return self._epoch(self.plain, epoch)

    def isfinite(self, epoch: int) -> int:
        return self._epoch(self.plain, epoch, isfinite=True)

    def first(self, epoch: int) -> int:
        shard_io._MATCHED.clear()           # as in a new process: no shard known to match yet
        return self._epoch(self._reader("ds", True), epoch)

    def first_scan(self, epoch: int) -> int:
        shard_io._MATCHED.clear()
        return self._epoch(self._reader("ds-nostats", True), epoch)

    def first_unchecked(self, epoch: int) -> int:
        return self._epoch(self._reader("ds", False), epoch)

    def naive(self, epoch: int) -> int:
        n = self.big["measure"].shape[0]
        order = np.random.default_rng(epoch).permutation(n)[self.rank::self.world]
        measure, coe = self.big["measure"], self.big["coe"]
        batch = self.args.batch
        for start in range(0, len(order) - batch + 1, batch):
            # what a map-style Dataset + DataLoader(batch_size=…) does: per-sample reads, then collate
            picked = order[start:start + batch]
            np.stack([measure[i] for i in picked]), np.stack([coe[i] for i in picked])
        return len(order) // batch * batch

    def raw(self, epoch: int) -> int:
        view = memoryview(self.buffer)
        total = 0
        for path in self.shards:
            with open(path, "rb", buffering=0) as fh:
                while n := fh.readinto(view):
                    total += n
        return total // self.sample_nbytes


def rank_main(workdir, rank, world, args, commands, results) -> None:
    state = Rank(pathlib.Path(workdir), rank, world, args)
    while (cmd := commands.get()) is not None:
        method, epoch = cmd
        results.put(("ready", rank))
        commands.get()                      # the go signal, sent to all ranks together
        start = time.perf_counter()
        samples = getattr(state, method)(epoch)
        results.put((rank, samples, time.perf_counter() - start))


def measure(workdir: pathlib.Path, world: int, args) -> dict[str, list[list[float]]]:
    """samples/s per method, per rank, per repeat, for `world` concurrent ranks."""
    ctx = mp.get_context("fork")
    commands = [ctx.Queue() for _ in range(world)]
    results = ctx.Queue()
    procs = [ctx.Process(target=rank_main, args=(str(workdir), r, world, args, commands[r], results))
             for r in range(world)]
    for p in procs:
        p.start()
    files = [workdir / "big.h5", *sorted((workdir / "ds").glob("shard-*.h5"))]
    rates = {m: [[] for _ in range(world)] for m in METHODS}
    try:
        for epoch in range(args.repeats):
            for method in METHODS:
                (evict if args.cold else warm)(files)
                for q in commands:
                    q.put((method, epoch))
                for _ in range(world):
                    results.get(timeout=600)
                for q in commands:
                    q.put("go")
                for _ in range(world):
                    rank, samples, seconds = results.get(timeout=600)
                    rates[method][rank].append(samples / seconds)
    finally:
        for q in commands:
            q.put(None)
        for p in procs:
            p.join(timeout=60)
    return rates


def median(values: list[float]) -> float:
    return float(np.median(values))


def ratio(num: list[float], den: list[float]) -> str:
    """Median of the per-repeat ratios (interleaved pairs) and their min–max."""
    r = np.asarray(num) / np.asarray(den)
    return f"{np.median(r):.3f} ({r.min():.3f}–{r.max():.3f})"


def report(one: dict, two: dict, args, sample_mb: float) -> str:
    """one/two: rates of 1 process and of 2 ranks (see `measure`); two ranks' totals add the ranks' rates."""
    total = {m: [sum(rep) for rep in zip(*two[m])] for m in METHODS}
    lines = [f"{args.size}×{args.size} float32 `measure` + `coe` ({sample_mb * 1024:.0f} KiB/sample), "
             f"{args.samples} samples, batch {args.batch}, loader workers {args.workers}, "
             f"{'cold' if args.cold else 'warm'} page cache, median (min–max) of {args.repeats} interleaved epochs; "
             f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
             "",
             "| method | 1 process: samples/s | MB/s | 2 ranks: total samples/s |",
             "|---|---:|---:|---:|"]
    for m in METHODS:
        v, t = one[m][0], total[m]
        lines.append(f"| {NAMES[m]} | {median(v):,.0f} ({min(v):,.0f}–{max(v):,.0f}) | "
                     f"{median(v) * sample_mb:,.0f} | {median(t):,.0f} ({min(t):,.0f}–{max(t):,.0f}) |")
    lines += ["",
              f"ratios, 1 process: (a)/(c) = {median(one['sharded'][0]) / median(one['raw'][0]):.0%}, "
              f"(a)/(b) = {median(one['sharded'][0]) / median(one['naive'][0]):.1f}×",
              f"ratios, 2 ranks (totals): (a)/(c) = {median(total['sharded']) / median(total['raw']):.0%}, "
              f"(a)/(b) = {median(total['sharded']) / median(total['naive']):.1f}×",
              "",
              "cost of the checks, as throughput ratios (median of the interleaved epochs' ratios, min–max):"]
    for label, num, den in (("every epoch after a reader's first, (a)/(a0)", "sharded", "unchecked"),
                            ("per-batch np.isfinite instead, (a1)/(a0)", "isfinite", "unchecked"),
                            ("a reader's first epoch, (f)/(f0)", "first", "first_unchecked"),
                            ("a reader's first epoch without statistics, (f1)/(f0)", "first_scan", "first_unchecked")):
        lines.append(f"- {label}: 1 process {ratio(one[num][0], one[den][0])}, 2 ranks {ratio(total[num], total[den])}")
    return "\n".join(lines)


def copy_without_statistics(ds: pathlib.Path, out: pathlib.Path) -> None:
    """The shards of `ds` (hard links) under a manifest without statistics."""
    out.mkdir()
    for shard in ds.glob("shard-*.h5"):
        os.link(shard, out / shard.name)
    shutil.copy(ds / "manifest.json", out / "manifest.json")
    update_manifest(out, statistics=None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1536)
    parser.add_argument("--size", type=int, default=128, help="grid side of measure and coe (default 128)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--samples-per-shard", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0, help="loader worker processes (0: prefetch thread)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--cold", action="store_true", help="evict the files from the page cache every epoch")
    parser.add_argument("--dir", default=None, help="where to put the temporary data (default: system temp)")
    parser.add_argument("--markdown", action="store_true", help="print only the report (for docs/benchmarks.md)")
    args = parser.parse_args(argv)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="bcrdist-bench-", dir=args.dir))
    try:
        started = time.perf_counter()
        make_fan_file(workdir / "big.h5", args.samples, ns=args.size, nd=args.size, nt=args.size, nr=args.size,
                      measure2=False, coe_dtype="float32")
        shard_file(workdir / "big.h5", workdir / "ds", args.samples_per_shard)
        copy_without_statistics(workdir / "ds", workdir / "ds-nostats")
        if not args.markdown:
            print(f"data in {workdir} written in {time.perf_counter() - started:.1f} s", flush=True)
        one = measure(workdir, 1, args)
        two = measure(workdir, 2, args)
        print(report(one, two, args, 2 * args.size * args.size * 4 / 2**20))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
