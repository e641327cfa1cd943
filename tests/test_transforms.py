"""The original script's data transforms (`bcrdist.transforms`, reference §5.3, §5.4) and the network-input
assembly (`bcrdist.transforms.network_input`): one text for training batches (`data/preprocess.Preprocessor`)
and inference (`ScatteringModel.preprocess`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bcrdist import transforms
from bcrdist.data.format import read_manifest
from bcrdist.data.preprocess import Preprocess, Preprocessor
from bcrdist.models.bcrnet import BCRNet
from bcrdist.models.scattering import ScatteringModel
from bcrdist.transforms import network_input, network_input_shape
from train_helpers import make_dataset


def antipodal_loop(measure: np.ndarray) -> np.ndarray:
    """§5.3 by the letter: tmp2[s] = tmp[s + Ns/2 mod Ns]; concat [tmp, tmp2] along the detector axis
    (width 2·Nd); keep columns [Nd/2, 3Nd/2)."""
    ns, nd = measure.shape
    both = np.empty((ns, 2 * nd), dtype=measure.dtype)
    for s in range(ns):
        for j in range(nd):
            both[s, j] = measure[s, j]
            both[s, nd + j] = measure[(s + ns // 2) % ns, j]
    out = np.empty_like(measure)
    for s in range(ns):
        for j in range(nd):
            out[s, j] = both[s, nd // 2 + j]
    return out


@pytest.mark.parametrize("ns,nd", [(8, 6), (16, 4), (10, 10), (2, 2)])
def test_antipodal_matches_loop(ns, nd):
    x = np.random.default_rng(ns * nd).standard_normal((ns, nd))
    np.testing.assert_array_equal(transforms.antipodal(x), antipodal_loop(x))
    # element formula of §5.3
    y = transforms.antipodal(x)
    for s in range(ns):
        for j in range(nd):
            src = x[s, nd // 2 + j] if j < nd // 2 else x[(s + ns // 2) % ns, j - nd // 2]
            assert y[s, j] == src


def test_antipodal_batches_and_tensors():
    x = np.random.default_rng(1).standard_normal((3, 12, 8))
    y = transforms.antipodal(x)
    for i in range(3):
        np.testing.assert_array_equal(y[i], antipodal_loop(x[i]))
    yt = transforms.antipodal(torch.from_numpy(x))
    assert isinstance(yt, torch.Tensor)
    np.testing.assert_array_equal(yt.numpy(), y)


def test_antipodal_is_a_bijection():
    x = np.arange(12 * 8, dtype=np.float64).reshape(12, 8)
    y = transforms.antipodal(x)
    assert y.shape == x.shape
    np.testing.assert_array_equal(np.sort(y.ravel()), x.ravel())
    np.testing.assert_array_equal(transforms.inverse_antipodal(y), x)
    t = torch.from_numpy(x)
    assert torch.equal(transforms.inverse_antipodal(transforms.antipodal(t)), t)


def test_antipodal_commutes_with_row_shifts():
    x = np.random.default_rng(2).standard_normal((2, 16, 6))
    for k in range(-3, 17):
        np.testing.assert_array_equal(transforms.antipodal(np.roll(x, k, axis=-2)),
                                      np.roll(transforms.antipodal(x), k, axis=-2))


def test_antipodal_refuses_odd_sizes():
    with pytest.raises(ValueError):
        transforms.antipodal(np.zeros((7, 4)))
    with pytest.raises(ValueError):
        transforms.antipodal(np.zeros((8, 5)))


def test_output_scale_divides_by_half_range_without_shift():
    y = np.random.default_rng(3).uniform(-1526.33, 0.0, size=(50, 8, 8))
    y[0, 0, 0], y[0, 0, 1] = -1526.33, 0.0
    scale = transforms.output_scale(y.min(), y.max())
    assert scale == pytest.approx(0.5 * 1526.33)
    scaled = y / scale
    assert scaled.max() - scaled.min() == pytest.approx(2.0)
    assert scaled.max() == pytest.approx(0.0) and scaled.min() == pytest.approx(-2.0)   # no shift
    assert transforms.output_scale(0.0, 0.8) == pytest.approx(0.4)
    for lo, hi in ((1.0, 1.0), (2.0, 1.0), (0.0, float("inf"))):
        with pytest.raises(ValueError):
            transforms.output_scale(lo, hi)


# ----------------------------------------------------------------------------------------------------------
# the network input


@pytest.mark.parametrize("apply_antipodal", [False, True])
def test_network_input_numpy_and_torch(apply_antipodal):
    rng = np.random.default_rng(0)
    m, mi = rng.standard_normal((2, 3, 8, 6))
    ref = (lambda a: np.stack([antipodal_loop(s) for s in a])) if apply_antipodal else (lambda a: a)
    np.testing.assert_array_equal(network_input(m, apply_antipodal=apply_antipodal), ref(m))
    both = network_input(m, mi, apply_antipodal=apply_antipodal)
    np.testing.assert_array_equal(both, np.concatenate([ref(m), ref(mi)], axis=-1))
    t = network_input(torch.from_numpy(m), torch.from_numpy(mi), apply_antipodal=apply_antipodal)
    assert isinstance(t, torch.Tensor)
    np.testing.assert_array_equal(t.numpy(), both)
    assert network_input_shape((8, 6), use_imag=True) == (8, 12) == both.shape[1:]
    assert network_input_shape((8, 6), use_imag=False) == (8, 6)


@pytest.mark.parametrize("use_imag", [False, True])
def test_training_batches_and_inference_assemble_the_same_input(tmp_path, use_imag):
    data = make_dataset(tmp_path / "ds", n=20, per_shard=10, val=4)
    manifest = read_manifest(data)
    spec = Preprocess(input="measure", target="coe", input_imag="measure_imag" if use_imag else None,
                      antipodal=True)
    rng = np.random.default_rng(1)
    raw = {"measure": rng.standard_normal((4, 16, 8)).astype(np.float32),
           "measure_imag": rng.standard_normal((4, 16, 8)).astype(np.float32),
           "coe": rng.standard_normal((4, 16, 6)).astype(np.float32)}
    batch = Preprocessor(spec, manifest)(raw, np.arange(4), seed=0, epoch=0)
    model = ScatteringModel(BCRNet(n_input=network_input_shape((16, 8), use_imag), n_output=(16, 6), alpha=2,
                                   n_cnn=1, n_cnn3=1), antipodal=True, use_imag=use_imag)
    x = model.preprocess(raw["measure"], raw["measure_imag"] if use_imag else None)
    assert x.dtype == batch["input"].dtype == torch.float32
    assert torch.equal(x, batch["input"])
