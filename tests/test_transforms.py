"""The network-input assembly (`bcrdist.transforms.network_input`): one text for training batches
(`data/preprocess.Preprocessor`) and inference (`ScatteringModel.preprocess`). The original's transforms
themselves are tested in test_keras_import.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bcrdist.data.format import read_manifest
from bcrdist.data.preprocess import Preprocess, Preprocessor
from bcrdist.models.scattering import ScatteringModel
from bcrdist.transforms import network_input, network_input_shape
from train_helpers import make_dataset


def antipodal_loop(m: np.ndarray) -> np.ndarray:
    """The original's pairing, entry by entry: columns j < Nd/2 hold m[s, Nd/2 + j], the others
    m[s + Ns/2 mod Ns, j − Nd/2]."""
    ns, nd = m.shape[-2:]
    out = np.empty_like(m)
    for s in range(ns):
        for j in range(nd):
            out[..., s, j] = m[..., s, nd // 2 + j] if j < nd // 2 else m[..., (s + ns // 2) % ns, j - nd // 2]
    return out


@pytest.mark.parametrize("apply_antipodal", [False, True])
def test_network_input_numpy_and_torch(apply_antipodal):
    rng = np.random.default_rng(0)
    m, mi = rng.standard_normal((2, 3, 8, 6))
    ref = antipodal_loop if apply_antipodal else (lambda a: a)
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
    model = ScatteringModel({"n_input": network_input_shape((16, 8), use_imag), "n_output": (16, 6), "alpha": 2,
                             "n_cnn": 1, "n_cnn3": 1}, antipodal=True, use_imag=use_imag)
    x = model.preprocess(raw["measure"], raw["measure_imag"] if use_imag else None)
    assert x.dtype == batch["input"].dtype == torch.float32
    assert torch.equal(x, batch["input"])
