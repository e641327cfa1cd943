"""MNN layers (`bcrdist.mnn`) against the Keras ground truth and an independent NumPy reference.

Expected values come only from tests/fixtures/keras/mnn_layers.h5 (outputs of the original Keras layers)
and from tests/numpy_reference.py (channels-last loops written from the Keras semantics).
"""

from __future__ import annotations

import itertools
import json
import math
import random
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import numpy_reference as ref
from bcrdist import mnn
from bcrdist.models.keras import set_keras_weights

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "keras" / "mnn_layers.h5"


def to_last(t: torch.Tensor) -> np.ndarray:
    """channels-first torch (B, C, *N) → channels-last numpy (B, *N, C)."""
    return np.moveaxis(t.detach().cpu().numpy(), 1, -1)


def to_first(a: np.ndarray, dtype=torch.float64) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, 1))).to(dtype)


def _tup(v):
    return tuple(_tup(x) for x in v) if isinstance(v, list) else v


# ----------------------------------------------------------------------------------------------------------
# 1. every layer case of the Keras fixture


def _layer_cases():
    with h5py.File(FIXTURE, "r") as f:
        return sorted(k for k in f if "class" in f[k].attrs)


def _load_case(name):
    with h5py.File(FIXTURE, "r") as f:
        g = f[name]
        data = {k: np.asarray(g[k]) for k in g}
        return str(g.attrs["class"]), json.loads(g.attrs["kwargs"]), data


def build_from_keras(cls_name: str, kwargs: dict, in_shape) -> torch.nn.Module:
    """Our layer for a Keras class + kwargs, given the channels-last input shape."""
    cls = getattr(mnn, cls_name)
    kw = {k: _tup(v) for k, v in kwargs.items()}
    if "Nout" in kw:
        kw["n_out"] = kw.pop("Nout")
    if cls_name.startswith("PeriodPadding"):
        return cls(kw["size"])
    if cls_name.startswith("Reshape"):
        return cls(kw["w"])
    cin, spatial = in_shape[-1], tuple(in_shape[1:-1])
    if cls_name.startswith("LC"):
        return cls(cin, input_size=spatial, **kw)
    return cls(cin, **kw)


def keras_pads(size, d):
    """The original's padding-size normalisation: 1D s | (l, r); 2D/3D `_convert2tuple_of_tuple`."""
    if d == 1:
        return [(size, size)] if isinstance(size, int) else [tuple(size)]
    if isinstance(size, int):
        pairs = [(size, size)]
    else:
        pairs = [(v, v) if isinstance(v, int) else tuple(v) for v in size]
    return pairs + [pairs[-1]] * (d - len(pairs))


def reference_from_keras(cls_name, kwargs, x, kernel=None, bias=None):
    """The NumPy reference of one Keras layer, channels-last."""
    d = int(cls_name[-2])
    base = cls_name[:-2]
    act = kwargs.get("activation")
    bc = kwargs.get("bc_padding", "period")
    n_out = kwargs.get("Nout")
    ks = kwargs.get("kernel_size")
    ks = None if ks is None else ((ks,) * d if isinstance(ks, int) else tuple(ks))
    if base == "PeriodPadding":
        return ref.period_pad(x, keras_pads(kwargs["size"], d))
    if base == "ReshapeM":
        w = kwargs["w"]
        return ref.reshape_m(x, (w,) * d if isinstance(w, int) else w)
    if base == "ReshapeT":
        w = kwargs["w"]
        return ref.reshape_t(x, (w,) * d if isinstance(w, int) else w)
    if base == "CNNR":
        return ref.cnnr(x, kernel, bias, act or "linear")
    if base == "CNNK":
        return ref.cnnk(x, kernel, bias, bc, act)
    if base == "CNNI":
        return ref.cnni(x, kernel, bias, n_out, act or "linear")
    if base == "WaveLetC":
        return ref.wavelet(x, kernel, bias, bc, act or "linear")
    if base == "InvWaveLetC":
        return ref.inv_wavelet(x, kernel, bias, n_out, bc, act or "linear")
    if base == "LCR":
        return ref.lcr(x, kernel, bias, ks, act or "linear")
    if base == "LCK":
        return ref.lck(x, kernel, bias, ks, bc, act)
    if base == "LCI":
        return ref.lci(x, kernel, bias, n_out, act or "linear")
    raise AssertionError(f"no reference for {cls_name}")


