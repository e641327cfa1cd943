"""Shard reads (`bcrdist.data.shard_io`): raw reads of our shards, h5py for compressed ones, buffer arenas
recycled only when released."""

import h5py
import numpy as np
import pytest
import torch

from bcrdist.data import ShardedDataset
from bcrdist.data.format import write_manifest
from bcrdist.fileio import file_sha256
from data_helpers import make_reader_dataset, reader_source


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_reader_dataset(tmp_path_factory.mktemp("reader") / "ds")


@pytest.mark.parametrize("preload", [False, True])
def test_batches_hold_the_right_samples(data, preload):
    root, src = data
    ds = ShardedDataset(root, batch_size=6, block_size=5, shuffle_blocks=4, seed=3, preload=preload, world_size=2,
                        rank=1)
    ds.set_epoch(2)
    for b in ds:
        idx = b["index"].numpy()
        for name in ("measure", "coe", "farfield"):
            assert b[name].dtype == torch.from_numpy(src[name][:1]).dtype
            np.testing.assert_array_equal(b[name].numpy(), src[name][idx])
    if not preload:                         # our shards are read with raw reads, not through h5py
        assert all(f.offsets is not None for f in ds._pool._shard(0).fields.values())


def test_read_buffers_are_recycled_only_when_released(data):
    root, src = data
    ds = ShardedDataset(root, batch_size=4, block_size=4, shuffle_blocks=2, seed=6, datasets=["measure"])
    for loader in (ds, ds.loader(prefetch=3)):
        kept = list(loader)                     # every batch still referenced: no buffer may be reused
        for b in kept:
            np.testing.assert_array_equal(b["measure"].numpy(), src["measure"][b["index"].numpy()])
        del kept, b
    arenas = list(ds._arenas._arenas)
    assert len(arenas) == ds._arenas.keep
    taken = []
    original = ds._arenas.take
    ds._arenas.take = lambda rows: taken.append(original(rows)) or taken[-1]
    for b in ds:                                # released at once: the kept arenas are reused
        del b
    assert taken and all(any(t is a for a in arenas) for t in taken)


def test_compressed_shards_are_read_through_h5py(tmp_path):
    src = reader_source(40, seed=1)
    infos = []
    for i, (first, n) in enumerate([(0, 25), (25, 15)]):
        path = tmp_path / f"shard-{i:05d}.h5"
        with h5py.File(path, "w") as fh:
            for name, arr in src.items():
                fh.create_dataset(name, data=arr[first:first + n], chunks=(4, *arr.shape[1:]), compression="gzip")
        infos.append({"file": path.name, "first_index": first, "num_samples": n, "sha256": file_sha256(path)})
    write_manifest(tmp_path, infos, provenance={"tool": "h5py by hand"})
    ds = ShardedDataset(tmp_path, batch_size=7, block_size=3, seed=2)
    assert ds._pool._shard(0).fields["measure"].offsets is None
    seen = []
    for b in ds:
        idx = b["index"].numpy()
        np.testing.assert_array_equal(b["farfield"].numpy(), src["farfield"][idx])
        seen.append(idx)
    assert len(np.concatenate(seen)) == 35
