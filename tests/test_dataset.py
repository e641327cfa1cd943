"""The rank-aware data set (`bcrdist.data.dataset.ShardedDataset`): partition rules, splits, resume, worker
sharding, pickling and errors."""

import pickle

import numpy as np
import pytest
from torch.utils.data import DataLoader

from bcrdist.data import Preprocess, ShardedDataset
from bcrdist.data.format import write_manifest, write_shard
from bcrdist.errors import ConfigError, DataError
from data_helpers import N, epoch_batches, make_reader_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_reader_dataset(tmp_path_factory.mktemp("reader") / "ds")


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("batch", [4, 7])
def test_partition_rules(data, world, batch):
    root, _ = data
    kw = dict(world_size=world, batch_size=batch, seed=5, block_size=8, shuffle_blocks=3)
    # evaluation: every sample exactly once, counts differ by at most one
    exact = [ShardedDataset(root, rank=r, exact=True, shuffle=False, **kw) for r in range(world)]
    got = np.concatenate([np.concatenate(d.batch_indices()) for d in exact])
    assert np.array_equal(np.sort(got), np.arange(N))
    counts = exact[0].rank_sample_counts()
    assert sum(counts) == N and max(counts) - min(counts) <= 1
    assert [sum(map(len, d.batch_indices())) for d in exact] == counts
    # training: the same number of full batches everywhere, at most world·batch − 1 samples dropped
    train = [ShardedDataset(root, rank=r, **kw) for r in range(world)]
    for epoch in (0, 1):
        batches = [d.batch_indices(epoch) for d in train]
        assert len({len(b) for b in batches}) == 1 and all(len(x) == batch for b in batches for x in b)
        used = np.concatenate([np.concatenate(b) for b in batches])
        assert len(np.unique(used)) == len(used)
        dropped = N - len(used)
        assert dropped == N % (world * batch) and dropped <= world * batch - 1
    # padding: no sample dropped, repeats fill the last batches
    pad = [ShardedDataset(root, rank=r, drop_last=False, **kw) for r in range(world)]
    used = np.concatenate([np.concatenate(d.batch_indices()) for d in pad])
    assert set(used.tolist()) == set(range(N)) and len(used) - N <= world * batch - 1
    assert len({d.num_batches for d in pad}) == 1


def test_exact_epoch_iterated_over_ranks_yields_each_sample_once(data):
    root, src = data
    seen = []
    for rank in range(3):
        ds = ShardedDataset(root, rank=rank, world_size=3, exact=True, batch_size=16)
        for b in ds:
            idx = b["index"].numpy()
            np.testing.assert_array_equal(b["measure"].numpy(), src["measure"][idx])
            seen.append(idx)
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(N))


def test_resume_mid_epoch_on_another_world_size_with_the_same_global_batch(data):
    root, _ = data
    kw = dict(seed=2, block_size=4, shuffle_blocks=3)
    full = ShardedDataset(root, batch_size=12, **kw).batch_indices(1)
    saved = ShardedDataset(root, world_size=2, rank=0, batch_size=6, **kw)
    saved.set_epoch(1)
    for k, _ in enumerate(saved):
        if k == 2:
            break
    state = saved.state_dict()
    assert state["batch"] == 3
    rest = []
    for rank in range(3):
        ds = ShardedDataset(root, world_size=3, rank=rank, batch_size=4, **kw)
        ds.load_state_dict(state)
        rest.append([b["index"].numpy() for b in ds])
    for step, expected in enumerate(full[3:]):
        assert np.array_equal(np.concatenate([r[step] for r in rest]), expected)


def test_splits_restrict_the_samples(data):
    root, _ = data
    ds = ShardedDataset(root, split="test", exact=True, shuffle=False, batch_size=8)
    idx = np.concatenate(epoch_batches(ds))
    n_train = int(N * 0.6)
    assert np.array_equal(idx, np.arange(n_train, n_train + min(max(n_train, 5000), N - n_train)))
    val = np.concatenate(epoch_batches(ShardedDataset(root, split="val", exact=True, batch_size=4)))
    assert np.array_equal(np.sort(val), np.arange(n_train - 10, n_train))
    chosen = np.array([3, 40, 41, 99, 150])                 # a split made in memory
    got = np.concatenate(epoch_batches(ShardedDataset(root, split=chosen, exact=True, shuffle=False, batch_size=2)))
    assert np.array_equal(got, chosen)
    with pytest.raises(DataError, match="sorted and unique"):
        ShardedDataset(root, split=np.array([5, 5, 6]))


