"""The rank-aware reader: partition rules, order, resume, workers, I/O paths, preprocessing, errors."""

import pickle
import threading

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from bcrdist.transforms import antipodal, output_scale
from bcrdist.data import Preprocess, ShardedDataset, epoch_order
from bcrdist.data.format import write_manifest, write_shard
from bcrdist.fileio import file_sha256
from bcrdist.data.splits import write_splits
from bcrdist.data.stats import store_statistics
from bcrdist.errors import ConfigError, DataError

SHARD_SIZES = [37, 50, 13, 61, 12]          # uneven on purpose; N = 173
N = sum(SHARD_SIZES)


def _source(n=N, seed=0):
    rng = np.random.default_rng(seed)
    return {"measure": rng.standard_normal((n, 4, 6)).astype("f4"),
            "measure_imag": rng.standard_normal((n, 4, 6)).astype("f4"),
            "coe": rng.standard_normal((n, 4, 3)),
            "farfield": (rng.standard_normal((n, 3, 3)) + 1j * rng.standard_normal((n, 3, 3))).astype("c8")}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("reader") / "ds"
    src = _source()
    infos, first = [], 0
    for i, n in enumerate(SHARD_SIZES):
        infos.append(write_shard(root, i, first, {k: v[first:first + n] for k, v in src.items()}))
        first += n
    write_manifest(root, infos, provenance={"tool": "test"})
    store_statistics(root)
    write_splits(root, 0.6, val=10)
    return root, src


def _epoch(ds, epoch=None):
    if epoch is not None:
        ds.set_epoch(epoch)
    return [b["index"].numpy().copy() for b in ds]


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


def test_order_depends_on_seed_and_epoch_only(data):
    root, _ = data
    a = ShardedDataset(root, seed=1, batch_size=5, block_size=4)
    b = ShardedDataset(root, seed=1, batch_size=5, block_size=4)
    assert all(np.array_equal(x, y) for x, y in zip(_epoch(a, 3), _epoch(b, 3)))
    assert not np.array_equal(np.concatenate(_epoch(a, 3)), np.concatenate(_epoch(a, 4)))
    assert not np.array_equal(np.concatenate(_epoch(a, 3)),
                              np.concatenate(_epoch(ShardedDataset(root, seed=2, batch_size=5, block_size=4), 3)))
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


