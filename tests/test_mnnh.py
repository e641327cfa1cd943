"""MNN-H / MNN-H2 (`bcrdist.mnn.MNNH`, `MNNH2`) against the Keras fixtures, the NumPy reference of the
original builders (§3) and closed-form parameter counts."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import numpy_reference as ref
from bcrdist.models.keras import load_keras_weights
from bcrdist.models import MNNH, MNNH2

KERAS = Path(__file__).resolve().parent / "fixtures" / "keras"


def _fixture_io(case):
    with h5py.File(KERAS / "mnn_layers.h5", "r") as f:
        return np.asarray(f[case]["input"]), np.asarray(f[case]["output"])


# ----------------------------------------------------------------------------------------------------------
# the Keras builder fixtures (L = 4, n_cnn = 2, alpha = 3, Nx = 64)


@pytest.mark.parametrize("cls,case", [(MNNH, "mnnh_1d"), (MNNH2, "mnnh2_1d")])
def test_builder_fixture_reproduced_through_load_keras_weights(cls, case):
    x, expected = _fixture_io(case)
    model = load_keras_weights(cls(64, 1, 4, 2, 3), KERAS / f"{case}_keras_weights.h5")
    with torch.no_grad():
        out = model(torch.from_numpy(x[..., 0]))
    assert out.shape == expected.shape == (3, 64)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fn,case", [(ref.mnnh, "mnnh_1d"), (ref.mnnh2, "mnnh2_1d")])
def test_numpy_reference_builders_reproduce_keras_fixture(fn, case):
    x, expected = _fixture_io(case)
    by_class = {k: [[a.astype(np.float64) for a in arrays] for arrays in v]
                for k, v in ref.read_keras_h5(KERAS / f"{case}_keras_weights.h5").items()}
    weights = ref.mnnh_weights_from_keras(by_class, 1, 4, 2, h2=fn is ref.mnnh2)
    out = fn(x.astype(np.float64), weights, dim=1, L=4, n_cnn=2)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls,case", [(MNNH, "mnnh_1d"), (MNNH2, "mnnh2_1d")])
def test_builder_parameter_count_equals_keras_file(cls, case):
    with h5py.File(KERAS / f"{case}_keras_weights.h5", "r") as f:
        total = 0
        for name in f.attrs["layer_names"]:
            g = f[name]
            total += sum(int(np.prod(g[w].shape)) for w in g.attrs["weight_names"])
    assert sum(p.numel() for p in cls(64, 1, 4, 2, 3).parameters()) == total


# ----------------------------------------------------------------------------------------------------------
# random weights, 1D/2D/3D, CNN and LC, alpha_out None and 2: ours vs the NumPy reference (float64)


def _model_keras_weights(model):
    """The model's weights as a Keras file would hold them: {class: [[kernel, bias], …]} in creation order."""
    by_class = {}
    for cls, module in model.keras_layers():
        kernel, bias = ref.keras_weights(module)
        by_class.setdefault(cls, []).append([kernel] + ([] if bias is None else [bias]))
    return by_class


