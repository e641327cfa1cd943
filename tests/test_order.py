"""The epoch order (`bcrdist.data.order`): a function of (seed, epoch) only, block-structured, the same global
batches for any world size."""

import numpy as np
import pytest

from bcrdist.data import ShardedDataset, epoch_order
from data_helpers import epoch_batches, make_reader_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_reader_dataset(tmp_path_factory.mktemp("reader") / "ds")


def test_order_depends_on_seed_and_epoch_only(data):
    root, _ = data
    a = ShardedDataset(root, seed=1, batch_size=5, block_size=4)
    b = ShardedDataset(root, seed=1, batch_size=5, block_size=4)
    assert all(np.array_equal(x, y) for x, y in zip(epoch_batches(a, 3), epoch_batches(b, 3)))
    assert not np.array_equal(np.concatenate(epoch_batches(a, 3)), np.concatenate(epoch_batches(a, 4)))
    assert not np.array_equal(np.concatenate(epoch_batches(a, 3)),
                              np.concatenate(epoch_batches(ShardedDataset(root, seed=2, batch_size=5, block_size=4), 3)))
    # the global order is the same for any world size and batch size: exact readers take consecutive parts
    one = np.concatenate(ShardedDataset(root, seed=1, exact=True, batch_size=9, block_size=4).batch_indices(2))
    parts = [np.concatenate(ShardedDataset(root, seed=1, exact=True, world_size=4, rank=r, batch_size=3,
                                           block_size=4).batch_indices(2)) for r in range(4)]
    assert np.array_equal(one, np.concatenate(parts))


def test_global_batches_do_not_depend_on_the_world_size(data):
    root, _ = data
    kw = dict(seed=9, block_size=4, shuffle_blocks=3)
    one = ShardedDataset(root, batch_size=12, **kw).batch_indices(5)
    for world, batch in ((2, 6), (3, 4), (4, 3)):
        ranks = [ShardedDataset(root, rank=r, world_size=world, batch_size=batch, **kw).batch_indices(5)
                 for r in range(world)]
        assert all(len(b) == len(one) for b in ranks)
        for step, expected in enumerate(one):          # step i of W ranks × B == step i of one process × W·B
            assert np.array_equal(np.concatenate([b[step] for b in ranks]), expected)


def test_epoch_order_is_block_structured():
    pos, window = epoch_order(100, seed=0, epoch=0, shuffle=True, block_size=10, shuffle_blocks=2)
    assert np.array_equal(np.sort(pos), np.arange(100))
    for w in range(5):
        members = pos[window == w]
        assert len(members) == 20 and len(np.unique(members // 10)) == 2   # two whole blocks per window
    pos, window = epoch_order(100, seed=0, epoch=0, shuffle=False, block_size=10, shuffle_blocks=2)
    assert np.array_equal(pos, np.arange(100)) and window[-1] == 4