def test_resume_mid_epoch_yields_exactly_the_rest(data):
    root, _ = data
    kw = dict(world_size=2, rank=1, batch_size=4, seed=7, block_size=4, shuffle_blocks=2)
    full = epoch_batches(ShardedDataset(root, **kw), 3)
    ds = ShardedDataset(root, **kw)
    ds.set_epoch(3)
    head = []
    for b in ds:
        head.append(b["index"].numpy().copy())
        if len(head) == 5:
            break
    state = ds.state_dict()
    assert state["epoch"] == 3 and state["batch"] == 5
    fresh = ShardedDataset(root, **kw)
    fresh.load_state_dict(state)
    fresh.set_epoch(3)
    rest = [b["index"].numpy() for b in fresh]
    assert len(head) + len(rest) == len(full)
    assert all(np.array_equal(x, y) for x, y in zip(head + rest, full))
    assert fresh.state_dict()["batch"] == len(full)
    # the next epoch starts from its beginning
    assert all(np.array_equal(x, y) for x, y in zip(epoch_batches(fresh, 4), epoch_batches(ShardedDataset(root, **kw), 4)))
    with pytest.raises(ConfigError, match="seed"):
        ShardedDataset(root, **{**kw, "seed": 8}).load_state_dict(state)
    with pytest.raises(ConfigError, match="mid-epoch"):
        ShardedDataset(root, **{**kw, "world_size": 4}).load_state_dict(state)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_plain_dataloader_with_workers_matches_one_process(data):
    root, _ = data
    kw = dict(batch_size=5, seed=4, block_size=4, shuffle_blocks=2, world_size=2, rank=0)
    ds = ShardedDataset(root, **kw)
    loader = DataLoader(ds, batch_size=None, num_workers=3, persistent_workers=True)
    for epoch in (2, 3):                   # persistent workers still follow set_epoch
        one = epoch_batches(ShardedDataset(root, **kw), epoch)
        ds.set_epoch(epoch)
        many = [b["index"].numpy() for b in loader]
        assert len(one) == len(many) and all(np.array_equal(x, y) for x, y in zip(one, many))
    # resuming through a plain DataLoader: the workers start after the consumed batches
    state = ds.state_dict(batches_consumed=4)
    fresh = ShardedDataset(root, **kw)
    fresh.load_state_dict(state)
    rest = [b["index"].numpy() for b in DataLoader(fresh, batch_size=None, num_workers=2)]
    assert all(np.array_equal(x, y) for x, y in zip(rest, one[4:])) and len(rest) == len(one) - 4


def test_workers_read_only_their_own_samples(data, monkeypatch):
    root, _ = data
    ds = ShardedDataset(root, batch_size=4, seed=1, block_size=4, shuffle_blocks=2, world_size=2, rank=1)
    requested = []
    original = ShardedDataset._read_batches
    monkeypatch.setattr(ShardedDataset, "_read_batches",
                        lambda self, batches: requested.append(np.concatenate(batches)) or original(self, batches))
    per_worker = []
    for worker in range(3):
        requested.clear()
        yielded = np.concatenate([b["index"].numpy() for b in ds.epoch_batches(0, 0, worker, 3)])
        assert np.array_equal(np.sort(np.concatenate(requested)), np.sort(yielded))
        per_worker.append(yielded)
    everything = np.concatenate(per_worker)
    assert len(np.unique(everything)) == len(everything) == ds.num_batches * 4
    assert np.array_equal(np.sort(everything), np.sort(np.concatenate(ds.batch_indices(0))))


def test_dataset_pickles_without_file_handles(data):
    root, src = data
    ds = ShardedDataset(root, batch_size=4, seed=1)
    next(iter(ds))                          # opens shards in this process
    clone = pickle.loads(pickle.dumps(ds))
    clone.set_epoch(1)
    ds.set_epoch(1)
    assert all(np.array_equal(a["index"], b["index"]) for a, b in zip(clone, ds))


def test_reader_errors(data, tmp_path):
    root, _ = data
    with pytest.raises(ConfigError, match="fewer than world_size"):
        ShardedDataset(root, world_size=4, batch_size=50)
    with pytest.raises(DataError, match="no dataset 'nope'"):
        ShardedDataset(root, preprocess=Preprocess(input="nope"))
    with pytest.raises(DataError, match="split file not found"):
        ShardedDataset(root, split="missing")
    with pytest.raises(DataError, match="no statistics"):
        bare = tmp_path / "bare"
        write_manifest(bare, [write_shard(bare, 0, 0, {"coe": np.ones((3, 2)), "measure": np.ones((3, 2, 2))})],
                       provenance={"tool": "test"})
        ShardedDataset(bare, preprocess=Preprocess(normalize_target=True))
    # a shard truncated after the manifest was written
    broken = tmp_path / "broken"
    infos = [write_shard(broken, i, 10 * i, {"measure": np.ones((10, 8, 8), "f4")}) for i in range(2)]
    write_manifest(broken, infos, provenance={"tool": "test"})
    shard = broken / "shard-00001.h5"
    shard.write_bytes(shard.read_bytes()[:-512])
    ds = ShardedDataset(broken, batch_size=4, shuffle=False, exact=True)
    with pytest.raises(DataError, match="shard-00001.h5: .* bytes, the manifest says"):
        list(ds)
    with pytest.raises(DataError, match="shard-00001.h5"):    # raised in the prefetch thread, re-raised here
        list(ds.loader())
