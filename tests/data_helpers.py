"""Shared by the data-layer tests: a small sharded data set with uneven shards, the `bcrdist` CLI run in this
process, and a byte-level comparison of two HDF5 files."""

from __future__ import annotations

import h5py
import numpy as np

from bcrdist.cli import main
from bcrdist.data.format import write_manifest, write_shard
from bcrdist.data.splits import write_splits
from bcrdist.data.stats import store_statistics

SHARD_SIZES = [37, 50, 13, 61, 12]          # uneven on purpose; N = 173
N = sum(SHARD_SIZES)


def reader_source(n=N, seed=0):
    rng = np.random.default_rng(seed)
    return {"measure": rng.standard_normal((n, 4, 6)).astype("f4"),
            "measure_imag": rng.standard_normal((n, 4, 6)).astype("f4"),
            "coe": rng.standard_normal((n, 4, 3)),
            "farfield": (rng.standard_normal((n, 3, 3)) + 1j * rng.standard_normal((n, 3, 3))).astype("c8")}


def make_reader_dataset(root):
    """The arrays of `reader_source()` written as shards of SHARD_SIZES at `root`, with statistics and a
    60 % split (10 validation samples); returns (root, arrays)."""
    src = reader_source()
    infos, first = [], 0
    for i, n in enumerate(SHARD_SIZES):
        infos.append(write_shard(root, i, first, {k: v[first:first + n] for k, v in src.items()}))
        first += n
    write_manifest(root, infos, provenance={"tool": "test"})
    store_statistics(root)
    write_splits(root, 0.6, val=10)
    return root, src


def epoch_batches(ds, epoch=None):
    """The sample indices of every batch of one epoch of `ds`."""
    if epoch is not None:
        ds.set_epoch(epoch)
    return [b["index"].numpy().copy() for b in ds]


def cli(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_same_file(a, b):
    """Same datasets, dtypes, shapes, bytes, creation properties and attributes."""
    with h5py.File(a) as fa, h5py.File(b) as fb:
        assert sorted(fa) == sorted(fb)
        for name in fa:
            x, y = fa[name], fb[name]
            assert (x.dtype, x.shape, x.chunks, x.compression) == (y.dtype, y.shape, y.chunks, y.compression)
            assert x[()].tobytes() == y[()].tobytes(), name
            assert {k: np.asarray(v).tolist() for k, v in x.attrs.items()} == \
                   {k: np.asarray(v).tolist() for k, v in y.attrs.items()}
        assert {k: np.asarray(v).tolist() for k, v in fa.attrs.items()} == \
               {k: np.asarray(v).tolist() for k, v in fb.attrs.items()}
