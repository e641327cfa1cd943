#!/usr/bin/env python
"""Benchmark: samples/s delivered by the sharded reader against naive per-sample HDF5 indexing and a raw read.

Builds a synthetic data set in a temporary directory (deleted afterwards): one Fan-layout file with
`measure` and `coe`, SIZE×SIZE float32 each (contiguous datasets, as the original files), and its sharded
copy. Then measures, in one process and in each of 2 concurrent ranks:

  (a) sharded  — ShardedDataset(shuffle=True, drop_last=True) through its loader, one epoch;
  (b) naive    — h5py `dset[i]` for each dataset, samples in random order, from the single big file, stacked
                 into batches as a map-style Dataset with DataLoader(batch_size=…) would;
  (c) raw      — plain sequential reads of the shard files into one reused buffer: the physical limit.

Each figure is the best of --repeats epochs, methods interleaved. Before every epoch the files are read once
(warm: served from the page cache) or, with --cold, evicted from it (posix_fadvise DONTNEED), so every
method starts from the same cache state.

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

from bcrdist.data import ShardedDataset  # noqa: E402
from bcrdist.data.convert import shard_file  # noqa: E402
from bcrdist.data.synthetic import make_fan_file  # noqa: E402

METHODS = ("sharded", "naive", "raw")


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
        self.rank, self.world, self.args = rank, world, args
        self.dataset = ShardedDataset(workdir / "ds", rank=rank, world_size=world, batch_size=args.batch,
                                      seed=0, datasets=["measure", "coe"])
        self.big = h5py.File(workdir / "big.h5", "r")
        self.shards = sorted((workdir / "ds").glob("shard-*.h5"))[rank::world]
        self.sample_nbytes = sum(self.dataset.manifest.datasets[d].sample_nbytes for d in ("measure", "coe"))
        self.buffer = bytearray(8 << 20)

    def sharded(self, epoch: int) -> int:
        self.dataset.set_epoch(epoch)
        return sum(len(b["index"]) for b in self.dataset.loader(num_workers=self.args.workers))

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


def measure(workdir: pathlib.Path, world: int, args) -> dict[str, list[float]]:
    """Best samples/s per method for each of `world` concurrent ranks."""
    ctx = mp.get_context("fork")
    commands = [ctx.Queue() for _ in range(world)]
    results = ctx.Queue()
    procs = [ctx.Process(target=rank_main, args=(str(workdir), r, world, args, commands[r], results))
             for r in range(world)]
    for p in procs:
        p.start()
    files = [workdir / "big.h5", *sorted((workdir / "ds").glob("shard-*.h5"))]
    best = {m: [0.0] * world for m in METHODS}
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
                    best[method][rank] = max(best[method][rank], samples / seconds)
    finally:
        for q in commands:
            q.put(None)
        for p in procs:
            p.join(timeout=60)
    return best


def report(best1: dict, best2: dict, args, sample_mb: float) -> str:
    names = {"sharded": "(a) sharded reader", "naive": "(b) naive h5py per-sample", "raw": "(c) raw contiguous"}
    lines = [f"{args.size}×{args.size} float32 `measure` + `coe` ({sample_mb * 1024:.0f} KiB/sample), "
             f"{args.samples} samples, batch {args.batch}, loader workers {args.workers}, "
             f"{'cold' if args.cold else 'warm'} page cache, best of {args.repeats}; "
             f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
             "",
             "| method | 1 process: samples/s | MB/s | 2 ranks: samples/s per rank | total samples/s |",
             "|---|---:|---:|---:|---:|"]
    for m in METHODS:
        per_rank = " / ".join(f"{v:,.0f}" for v in best2[m])
        lines.append(f"| {names[m]} | {best1[m][0]:,.0f} | {best1[m][0] * sample_mb:,.0f} | {per_rank} | "
                     f"{sum(best2[m]):,.0f} |")
    lines += ["",
              f"ratios, 1 process: (a)/(c) = {best1['sharded'][0] / best1['raw'][0]:.0%}, "
              f"(a)/(b) = {best1['sharded'][0] / best1['naive'][0]:.1f}×",
              f"ratios, 2 ranks (totals): (a)/(c) = {sum(best2['sharded']) / sum(best2['raw']):.0%}, "
              f"(a)/(b) = {sum(best2['sharded']) / sum(best2['naive']):.1f}×"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1536)
    parser.add_argument("--size", type=int, default=128, help="grid side of measure and coe (default 128)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--samples-per-shard", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0, help="loader worker processes (0: prefetch thread)")
    parser.add_argument("--repeats", type=int, default=5)
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
        if not args.markdown:
            print(f"data in {workdir} written in {time.perf_counter() - started:.1f} s", flush=True)
        best1 = measure(workdir, 1, args)
        best2 = measure(workdir, 2, args)
        print(report(best1, best2, args, 2 * args.size * args.size * 4 / 2**20))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
