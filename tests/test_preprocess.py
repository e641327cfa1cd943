"""Input/target preprocessing in the reader (`bcrdist.data.preprocess`): the original's transforms and
per-sample reproducible noise."""

import numpy as np
import pytest
import torch

from bcrdist.data import Preprocess, ShardedDataset
from bcrdist.transforms import antipodal, output_scale
from data_helpers import make_reader_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_reader_dataset(tmp_path_factory.mktemp("reader") / "ds")


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
