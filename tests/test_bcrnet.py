"""BCR-Net (`bcrdist.models.bcrnet.BCRNet`): parameter formula, gradients, dtypes, shift equivariance,
torch.compile, size validation, and an independent NumPy forward of the §5.6 recipe."""

from __future__ import annotations

import copy
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import numpy_reference as ref
from bcrdist.models.bcrnet import BCRNet

KERAS = Path(__file__).resolve().parent / "fixtures" / "keras"


def formula(ns, nd, nr, alpha, levels, n_cnn, n_cnn3, w_comp=1):
    """§5.6: P = (Nd+1)α + 24Lα² + n_cnn(mα² + α) + L·n_cnn(20α² + 2α) + (α+1)Nr + 40 + 148(n_cnn3−2) + 37
    for w_comp = 1; the two w_comp layers generalise to (Nd·w+1)α and (α·w+1)Nr."""
    m0 = ns // 2 ** levels
    m = 2 * ((m0 + 1) // 2) - 1
    a = alpha
    return ((nd * w_comp + 1) * a + 24 * levels * a * a + n_cnn * (m * a * a + a)
            + levels * n_cnn * (20 * a * a + 2 * a) + (a * w_comp + 1) * nr + 40 + 148 * (n_cnn3 - 2) + 37)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------------
# parameter count


@pytest.mark.parametrize("kwargs,logged", [
    (dict(n_input=(160, 80), n_output=(160, 80), alpha=40), 1_209_681),            # Fan YHN2 notebook
    (dict(n_input=(128, 128), n_output=(128, 128), alpha=40), 1_194_369),
    (dict(n_input=(128, 128), n_output=(128, 128), alpha=2), 4_247),
    (dict(n_input=(128, 128), n_output=(128, 128), alpha=5), 20_714),
    (dict(n_input=(128, 128), n_output=(128, 128), alpha=1), 1_710),
    (dict(n_input=(100, 100), n_output=(100, 100), alpha=40, levels=2), 710_661),
    (dict(n_input=(100, 100), n_output=(100, 100), alpha=80, levels=2), 2_822_301),
])
def test_parameter_count_equals_logged_keras_counts(kwargs, logged):
    assert n_params(BCRNet(n_cnn=6, n_cnn3=5, **kwargs)) == logged


@pytest.mark.parametrize("ns,nd,nr,alpha,levels,n_cnn,n_cnn3,w_comp", [
    (64, 32, 24, 4, 4, 3, 4, 1),
    (64, 32, 24, 4, 4, 3, 4, 3),
    (32, 16, 8, 3, None, 2, 2, 1),
    (32, 12, 10, 5, 2, 1, 3, 1),
    (48, 10, 7, 6, 3, 2, 6, 1),
    (96, 20, 30, 7, None, 4, 2, 5),
    (40, 8, 9, 2, 1, 3, 5, 3),
])
def test_parameter_count_matches_formula(ns, nd, nr, alpha, levels, n_cnn, n_cnn3, w_comp):
    model = BCRNet((ns, nd), (ns, nr), alpha=alpha, n_cnn=n_cnn, n_cnn3=n_cnn3, w_comp=w_comp, levels=levels)
    L = int(np.floor(np.log2(ns))) - 2 if levels is None else levels
    assert n_params(model) == formula(ns, nd, nr, alpha, L, n_cnn, n_cnn3, w_comp)


# ----------------------------------------------------------------------------------------------------------
# behaviour of the network


def small(w_comp=1, seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(n_input=(32, 16), n_output=(32, 8), alpha=3, n_cnn=2, n_cnn3=3, w_comp=w_comp)
    args.update(kw)
    return BCRNet(**args)


def test_forward_shapes_and_aux():
    model = small()
    x = torch.randn(4, 32, 16)
    out = model(x)
    out2, aux = model(x, return_aux=True)
    assert out.shape == aux.shape == (4, 32, 8)
    assert torch.equal(out, out2)
    assert not torch.allclose(out, aux)


def test_every_parameter_gets_a_nonzero_gradient():
    model = small(seed=1).double()
    x = torch.randn(4, 32, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    probe = torch.randn(4, 32, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    (model(x) * probe).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} gets no gradient"
        assert torch.count_nonzero(p.grad) > 0, f"{name} gets a zero gradient"


def test_all_parameters_exist_at_construction_glorot_zero_bias():
    model = small(seed=4)
    params = dict(model.named_parameters())
    assert n_params(model) == formula(32, 16, 8, 3, 3, 2, 3)
    for name, p in params.items():
        assert not isinstance(p, torch.nn.parameter.UninitializedParameter)
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    model(torch.randn(2, 32, 16)).sum().backward()
    assert {id(p) for p in model.parameters()} == held


def test_float64_works_and_agrees_with_float32():
    model32 = small(seed=5)
    with torch.no_grad():
        for name, p in model32.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    model64 = copy.deepcopy(model32).double()
    assert all(p.dtype == torch.float64 for p in model64.parameters())
    x = torch.randn(3, 32, 16)
    out64, aux64 = model64(x.double(), return_aux=True)
    assert out64.dtype == aux64.dtype == torch.float64
    out32 = model32(x)
    torch.testing.assert_close(out64.float(), out32, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("w_comp", [1, 3])
def test_rolling_rows_by_multiples_of_2_to_the_L_rolls_the_output(w_comp):
    model = small(w_comp=w_comp, seed=6).double()
    L = model.levels
    assert L == 3
    x = torch.randn(2, 32, 16, dtype=torch.float64)
    out, aux = model(x, return_aux=True)
    for shift in (2 ** L, 2 * 2 ** L, -(2 ** L)):
        out_s, aux_s = model(torch.roll(x, shift, dims=1), return_aux=True)
        torch.testing.assert_close(out_s, torch.roll(out, shift, dims=1), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(aux_s, torch.roll(aux, shift, dims=1), rtol=1e-10, atol=1e-10)


def test_torch_compile_matches_eager():
    """Output and gradients (the custom period-pad backward included) of the compiled network."""
    torch._dynamo.reset()
    model = BCRNet((16, 8), (16, 6), alpha=2, n_cnn=1, n_cnn3=2)
    x = torch.randn(2, 16, 8)
    params = list(model.parameters())
    try:
        compiled = torch.compile(model)(x)
        compiled_grads = torch.autograd.grad(compiled.square().sum(), params)
    finally:
        torch._dynamo.reset()
    eager = model(x)
    eager_grads = torch.autograd.grad(eager.square().sum(), params)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    for c, e in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs,numbers", [
    (dict(n_input=(32, 16), n_output=(64, 8)), ("32", "64")),               # Ns ≠ Nt
    (dict(n_input=(48, 16), n_output=(48, 8), levels=5), ("48", "32")),      # 48 not divisible by 2^5
    (dict(n_input=(32, 16), n_output=(32, 8), levels=6), ("32", "64")),      # levels too big
    (dict(n_input=(100, 100), n_output=(100, 100)), ("100", "16")),          # default L = 4 for Ns = 100
    (dict(n_input=(32, 16), n_output=(32, 8), levels=0), ("0",)),
])
def test_sizes_it_cannot_take_raise_with_the_numbers(kwargs, numbers):
    with pytest.raises(ValueError) as info:
        BCRNet(alpha=2, n_cnn=1, n_cnn3=2, **kwargs)
    for n in numbers:
        assert n in str(info.value), str(info.value)


def test_wrong_input_shape_refused():
    with pytest.raises(ValueError, match="16"):
        small()(torch.zeros(2, 32, 15))


def test_output_is_aux_plus_2d_refinement():
    """With the last refinement convolution zeroed the residual vanishes: output == auxiliary head."""
    model = small(seed=7)
    with torch.no_grad():
        model.refine[-1].weight.zero_()
        model.refine[-1].bias.zero_()
        out, aux = model(torch.randn(2, 32, 16), return_aux=True)
    assert torch.equal(out, aux)


# ----------------------------------------------------------------------------------------------------------
# independent NumPy forward of the §5.6 recipe (Keras-layout weights)


def test_numpy_reference_reproduces_keras_bcrnet_fixture():
    """Validates the reference (and its creation-order reading of the file) against the real Keras model."""
    with h5py.File(KERAS / "bcr_wcomp3_io.h5", "r") as f:
        x, out, aux = (np.asarray(f[k], dtype=np.float64) for k in ("input", "output", "aux"))
        alpha, n_cnn, n_cnn3 = (int(f.attrs[k]) for k in ("alpha", "n_cnn", "n_cnn3"))
    by_class = {k: [[a.astype(np.float64) for a in arrays] for arrays in v]
                for k, v in ref.read_keras_h5(KERAS / "bcr_wcomp3_keras_weights.h5").items()}
    weights = ref.bcrnet_weights_from_keras(by_class, levels=4, n_cnn=n_cnn, n_cnn3=n_cnn3)
    ref_out, ref_aux = ref.bcrnet(x, weights, alpha, levels=4)
    np.testing.assert_allclose(ref_aux, aux, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ref_out, out, rtol=1e-5, atol=1e-5)


def reference_weights(model):
    by_class = {}
    for cls, module in model.keras_layers():
        kernel, bias = ref.keras_weights(module)
        by_class.setdefault(cls, []).append([kernel] + ([] if bias is None else [bias]))
    return ref.bcrnet_weights_from_keras(by_class, levels=model.levels, n_cnn=model.n_cnn, n_cnn3=model.n_cnn3)


@pytest.mark.parametrize("bc_padding", ["period", "zero"])
@pytest.mark.parametrize("w_comp", [1, 3])
def test_matches_numpy_reference(w_comp, bc_padding):
    model = small(w_comp=w_comp, seed=8 + w_comp, bc_padding=bc_padding).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.2)
    weights = reference_weights(model)
    x = np.random.default_rng(w_comp).standard_normal((3, 32, 16))
    expected_out, expected_aux = ref.bcrnet(x, weights, alpha=3, levels=3, bc_padding=bc_padding)
    with torch.no_grad():
        out, aux = model(torch.from_numpy(x), return_aux=True)
    np.testing.assert_allclose(aux.numpy(), expected_aux, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out.numpy(), expected_out, rtol=1e-10, atol=1e-10)


def test_zero_padded_refinement_differs_from_periodic_only_near_the_angle_ends():
    """Same weights, other boundary: with n_cnn3 = 4 layers the zero rows reach 4 rows into each end (so the
    reference comparison above can tell the two apart) and leave the rows between exactly as the periodic."""
    zero = small(bc_padding="zero", n_cnn3=4, seed=3).double()
    period = small(bc_padding="period", n_cnn3=4).double()
    with torch.no_grad():
        for conv in zero.refine:
            conv.bias.normal_(0, 0.2)
        period.load_state_dict(zero.state_dict())
        img = torch.randn(2, 32, 8, dtype=torch.float64)
        rz, rp = zero.refine_2d(img), period.refine_2d(img)
    for end in (slice(0, 4), slice(-4, None)):
        assert not torch.allclose(rz[:, end], rp[:, end])
    torch.testing.assert_close(rz[:, 4:-4], rp[:, 4:-4], rtol=1e-12, atol=1e-12)


def test_bc_padding_is_validated_and_kept_in_the_config():
    with pytest.raises(ValueError, match="BCRNet: bc_padding must be 'period' or 'zero', got 'reflect'"):
        small(bc_padding="reflect")
    assert "bc_padding" not in small().config()                # periodic configs read as before
    cfg = small(bc_padding="zero").config()
    assert cfg["bc_padding"] == "zero" and BCRNet(**cfg).bc_padding == "zero"
    assert all(m.bc_padding == "zero" for m in BCRNet(**cfg).modules() if hasattr(m, "pads"))