def test_fixture_covers_every_layer_class():
    classes = {_load_case(n)[0] for n in _layer_cases()}
    expected = {f"{b}{d}D" for b in ("PeriodPadding", "ReshapeM", "ReshapeT", "CNNR", "CNNK", "CNNI",
                                     "WaveLetC", "InvWaveLetC") for d in (1, 2, 3)}
    expected |= {f"{b}{d}D" for b in ("LCR", "LCK", "LCI") for d in (1, 2)}
    assert classes == expected


@pytest.mark.parametrize("case", _layer_cases())
def test_layer_reproduces_keras_fixture(case):
    cls_name, kwargs, data = _load_case(case)
    x, expected = data["input"], data["output"]
    layer = build_from_keras(cls_name, kwargs, x.shape)
    if "kernel" in data:
        set_keras_weights(layer, data["kernel"], data.get("bias"), case)
    with torch.no_grad():
        out = to_last(layer(to_first(x, torch.float32)))
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", _layer_cases())
def test_numpy_reference_reproduces_keras_fixture(case):
    """Validates the reference itself against the real Keras outputs."""
    cls_name, kwargs, data = _load_case(case)
    x = data["input"].astype(np.float64)
    kernel = data.get("kernel")
    bias = data.get("bias")
    out = reference_from_keras(cls_name, kwargs, x,
                               None if kernel is None else kernel.astype(np.float64),
                               None if bias is None else bias.astype(np.float64))
    np.testing.assert_allclose(out, data["output"], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# 2. random sizes and configurations the fixture does not cover: ours vs the NumPy reference, float64

_rng = random.Random(20240611)


def _odd():
    return _rng.choice([1, 3, 5])


def _randomise_bias(layer, seed):
    if getattr(layer, "bias", None) is not None:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g, dtype=layer.bias.dtype))