BUILDER_CASES = [
    # (h2, n_input, dim, L, n_cnn, alpha, alpha_out, w_b, activation, layer, bc_padding)
    (False, 32, 1, 3, 2, 3, None, (3, 5, 7), "relu", "CNN", "period"),
    (False, 32, 1, 3, 2, 3, 2, (3, 5, 7), "tanh", "CNN", "zero"),
    (False, 32, 1, 3, 2, 2, None, (3, 5, 7), "relu", "LC", "period"),
    (False, 32, 1, 3, 1, 2, 2, (5, 3, 3), "relu", "LC", "zero"),
    (False, (16, 8), 2, 2, 2, 3, None, (3, 5, 3), "relu", "CNN", "period"),
    (False, (16, 8), 2, 2, 2, 3, 2, (3, 3, 3), "relu", "CNN", "zero"),
    (False, (8, 8), 2, 2, 2, 2, None, (3, 3, 3), "relu", "LC", "period"),
    (False, (8, 8), 2, 2, 1, 2, 2, (3, 3, 3), "relu", "LC", "period"),
    (False, (8, 4, 8), 3, 2, 1, 2, None, (3, 3, 3), "relu", "CNN", "period"),
    (False, (8, 4, 8), 3, 2, 1, 2, 2, (3, 3, 3), "relu", "CNN", "period"),
    (True, 32, 1, 3, 2, 3, None, (3, 5, 7), "relu", "CNN", "period"),
    (True, 64, 1, 4, 2, 2, 2, (3, 5, 7), "relu", "CNN", "zero"),
    (True, 32, 1, 3, 2, 2, None, (3, 5, 7), "relu", "LC", "period"),
    (True, 32, 1, 3, 1, 2, 2, (3, 5, 7), "relu", "LC", "period"),
    (True, (16, 16), 2, 3, 1, 2, None, (3, 5, 7), "relu", "CNN", "period"),
    (True, (16, 8), 2, 3, 1, 2, 2, (3, 3, 5), "relu", "CNN", "period"),
    (True, (16, 8), 2, 3, 1, 2, None, (3, 3, 5), "relu", "LC", "period"),
    (True, (16, 8), 2, 3, 1, 2, 2, (3, 3, 3), "tanh", "LC", "zero"),
    (True, (8, 8, 8), 3, 3, 1, 2, None, (3, 3, 3), "relu", "CNN", "period"),
    (True, (8, 8, 8), 3, 3, 1, 2, 2, (3, 3, 3), "relu", "CNN", "zero"),
]


def _case_id(c):
    h2, n, dim, L, n_cnn, alpha, alpha_out, w_b, act, layer, bc = c
    return f"{'MNNH2' if h2 else 'MNNH'}-{dim}D-{layer}-N{n}-L{L}-out{alpha_out}-{bc}"


@pytest.mark.parametrize("case", BUILDER_CASES, ids=_case_id)
def test_builder_matches_numpy_reference(case):
    h2, n, dim, L, n_cnn, alpha, alpha_out, w_b, act, layer, bc = case
    torch.manual_seed(L * 100 + dim)
    kw = dict(alpha_out=alpha_out, w_b=w_b, activation=act, layer=layer, bc_padding=bc)
    model = (MNNH2 if h2 else MNNH)(n, dim, L, n_cnn, alpha, **kw).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_()
    shape = (n,) if isinstance(n, int) else tuple(n)
    x = np.random.default_rng(dim + L).standard_normal((2,) + shape)
    with torch.no_grad():
        out = model(torch.from_numpy(x)).numpy()
    expected_shape = (2,) + shape if alpha_out is None else (2, alpha_out) + shape
    assert out.shape == expected_shape
    weights = ref.mnnh_weights_from_keras(_model_keras_weights(model), dim, L, n_cnn, layer=layer, h2=h2)
    expected = (ref.mnnh2 if h2 else ref.mnnh)(x, weights, dim, L, n_cnn, **kw)
    if alpha_out is not None:
        expected = np.moveaxis(expected, -1, 1)
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------------------------------------
# parameter counts from §3 in closed form