def test_epoch_order_is_block_structured():
    pos, window = epoch_order(100, seed=0, epoch=0, shuffle=True, block_size=10, shuffle_blocks=2)
    assert np.array_equal(np.sort(pos), np.arange(100))
    for w in range(5):
        members = pos[window == w]
        assert len(members) == 20 and len(np.unique(members // 10)) == 2   # two whole blocks per window
    pos, window = epoch_order(100, seed=0, epoch=0, shuffle=False, block_size=10, shuffle_blocks=2)
    assert np.array_equal(pos, np.arange(100)) and window[-1] == 4


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
    src = _source(40, seed=1)
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


def test_splits_restrict_the_samples(data):
    root, _ = data
    ds = ShardedDataset(root, split="test", exact=True, shuffle=False, batch_size=8)
    idx = np.concatenate(_epoch(ds))
    n_train = int(N * 0.6)
    assert np.array_equal(idx, np.arange(n_train, n_train + min(max(n_train, 5000), N - n_train)))
    val = np.concatenate(_epoch(ShardedDataset(root, split="val", exact=True, batch_size=4)))
    assert np.array_equal(np.sort(val), np.arange(n_train - 10, n_train))
    chosen = np.array([3, 40, 41, 99, 150])                 # a split made in memory
    got = np.concatenate(_epoch(ShardedDataset(root, split=chosen, exact=True, shuffle=False, batch_size=2)))
    assert np.array_equal(got, chosen)
    with pytest.raises(DataError, match="sorted and unique"):
        ShardedDataset(root, split=np.array([5, 5, 6]))


def test_resume_mid_epoch_yields_exactly_the_rest(data):
    root, _ = data
    kw = dict(world_size=2, rank=1, batch_size=4, seed=7, block_size=4, shuffle_blocks=2)
    full = _epoch(ShardedDataset(root, **kw), 3)
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
    assert all(np.array_equal(x, y) for x, y in zip(_epoch(fresh, 4), _epoch(ShardedDataset(root, **kw), 4)))
    with pytest.raises(ConfigError, match="seed"):
        ShardedDataset(root, **{**kw, "seed": 8}).load_state_dict(state)
    with pytest.raises(ConfigError, match="mid-epoch"):
        ShardedDataset(root, **{**kw, "world_size": 4}).load_state_dict(state)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_resume_and_worker_order(data, workers):
    root, src = data
    kw = dict(world_size=3, rank=2, batch_size=3, seed=11, block_size=4, shuffle_blocks=3)
    full = _epoch(ShardedDataset(root, **kw), 1)
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


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_plain_dataloader_with_workers_matches_one_process(data):
    root, _ = data
    kw = dict(batch_size=5, seed=4, block_size=4, shuffle_blocks=2, world_size=2, rank=0)
    ds = ShardedDataset(root, **kw)
    loader = DataLoader(ds, batch_size=None, num_workers=3, persistent_workers=True)
    for epoch in (2, 3):                   # persistent workers still follow set_epoch
        one = _epoch(ShardedDataset(root, **kw), epoch)
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
        yielded = np.concatenate([b["index"].numpy() for b in ds._iter_batches(0, 0, worker, 3)])
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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pinned_batches(data):
    root, _ = data
    for workers in (0, 2):
        batch = next(iter(ShardedDataset(root, batch_size=4).loader(num_workers=workers, pin_memory=True)))
        assert all(t.is_pinned() for t in batch.values())
        batch["measure"].to("cuda", non_blocking=True)


def test_preprocessing_matches_the_original_transforms(data):
    root, src = data
    spec = Preprocess(input="measure", input_imag="measure_imag", target="coe", antipodal=True,
                      normalize_target=True, keep=("farfield",))
    ds = ShardedDataset(root, batch_size=8, preprocess=spec, seed=2)
    scale = output_scale(src["coe"].min(), src["coe"].max())
    assert ds.target_scale == pytest.approx(scale)
    b = next(iter(ds))
    idx = b["index"].numpy()
    assert b["input"].shape == (8, 4, 12) and b["input"].dtype == torch.float32
    expected = np.concatenate([antipodal(src["measure"][idx]), antipodal(src["measure_imag"][idx])], axis=-1)
    np.testing.assert_array_equal(b["input"].numpy(), expected)
    np.testing.assert_allclose(b["target"].numpy(), (src["coe"][idx] / scale).astype("f4"), rtol=1e-6)
    np.testing.assert_array_equal(b["farfield"].numpy(), src["farfield"][idx])
    real = next(iter(ShardedDataset(root, batch_size=4, shuffle=False,
                                    preprocess=Preprocess(input="farfield.real", target="coe"))))
    np.testing.assert_array_equal(real["input"].numpy(), src["farfield"][:4].real)


def test_noise_is_reproducible_per_sample(data):
    root, src = data
    noisy = Preprocess(input="measure", target="coe", noise=5.0)

    def by_index(ds, epoch):
        ds.set_epoch(epoch)
        return {int(i): x for b in ds for i, x in zip(b["index"].numpy(), b["input"].numpy())}

    a = by_index(ShardedDataset(root, batch_size=4, preprocess=noisy, seed=3), 1)
    b = by_index(ShardedDataset(root, batch_size=9, preprocess=noisy, seed=3, drop_last=False), 1)  # other batches
    common = sorted(set(a) & set(b))
    assert len(common) > 100 and all(np.array_equal(a[i], b[i]) for i in common)
    i = common[0]
    rel = a[i] / src["measure"][i] - 1
    assert 0.02 < rel.std() < 0.08                             # σ = 5 %
    c = by_index(ShardedDataset(root, batch_size=4, preprocess=noisy, seed=3), 2)
    assert not np.array_equal(a[i], c[i])                      # a new draw each epoch
    fixed = Preprocess(input="measure", target="coe", noise=5.0, noise_fixed=True)
    d1 = by_index(ShardedDataset(root, batch_size=4, preprocess=fixed, seed=3), 1)
    d2 = by_index(ShardedDataset(root, batch_size=4, preprocess=fixed, seed=3), 2)
    both = sorted(set(d1) & set(d2))
    assert all(np.array_equal(d1[j], d2[j]) for j in both)


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


def test_loader_thread_stops_when_the_consumer_stops(data):
    root, _ = data
    loader = ShardedDataset(root, batch_size=2).loader(prefetch=1)
    for _ in loader:
        break
    assert not [t for t in threading.enumerate() if t.name == "bcrdist-prefetch"]