def _random_cases():
    cases = []
    for d in (1, 2, 3):
        for rep in range(2):
            k = tuple(_rng.randint(1, 3) for _ in range(d))
            n = tuple(kk * _rng.randint(1, 3) for kk in k)
            cases.append(("CNNR", d, dict(cin=_rng.randint(1, 3), filters=_rng.randint(1, 4), kernel_size=k,
                                          activation=_rng.choice(["linear", "relu"])), n))
        for bc in ("period", "zero"):
            for rep in range(2):
                k = tuple(_odd() for _ in range(d))
                n = tuple(max(kk // 2, 1) + _rng.randint(0, 4 if d < 3 else 2) for kk in k)
                cases.append(("CNNK", d, dict(cin=_rng.randint(1, 3), filters=_rng.randint(1, 4), kernel_size=k,
                                              bc_padding=bc, activation=_rng.choice([None, "relu", "tanh"])), n))
                ke = tuple(_rng.choice([2, 4, 6]) for _ in range(d))
                ne = tuple(2 * max(kk // 2 - 1, 1) + 2 * _rng.randint(0, 2 if d < 3 else 1) for kk in ke)
                cases.append(("WaveLetC", d, dict(cin=_rng.randint(1, 3), filters=_rng.randint(1, 4),
                                                  kernel_size=ke, bc_padding=bc,
                                                  activation=_rng.choice(["linear", "relu"])), ne))
                ki = tuple(_odd() for _ in range(d))
                ni = tuple(max(kk // 2, 1) + _rng.randint(0, 2) for kk in ki)
                cin = _rng.randint(1, 3)
                if rep == 0:
                    cases.append(("InvWaveLetC", d, dict(cin=cin, filters=_rng.randint(1, 4), kernel_size=ki,
                                                         bc_padding=bc, n_out=None), ni))
                else:
                    w, nc = tuple(_rng.randint(1, 3) for _ in range(d)), _rng.randint(1, 2)
                    if d == 1:
                        f, n_out = _rng.randint(1, 4) * 2, (ni[0] * 2,)   # → f/2 channels, as BCR-Net
                    else:
                        f, n_out = math.prod(w) * nc, tuple(a * b for a, b in zip(ni, w))
                    cases.append(("InvWaveLetC", d, dict(cin=cin, filters=f, kernel_size=ki, bc_padding=bc,
                                                         n_out=n_out), ni))
        for rep in range(3):
            n = tuple(_rng.randint(1, 4) for _ in range(d))
            cin = _rng.randint(1, 3)
            if rep == 0:
                cases.append(("CNNI", d, dict(cin=cin, filters=_rng.randint(1, 5), n_out=None), n))
            elif d == 1:
                f = _rng.randint(1, 6)
                total = n[0] * f
                divisors = [v for v in range(1, total + 1) if total % v == 0]
                cases.append(("CNNI", d, dict(cin=cin, filters=f, n_out=_rng.choice(divisors)), n))
            else:
                w, nc = tuple(_rng.randint(1, 3) for _ in range(d)), _rng.randint(1, 2)
                cases.append(("CNNI", d, dict(cin=cin, filters=math.prod(w) * nc,
                                              n_out=tuple(a * b for a, b in zip(n, w))), n))
        for rep in range(2):
            pads = tuple((_rng.randint(0, 3), _rng.randint(0, 3)) for _ in range(d))
            n = tuple(max(p) + _rng.randint(0, 2) for p in pads)
            n = tuple(max(v, 1) for v in n)
            cases.append(("PeriodPadding", d, dict(size=pads), n))
    for d in (1, 2):
        for rep in range(2):
            k = tuple(_rng.randint(1, 3) for _ in range(d))
            n = tuple(kk * _rng.randint(1, 3) for kk in k)
            cases.append(("LCR", d, dict(cin=_rng.randint(1, 3), filters=_rng.randint(1, 3), kernel_size=k,
                                         activation=_rng.choice(["linear", "relu"])), n))
        for bc in ("period", "zero"):
            for rep in range(2):
                k = tuple(_odd() for _ in range(d))
                n = tuple(max(kk // 2, 1) + _rng.randint(0, 3) for kk in k)
                cases.append(("LCK", d, dict(cin=_rng.randint(1, 3), filters=_rng.randint(1, 3), kernel_size=k,
                                             bc_padding=bc, activation=_rng.choice([None, "relu"])), n))
        for rep in range(3):
            n = tuple(_rng.randint(1, 4) for _ in range(d))
            cin = _rng.randint(1, 3)
            if rep == 0:
                cases.append(("LCI", d, dict(cin=cin, filters=_rng.randint(1, 4), n_out=None), n))
            elif d == 1:
                f = _rng.randint(1, 6)
                total = n[0] * f
                n_out = _rng.choice([v for v in range(1, total + 1) if total % v == 0])
                cases.append(("LCI", d, dict(cin=cin, filters=f, n_out=n_out if rep == 1 else (n_out,)), n))
            else:
                w, nc = tuple(_rng.randint(1, 3) for _ in range(d)), _rng.randint(1, 2)
                cases.append(("LCI", d, dict(cin=cin, filters=math.prod(w) * nc,
                                             n_out=tuple(a * b for a, b in zip(n, w))), n))
    return cases


RANDOM_CASES = _random_cases()


def _case_id(case):
    base, d, kw, n = case
    return f"{base}{d}D-" + "-".join(f"{k}={v}" for k, v in kw.items()) + f"-N={n}"


def _build_random(base, d, kw, n):
    cls = getattr(mnn, f"{base}{d}D")
    kw = dict(kw)
    if base == "PeriodPadding":
        return cls(kw["size"])
    cin = kw.pop("cin")
    if base.startswith("LC"):
        return cls(cin, input_size=n, **kw)
    return cls(cin, **kw)


def _reference_random(base, d, kw, x, kernel, bias):
    act = kw.get("activation")
    if base == "PeriodPadding":
        return ref.period_pad(x, kw["size"])
    if base == "CNNR":
        return ref.cnnr(x, kernel, bias, act)
    if base == "CNNK":
        return ref.cnnk(x, kernel, bias, kw["bc_padding"], act)
    if base == "CNNI":
        return ref.cnni(x, kernel, bias, kw["n_out"])
    if base == "WaveLetC":
        return ref.wavelet(x, kernel, bias, kw["bc_padding"], act)
    if base == "InvWaveLetC":
        return ref.inv_wavelet(x, kernel, bias, kw["n_out"], kw["bc_padding"])
    if base == "LCR":
        return ref.lcr(x, kernel, bias, kw["kernel_size"], act)
    if base == "LCK":
        return ref.lck(x, kernel, bias, kw["kernel_size"], kw["bc_padding"], act)
    if base == "LCI":
        return ref.lci(x, kernel, bias, kw["n_out"])
    raise AssertionError(base)


def test_random_cases_cover_every_layer_dimension_and_padding():
    seen = {(b, d) for b, d, _, _ in RANDOM_CASES}
    assert seen == {(b, d) for b in ("CNNR", "CNNK", "CNNI", "WaveLetC", "InvWaveLetC", "PeriodPadding")
                    for d in (1, 2, 3)} | {(b, d) for b in ("LCR", "LCK", "LCI") for d in (1, 2)}
    pads = {(b, d, kw["bc_padding"]) for b, d, kw, _ in RANDOM_CASES if "bc_padding" in kw}
    assert len(pads) == 2 * (3 + 3 + 3 + 2)
    assert any(kw.get("n_out") for b, d, kw, _ in RANDOM_CASES if b == "InvWaveLetC" and d == 3)


@pytest.mark.parametrize("case", RANDOM_CASES, ids=_case_id)
def test_layer_matches_numpy_reference(case):
    base, d, kw, n = case
    seed = zlib.crc32(_case_id(case).encode())
    torch.manual_seed(seed)
    layer = _build_random(base, d, kw, n).double()
    _randomise_bias(layer, seed)
    x = np.random.default_rng(seed).standard_normal((2,) + tuple(n) + (kw.get("cin", 2),))
    with torch.no_grad():
        out = to_last(layer(to_first(x)))
    kernel, bias = ref.keras_weights(layer) if hasattr(layer, "weight") else (None, None)
    expected = _reference_random(base, d, kw, x, kernel, bias)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-10)


def test_wavelet_1d_support_is_documented_window():
    """WaveLetC1D with k = 6 (BCR-Net): out[i] depends on x[2i−2 … 2i+3] (mod N) only."""
    n = 16
    layer = mnn.WaveLetC1D(1, 1, 6, use_bias=False).double()
    with torch.no_grad():
        layer.weight.fill_(1.0)
    for i in range(n // 2):
        for j in range(n):
            x = torch.zeros(1, 1, n, dtype=torch.float64)
            x[0, 0, j] = 1.0
            inside = any((2 * i + s) % n == j for s in range(-2, 4))
            assert (layer(x)[0, 0, i].item() == 1.0) == inside


# ----------------------------------------------------------------------------------------------------------
# 3. ReshapeM/T index maps, element by element against the formulas of §1


def _coded(b, c, *n):
    """Distinct values: torch (B, C, *N) float64 arange."""
    return torch.arange(b * c * math.prod(n), dtype=torch.float64).reshape(b, c, *n)


@pytest.mark.parametrize("w,n,nc", [((3,), (4,), 2), ((2,), (5,), 3), ((1,), (3,), 4), ((4,), (2,), 1)])
def test_reshape_1d_index_maps(w, n, nc):
    (wx,), (nx,) = w, n
    x = _coded(2, wx * nc, nx)
    y = mnn.ReshapeM1D(wx)(x)
    assert y.shape == (2, nc, nx * wx)
    for b, i, p, c in itertools.product(range(2), range(nx), range(wx), range(nc)):
        assert y[b, c, i * wx + p] == x[b, p * nc + c, i]          # out[i·w+p, c] = x[i, p·nc + c]
    xf = _coded(2, nc, nx * wx)
    t = mnn.ReshapeT1D(wx)(xf)
    assert t.shape == (2, wx * nc, nx)
    for b, i, p, c in itertools.product(range(2), range(nx), range(wx), range(nc)):
        assert t[b, p * nc + c, i] == xf[b, c, i * wx + p]         # out[I, p·C + c] = x[I·w+p, c]
    # 1D: exact inverses for every channel count
    assert torch.equal(mnn.ReshapeT1D(wx)(y), x)
    assert torch.equal(mnn.ReshapeM1D(wx)(t), xf)


@pytest.mark.parametrize("w,n,nc", [((2, 3), (3, 2), 2), ((1, 2), (2, 2), 3), ((3, 1), (2, 3), 1)])
def test_reshape_2d_index_maps(w, n, nc):
    (wx, wy), (nx, ny) = w, n
    x = _coded(2, wx * wy * nc, nx, ny)
    y = mnn.ReshapeM2D(w)(x)
    assert y.shape == (2, nc, nx * wx, ny * wy)
    for b, i, j, p, q, c in itertools.product(range(2), range(nx), range(ny), range(wx), range(wy), range(nc)):
        assert y[b, c, i * wx + p, j * wy + q] == x[b, c * wx * wy + p * wy + q, i, j]
    xf = _coded(2, nc, nx * wx, ny * wy)
    t = mnn.ReshapeT2D(w)(xf)
    assert t.shape == (2, wx * wy * nc, nx, ny)
    for b, i, j, p, q, c in itertools.product(range(2), range(nx), range(ny), range(wx), range(wy), range(nc)):
        assert t[b, (p * wy + q) * nc + c, i, j] == xf[b, c, i * wx + p, j * wy + q]


@pytest.mark.parametrize("w,n,nc", [((2, 1, 2), (2, 3, 1), 2), ((1, 2, 3), (2, 1, 2), 1)])
def test_reshape_3d_index_maps(w, n, nc):
    (wx, wy, wz), (nx, ny, nz) = w, n
    big = wx * wy * wz
    x = _coded(1, big * nc, nx, ny, nz)
    y = mnn.ReshapeM3D(w)(x)
    assert y.shape == (1, nc, nx * wx, ny * wy, nz * wz)
    xf = _coded(1, nc, nx * wx, ny * wy, nz * wz)
    t = mnn.ReshapeT3D(w)(xf)
    assert t.shape == (1, big * nc, nx, ny, nz)
    for i, j, k, p, q, r, c in itertools.product(range(nx), range(ny), range(nz), range(wx), range(wy), range(wz),
                                                 range(nc)):
        beta = (p * wy + q) * wz + r
        fine = (i * wx + p, j * wy + q, k * wz + r)
        assert y[(0, c) + fine] == x[0, c * big + beta, i, j, k]
        assert t[0, beta * nc + c, i, j, k] == xf[(0, c) + fine]


@pytest.mark.parametrize("dim,w", [(2, (2, 3)), (2, (2, 2)), (3, (2, 1, 2)), (3, (2, 2, 2))])
@pytest.mark.parametrize("nc", [1, 2, 3])
def test_reshape_t_m_inverse_only_with_one_channel(dim, w, nc):
    """2D/3D: M puts the channel index outermost, T innermost → inverses iff the M side has one channel."""
    M = getattr(mnn, f"ReshapeM{dim}D")(w)
    T = getattr(mnn, f"ReshapeT{dim}D")(w)
    coarse = _coded(2, math.prod(w) * nc, *(2,) * dim)
    fine = _coded(2, nc, *(2 * wk for wk in w))
    assert T(M(coarse)).shape == coarse.shape and M(T(fine)).shape == fine.shape
    tm_identity = torch.equal(T(M(coarse)), coarse)
    mt_identity = torch.equal(M(T(fine)), fine)
    assert tm_identity == (nc == 1)
    assert mt_identity == (nc == 1)


@pytest.mark.parametrize("dim,w", [(2, (2, 3)), (3, (1, 2, 2))])
def test_reshape_matches_reference_random_batch(dim, w):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3,) + tuple(2 * wk for wk in w) + (2,))
    T = getattr(mnn, f"ReshapeT{dim}D")(w)
    M = getattr(mnn, f"ReshapeM{dim}D")(w)
    np.testing.assert_array_equal(to_last(T(to_first(x))), ref.reshape_t(x, w))
    c = rng.standard_normal((3,) + (2,) * dim + (2 * math.prod(w),))
    np.testing.assert_array_equal(to_last(M(to_first(c))), ref.reshape_m(c, w))


def test_period_padding_needs_single_wrap():
    with pytest.raises(ValueError, match="4"):
        mnn.PeriodPadding1D((4, 0))(torch.zeros(1, 1, 3))


# ----------------------------------------------------------------------------------------------------------
# 4. initialisation (eager, Glorot-uniform as Keras, zero bias) and argument validation


def _check_glorot(w: torch.Tensor, limit: float):
    w = w.detach().flatten().double()
    assert w.numel() >= 500
    top, mean, std = w.abs().max().item(), w.mean().item(), w.std().item()
    assert top <= limit * (1 + 1e-6), f"max |w| = {top:.4f} exceeds the Glorot limit {limit:.4f}"
    assert top >= 0.95 * limit, f"max |w| = {top:.4f} does not reach the Glorot limit {limit:.4f}"
    assert abs(mean) < 0.1 * limit, f"mean {mean:.4f}"
    assert std == pytest.approx(limit / math.sqrt(3), rel=0.1), f"std {std:.4f}, limit {limit:.4f}"
    counts = torch.histc(w, bins=4, min=-limit, max=limit) / w.numel()
    assert torch.all((counts - 0.25).abs() < 0.06), counts


CONV_INIT_CASES = [
    (lambda: mnn.CNNR1D(8, 16, 4), 4, 8, 16),
    (lambda: mnn.CNNK1D(12, 20, 5), 5, 12, 20),
    (lambda: mnn.CNNI1D(40, 30), 1, 40, 30),
    (lambda: mnn.CNNR2D(8, 16, (2, 3)), 6, 8, 16),
    (lambda: mnn.CNNK2D(6, 8, (3, 5)), 15, 6, 8),
    (lambda: mnn.CNNI2D(30, 40, n_out=(4, 4)), 1, 30, 40),
    (lambda: mnn.CNNR3D(4, 16, 2), 8, 4, 16),
    (lambda: mnn.CNNK3D(4, 6, 3), 27, 4, 6),
    (lambda: mnn.CNNI3D(32, 24), 1, 32, 24),
    (lambda: mnn.WaveLetC1D(10, 20, 6), 6, 10, 20),
    (lambda: mnn.WaveLetC2D(8, 8, (4, 2)), 8, 8, 8),
    (lambda: mnn.WaveLetC3D(2, 8, 4), 64, 2, 8),
    (lambda: mnn.InvWaveLetC1D(10, 20, 3), 3, 10, 20),
    (lambda: mnn.InvWaveLetC2D(8, 8, 3), 9, 8, 8),
    (lambda: mnn.InvWaveLetC3D(4, 8, 3), 27, 4, 8),
]


@pytest.mark.parametrize("case", range(len(CONV_INIT_CASES)))
def test_conv_initialisation_is_keras_glorot_with_zero_bias(case):
    make, volume, cin, cout = CONV_INIT_CASES[case]
    torch.manual_seed(case)
    layer = make()
    params = dict(layer.named_parameters())
    assert set(params) == {"weight", "bias"}
    assert not any(isinstance(p, torch.nn.parameter.UninitializedParameter) for p in params.values())
    assert params["weight"].numel() == volume * cin * cout
    _check_glorot(params["weight"], math.sqrt(6 / (volume * cin + volume * cout)))
    assert torch.count_nonzero(params["bias"]) == 0 and params["bias"].shape == (cout,)


LC_INIT_CASES = [
    # (factory, output positions, kernel volume, C_in, C_out)
    (lambda: mnn.LCR1D(4, 8, 24, 3), 8, 3, 4, 8),
    (lambda: mnn.LCK1D(4, 6, 16, 3), 16, 3, 4, 6),
    (lambda: mnn.LCI1D(8, 8, 12), 12, 1, 8, 8),
    (lambda: mnn.LCR2D(4, 8, (4, 6), 2), 6, 4, 4, 8),
    (lambda: mnn.LCK2D(3, 4, (4, 4), (3, 3)), 16, 9, 3, 4),
    (lambda: mnn.LCI2D(6, 8, (3, 4)), 12, 1, 6, 8),
]


@pytest.mark.parametrize("case", range(len(LC_INIT_CASES)))
def test_lc_parameters_eager_with_zero_bias(case):
    make, positions, volume, cin, cout = LC_INIT_CASES[case]
    layer = make()
    params = dict(layer.named_parameters())
    assert set(params) == {"weight", "bias"}
    assert params["weight"].numel() == positions * volume * cin * cout
    assert params["bias"].numel() == positions * cout
    assert torch.count_nonzero(params["bias"]) == 0


@pytest.mark.parametrize("case", range(len(LC_INIT_CASES)))
def test_lc_initialisation_uses_keras_glorot_fans(case):
    """Keras initialises the LocallyConnected kernel, shape (P, Πk·C_in, C_out), with glorot_uniform whose
    `_compute_fans` multiplies by the leading dims: fan_in = P·Πk·C_in, fan_out = P·C_out."""
    make, positions, volume, cin, cout = LC_INIT_CASES[case]
    torch.manual_seed(100 + case)
    layer = make()
    _check_glorot(layer.weight, math.sqrt(6 / (positions * volume * cin + positions * cout)))


def test_parameters_exist_before_forward_and_forward_adds_none():
    torch.manual_seed(0)
    layers = [(mnn.CNNK1D(3, 4, 3), (2, 3, 8)), (mnn.LCK2D(2, 3, (4, 5), 3), (2, 2, 4, 5)),
              (mnn.WaveLetC3D(1, 2, 2), (1, 1, 4, 4, 4)), (mnn.InvWaveLetC2D(2, 8, 3, n_out=(8, 8)), (1, 2, 4, 4))]
    for layer, shape in layers:
        before = [(n, p.data_ptr(), tuple(p.shape)) for n, p in layer.named_parameters()]
        assert before
        opt = torch.optim.SGD(layer.parameters(), lr=1.0)
        out = layer(torch.randn(*shape))
        out.square().sum().backward()
        opt.step()
        after = [(n, p.data_ptr(), tuple(p.shape)) for n, p in layer.named_parameters()]
        assert before == after


@pytest.mark.parametrize("make,layer_name,arg", [
    (lambda: mnn.CNNK1D(2, 2, 4), "CNNK1D", "kernel_size"),
    (lambda: mnn.CNNK2D(2, 2, (3, 4)), "CNNK2D", "kernel_size"),
    (lambda: mnn.CNNK3D(2, 2, (3, 3, 2)), "CNNK3D", "kernel_size"),
    (lambda: mnn.LCK1D(2, 2, 8, 2), "LCK1D", "kernel_size"),
    (lambda: mnn.LCK2D(2, 2, (6, 6), (3, 4)), "LCK2D", "kernel_size"),   # the original only checked dim 0
    (lambda: mnn.LCK2D(2, 2, (6, 6), (4, 3)), "LCK2D", "kernel_size"),
    (lambda: mnn.InvWaveLetC1D(2, 2, 4), "InvWaveLetC1D", "kernel_size"),
    (lambda: mnn.InvWaveLetC3D(2, 2, (3, 3, 2)), "InvWaveLetC3D", "kernel_size"),
    (lambda: mnn.WaveLetC1D(2, 2, 5), "WaveLetC1D", "kernel_size"),
    (lambda: mnn.WaveLetC2D(2, 2, (4, 3)), "WaveLetC2D", "kernel_size"),
    (lambda: mnn.WaveLetC3D(2, 2, (2, 2, 1)), "WaveLetC3D", "kernel_size"),
    (lambda: mnn.CNNK1D(2, 2, 3, bc_padding="reflect"), "CNNK1D", "bc_padding"),
    (lambda: mnn.LCK1D(2, 2, 8, 3, bc_padding="periodic"), "LCK1D", "bc_padding"),
    (lambda: mnn.WaveLetC2D(2, 2, 4, bc_padding="same"), "WaveLetC2D", "bc_padding"),
    (lambda: mnn.InvWaveLetC1D(2, 2, 3, bc_padding="circular"), "InvWaveLetC1D", "bc_padding"),
    (lambda: mnn.CNNK2D(2, 2, 3, activation="swish"), "CNNK2D", "activation"),
    (lambda: mnn.CNNR1D(2, 2, 2, activation="gelu"), "CNNR1D", "activation"),
    (lambda: mnn.LCI1D(2, 2, 4, activation="leaky"), "LCI1D", "activation"),
    (lambda: mnn.LCR1D(2, 2, 10, 3), "LCR1D", "input_size"),
    (lambda: mnn.LCR2D(2, 2, (6, 5), 2), "LCR2D", "input_size"),
])
def test_invalid_arguments_raise_at_construction(make, layer_name, arg):
    with pytest.raises(ValueError) as info:
        make()
    message = str(info.value)
    assert layer_name in message and arg in message, message


def test_layers_exist_only_in_documented_dimensions():
    assert not hasattr(mnn, "LCR3D") and not hasattr(mnn, "LCK3D") and not hasattr(mnn, "LCI3D")