def expected_parameter_count(h2, n, dim, L, n_cnn, alpha, alpha_out, w_b, layer):
    """Σ over the layers of §3: a convolution (kernel volume v, C_in → C_out) has v·C_in·C_out + C_out
    parameters; a locally connected one has that times the number of output positions g^dim."""
    n = (n,) * dim if isinstance(n, int) else tuple(n)
    m = [a // 2 ** L for a in n]
    pm, al = math.prod(m), alpha_out or 1
    big_m = pm * al
    v_ad, v_2, v_l = (w ** dim for w in w_b)

    def conv(volume, cin, cout, grid):
        positions = grid ** dim if layer == "LC" else 1
        return positions * (volume * cin * cout + cout)

    total = conv(v_ad, pm, big_m, 2 ** L) + (n_cnn - 1) * conv(v_ad, big_m, big_m, 2 ** L)
    if not h2:
        for k in range(2, L + 1):
            big_w = pm * 2 ** (dim * (L - k))
            total += conv(big_w, 1, alpha, 2 ** k)
            total += n_cnn * conv(v_2 if k == 2 else v_l, alpha, alpha, 2 ** k)
            total += conv(1, alpha, big_w * al, 2 ** k)
        return total
    total += conv(pm, 1, alpha, 2 ** L)
    total += sum(conv(2 ** dim, alpha, alpha, 2 ** ell) for ell in range(2, L))
    total += sum(n_cnn * conv(v_2 if ell == 2 else v_l, alpha, alpha, 2 ** ell) for ell in range(2, L + 1))
    total += sum(conv(1, alpha, 2 ** dim * alpha, 2 ** ell) for ell in range(2, L))
    total += conv(1, alpha, big_m, 2 ** L)
    return total


COUNT_CASES = [
    (h2, n, dim, L, n_cnn, alpha, alpha_out, w_b, layer)
    for h2 in (False, True)
    for (n, dim, L) in ((320, 1, 5), (64, 1, 4), ((64, 32), 2, 3), ((16, 16, 16), 3, 3))
    for (n_cnn, alpha) in ((2, 4), (3, 6))
    for alpha_out in (None, 2)
    for w_b in ((3, 5, 7),)
    for layer in ("CNN", "LC")
    if not (layer == "LC" and dim == 3)
]


@pytest.mark.parametrize("case", COUNT_CASES, ids=lambda c: f"{'H2' if c[0] else 'H'}-{c[2]}D-{c[8]}-a{c[5]}-"
                                                           f"out{c[6]}-ncnn{c[4]}")
def test_parameter_count_matches_closed_form(case):
    h2, n, dim, L, n_cnn, alpha, alpha_out, w_b, layer = case
    model = (MNNH2 if h2 else MNNH)(n, dim, L, n_cnn, alpha, alpha_out=alpha_out, w_b=w_b, layer=layer)
    assert sum(p.numel() for p in model.parameters()) == expected_parameter_count(*case)


def test_builder_parameters_eager_glorot_and_zero_bias():
    torch.manual_seed(0)
    model = MNNH2((16, 16), 2, 3, 2, 4, alpha_out=2)
    before = {n: p.data_ptr() for n, p in model.named_parameters()}
    assert before
    for name, p in model.named_parameters():
        assert not isinstance(p, torch.nn.parameter.UninitializedParameter)
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
        else:
            assert torch.count_nonzero(p) == p.numel(), name
    model(torch.randn(2, 16, 16)).sum().backward()
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == before
    assert all(p.grad is not None for p in model.parameters())


# ----------------------------------------------------------------------------------------------------------
# arguments the builders refuse


def test_mnnh2_needs_three_levels():
    with pytest.raises(ValueError) as info:
        MNNH2(64, 1, 2, 2, 3)
    message = str(info.value)
    assert "MNNH2" in message and ("L ≥ 3" in message or "L >= 3" in message), message
    MNNH2(64, 1, 3, 2, 3)       # L = 3 is fine


def test_mnnh_needs_two_levels():
    with pytest.raises(ValueError, match="L"):
        MNNH(64, 1, 1, 2, 3)


@pytest.mark.parametrize("cls", [MNNH, MNNH2])
def test_bad_layer_family_refused(cls):
    with pytest.raises(ValueError, match="layer") as info:
        cls(64, 1, 3, 2, 3, layer="Conv")
    assert cls.__name__ in str(info.value)


@pytest.mark.parametrize("cls", [MNNH, MNNH2])
def test_locally_connected_3d_refused(cls):
    with pytest.raises(ValueError, match="dim") as info:
        cls((16, 16, 16), 3, 3, 2, 3, layer="LC")
    assert cls.__name__ in str(info.value)


@pytest.mark.parametrize("cls", [MNNH, MNNH2])
def test_sizes_not_divisible_by_2_to_the_L_refused(cls):
    with pytest.raises(ValueError) as info:
        cls((48, 40), 2, 4, 2, 3)
    assert "16" in str(info.value)


@pytest.mark.parametrize("cls", [MNNH, MNNH2])
def test_unknown_bc_padding_refused(cls):
    with pytest.raises(ValueError, match="bc_padding"):
        cls(64, 1, 3, 2, 3, bc_padding="reflect")


def test_wrong_input_shape_refused():
    model = MNNH(32, 1, 3, 1, 2)
    with pytest.raises(ValueError, match="32"):
        model(torch.zeros(2, 30))
