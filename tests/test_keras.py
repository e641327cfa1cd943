"""Keras weight import (`bcrdist.models.keras`): the fixtures reproduced, both naming schemes, refusals."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from bcrdist.models.keras import load_keras_weights
from bcrdist.errors import DataError
from bcrdist.models import MNNH, MNNH2
from bcrdist.models.bcrnet import BCRNet

KERAS = Path(__file__).resolve().parent / "fixtures" / "keras"
MNNH_FILE = KERAS / "mnnh_1d_keras_weights.h5"
BCR_FILE = KERAS / "bcr_wcomp3_keras_weights.h5"


def _decode(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def rewrite_keras_file(src, dst, rename=lambda n: n, drop=(), transform=None, as_bytes=False):
    """Copy a save_weights file layer by layer: rename layers (and their weight paths), drop some, or
    transform arrays (`transform[layer](weight_name, array)`); `as_bytes` stores names as bytes like
    Keras 2.2 / h5py 2."""
    transform = transform or {}
    encode = (lambda s: s.encode()) if as_bytes else (lambda s: s)
    with h5py.File(src, "r") as fi, h5py.File(dst, "w") as fo:
        for k, v in fi.attrs.items():
            if k != "layer_names":
                fo.attrs[k] = v
        names = []
        for raw in fi.attrs["layer_names"]:
            name = _decode(raw)
            if name in drop:
                continue
            new = rename(name)
            names.append(encode(new))
            g, go = fi[name], fo.create_group(new)
            weight_names = []
            for w in (_decode(x) for x in g.attrs["weight_names"]):
                arr = np.asarray(g[w])
                if name in transform:
                    arr = transform[name](w, arr)
                nw = new + w[len(name):]
                go.create_dataset(nw, data=arr)
                weight_names.append(encode(nw))
            go.attrs["weight_names"] = (np.array(weight_names, dtype="S" if as_bytes else object)
                                        if weight_names else np.array([], dtype=np.float64))
        fo.attrs["layer_names"] = np.array(names, dtype="S" if as_bytes else object)


def keras22_name(name: str) -> str:
    """tf_keras counts `cnnk1d`, `cnnk1d_1`, …; Keras 2.2 counts `cnnk1d_1`, `cnnk1d_2`, …"""
    base, counter = re.fullmatch(r"(.*?)(?:_(\d+))?", name).groups()
    return f"{base}_{int(counter or 0) + 1}"


def _mnnh_io():
    with h5py.File(KERAS / "mnn_layers.h5", "r") as f:
        return np.asarray(f["mnnh_1d"]["input"])[..., 0], np.asarray(f["mnnh_1d"]["output"])


def _bcr():
    with h5py.File(KERAS / "bcr_wcomp3_io.h5", "r") as f:
        a = {k: int(f.attrs[k]) for k in ("Ns", "Nd", "Nt", "Nr", "alpha", "n_cnn", "n_cnn3", "w_comp")}
        io = {k: np.asarray(f[k]) for k in ("input", "output", "aux")}
    model = BCRNet((a["Ns"], a["Nd"]), (a["Nt"], a["Nr"]), alpha=a["alpha"], n_cnn=a["n_cnn"],
                   n_cnn3=a["n_cnn3"], w_comp=a["w_comp"], levels=4)
    return model, io


# ----------------------------------------------------------------------------------------------------------
# reproducing the Keras models


def test_bcrnet_fixture_outputs_and_aux_reproduced():
    model, io = _bcr()
    load_keras_weights(model, BCR_FILE)
    with torch.no_grad():
        out, aux = model(torch.from_numpy(io["input"]), return_aux=True)
    np.testing.assert_allclose(aux.numpy(), io["aux"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.numpy(), io["output"], rtol=1e-5, atol=1e-5)


def test_tf_keras_names_start_without_counter():
    with h5py.File(MNNH_FILE, "r") as f:
        names = {_decode(n) for n in f.attrs["layer_names"]}
    assert {"cnnk1d", "cnnk1d_1"} <= names            # the fixture really uses tf_keras naming


@pytest.mark.parametrize("as_bytes", [False, True])
def test_keras22_names_load_identically(tmp_path, as_bytes):
    renamed = tmp_path / "keras22.h5"
    rewrite_keras_file(MNNH_FILE, renamed, rename=keras22_name, as_bytes=as_bytes)
    with h5py.File(renamed, "r") as f:
        names = {_decode(n) for n in f.attrs["layer_names"]}
    assert {"cnnk1d_1", "cnnk1d_2"} <= names and "cnnk1d" not in names
    x, expected = _mnnh_io()
    a = load_keras_weights(MNNH(64, 1, 4, 2, 3), MNNH_FILE)
    b = load_keras_weights(MNNH(64, 1, 4, 2, 3), renamed)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb), na
    with torch.no_grad():
        np.testing.assert_allclose(b(torch.from_numpy(x)).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_counters_with_an_offset_load(tmp_path):
    """The BCR fixture starts at `cnnk1d_10`; shifting every counter once more must not matter."""
    renamed = tmp_path / "shifted.h5"
    rewrite_keras_file(BCR_FILE, renamed, rename=keras22_name, as_bytes=True)
    model, io = _bcr()
    load_keras_weights(model, renamed)
    with torch.no_grad():
        out = model(torch.from_numpy(io["input"]))
    np.testing.assert_allclose(out.numpy(), io["output"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("offset", [3, 5, 9])
def test_counters_crossing_a_digit_boundary_sort_numerically(tmp_path, offset):
    """`cnnk1d_9` was created before `cnnk1d_10`: the creation order is numeric, not lexicographic."""
    def shift(name):
        base, counter = re.fullmatch(r"(.*?)(?:_(\d+))?", name).groups()
        return f"{base}_{int(counter or 0) + offset}"
    renamed = tmp_path / "offset.h5"
    rewrite_keras_file(MNNH_FILE, renamed, rename=shift)
    with h5py.File(renamed, "r") as f:
        names = {_decode(n) for n in f.attrs["layer_names"]}
    assert {"cnnk1d_9", "cnnk1d_10"} <= names
    x, expected = _mnnh_io()
    model = load_keras_weights(MNNH(64, 1, 4, 2, 3), renamed)
    with torch.no_grad():
        np.testing.assert_allclose(model(torch.from_numpy(x)).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_load_keeps_creation_order_not_file_order(tmp_path):
    """Layer order in `layer_names` is depth order; reversing it must not change what is loaded."""
    with h5py.File(MNNH_FILE, "r") as f:
        names = [_decode(n) for n in f.attrs["layer_names"]]
    shuffled = tmp_path / "reversed.h5"
    rewrite_keras_file(MNNH_FILE, shuffled)
    with h5py.File(shuffled, "r+") as f:
        f.attrs["layer_names"] = np.array(names[::-1], dtype=object)
    x, expected = _mnnh_io()
    model = load_keras_weights(MNNH(64, 1, 4, 2, 3), shuffled)
    with torch.no_grad():
        np.testing.assert_allclose(model(torch.from_numpy(x)).numpy(), expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# refusing files that do not match


@pytest.mark.parametrize("src,make,drop,named", [
    (MNNH_FILE, lambda: MNNH(64, 1, 4, 2, 3), "cnnk1d_3", "cnnk1d"),
    (MNNH_FILE, lambda: MNNH(64, 1, 4, 2, 3), "cnni1d_2", "cnni1d"),
    (MNNH_FILE, lambda: MNNH(64, 1, 4, 2, 3), "cnnr1d", "cnnr1d"),
    (BCR_FILE, lambda: _bcr()[0], "conv2d_6", "conv2d"),
    (BCR_FILE, lambda: _bcr()[0], "inv_wave_let_c1d_4", "inv_wave_let_c1d"),
])
def test_missing_layer_refused_naming_it(tmp_path, src, make, drop, named):
    bad = tmp_path / "missing.h5"
    rewrite_keras_file(src, bad, drop={drop})
    with pytest.raises(DataError) as info:
        load_keras_weights(make(), bad)
    assert named in str(info.value), str(info.value)


@pytest.mark.parametrize("layer,weight,shape", [
    ("cnnk1d_3", "kernel", (3, 5, 3)),      # (5, 3, 3) reshaped
    ("cnnk1d", "kernel", (3, 4, 2, 2)),     # (3, 4, 4) reshaped
    ("cnnr1d_1", "kernel", (4, 2, 3)),      # (8, 1, 3) reshaped
    ("cnni1d_2", "bias", (2, 2)),           # (4,) reshaped
])
@pytest.mark.parametrize("keras22", [False, True])
def test_reshaped_weight_refused_naming_the_layer(tmp_path, layer, weight, shape, keras22):
    bad = tmp_path / "reshaped.h5"
    transform = {layer: lambda w, a: a.reshape(shape) if weight in w else a}
    rewrite_keras_file(MNNH_FILE, bad, rename=keras22_name if keras22 else (lambda n: n), transform=transform)
    with pytest.raises(DataError) as info:
        load_keras_weights(MNNH(64, 1, 4, 2, 3), bad)
    expected_name = keras22_name(layer) if keras22 else layer
    assert re.search(rf"\b{expected_name}\b", str(info.value)), str(info.value)


def test_reshaped_bcr_kernel_refused(tmp_path):
    bad = tmp_path / "reshaped.h5"
    rewrite_keras_file(BCR_FILE, bad, transform={"wave_let_c1d_5": lambda w, a: a.reshape(6, 8, 4)})
    with pytest.raises(DataError, match=r"wave_let_c1d_5\b"):
        load_keras_weights(_bcr()[0], bad)


def test_other_model_refused():
    with pytest.raises(DataError):
        load_keras_weights(MNNH2(64, 1, 4, 2, 3), MNNH_FILE)
    with pytest.raises(DataError):
        load_keras_weights(MNNH(64, 1, 4, 2, 4), MNNH_FILE)         # alpha 4 instead of 3


def test_bcrnet_with_other_configuration_refused():
    with pytest.raises(DataError, match="cnnk1d"):          # w_comp 1 instead of 3: kernel shapes differ
        load_keras_weights(BCRNet((64, 32), (64, 24), alpha=4, n_cnn=3, n_cnn3=4, w_comp=1, levels=4), BCR_FILE)
    with pytest.raises(DataError):                          # one level fewer: layer counts differ
        load_keras_weights(BCRNet((64, 32), (64, 24), alpha=4, n_cnn=3, n_cnn3=4, w_comp=3, levels=3), BCR_FILE)


def test_non_keras_hdf5_refused(tmp_path):
    with pytest.raises(DataError):
        load_keras_weights(MNNH(64, 1, 4, 2, 3), KERAS / "bcr_wcomp3_io.h5")
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["kernel"] = np.zeros((3, 3))
    with pytest.raises(DataError):
        load_keras_weights(MNNH(64, 1, 4, 2, 3), plain)
    text = tmp_path / "weights.h5"
    text.write_text("not an HDF5 file\n")
    with pytest.raises(DataError):
        load_keras_weights(MNNH(64, 1, 4, 2, 3), text)
