"""The loader (`bcrdist.data.loader`): resume and worker order, pinned batches, the prefetch thread's end."""

import threading

import numpy as np
import pytest
import torch

from bcrdist.data import ShardedDataset
from data_helpers import epoch_batches, make_reader_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_reader_dataset(tmp_path_factory.mktemp("reader") / "ds")


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_resume_and_worker_order(data, workers):
    root, src = data
    kw = dict(world_size=3, rank=2, batch_size=3, seed=11, block_size=4, shuffle_blocks=3)
    full = epoch_batches(ShardedDataset(root, **kw), 1)
    ds = ShardedDataset(root, **kw)
    ds.set_epoch(1)
    loader = ds.loader(num_workers=workers, prefetch=2)
    assert len(loader) == len(full)
    head = []
    for b in loader:
        head.append(b["index"].numpy().copy())
        np.testing.assert_array_equal(b["coe"].numpy(), src["coe"][head[-1]])
        if len(head) == 4:
            break
    state = loader.state_dict()
    fresh = ShardedDataset(root, **kw)
    fresh.load_state_dict(state)
    rest = [b["index"].numpy() for b in fresh.loader(num_workers=workers)]
    assert all(np.array_equal(x, y) for x, y in zip(head + rest, full)) and len(head) + len(rest) == len(full)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pinned_batches(data):
    root, _ = data
    for workers in (0, 2):
        batch = next(iter(ShardedDataset(root, batch_size=4).loader(num_workers=workers, pin_memory=True)))
        assert all(t.is_pinned() for t in batch.values())
        batch["measure"].to("cuda", non_blocking=True)


def test_loader_thread_stops_when_the_consumer_stops(data):
    root, _ = data
    loader = ShardedDataset(root, batch_size=2).loader(prefetch=1)
    for _ in loader:
        break
    assert not [t for t in threading.enumerate() if t.name == "bcrdist-prefetch"]
