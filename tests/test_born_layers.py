"""The Born torch layer (`bcrdist.models.born_layers.BornReconstruction`): equal to the NumPy estimator of its
definition (`make_inversion(definition).predict`) on both signs, node and centre grids, periodic and endpoint
angles, both methods and polar targets; float32 under bf16 autocast; gradients (gradcheck, and against the
dense matrix); stored by its definition (no state-dict entries, rebuilt from `spec()`); devices and dtypes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bcrdist.errors import ConfigError
from bcrdist.models import born_layers
from bcrdist.models.born_layers import BornReconstruction
from bcrdist.physics.born_definition import BornDefinition, make_inversion
from bcrdist.physics.layout import GridInfo


def cartesian(points="nodes", angles="endpoint", sign=1, index="xy", size=12, na=10, **extra):
    return GridInfo(k=16.0, angles=angles, n_obs=na, n_inc=na, target="cartesian", image_size=size,
                    image_extent=2.0, image_points=points, image_index=index, farfield_sign=sign, **extra)


POLAR = GridInfo(k=4 * np.pi, angles="periodic", n_obs=12, n_inc=12, target="polar", polar_nt=12, polar_nr=5,
                 polar_radius=0.5)


def far_fields(grid, count=3, seed=0):
    rng = np.random.default_rng(seed)
    shape = (count, grid.n_obs, grid.n_inc)
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


def parts_of(F, dtype=torch.float32) -> torch.Tensor:
    """The network input layout: (B, n_obs, 2·n_inc) = [Re F | Im F]."""
    return torch.from_numpy(np.concatenate([F.real, F.imag], axis=-1)).to(dtype)


def layer_for(definition, precision="float32") -> BornReconstruction:
    grid = definition.grid
    layer = BornReconstruction((grid.n_obs, 2 * grid.n_inc), grid.target_shape(), precision=precision)
    layer.set_definition(definition)
    return layer


def relative_tikhonov(grid, relative, norm="area"):
    """The tikhonov definition at λ = relative·σ_max²."""
    sigma = make_inversion(BornDefinition(grid, "tikhonov", 0.0, norm)).inversion.sigma_max
    return BornDefinition(grid, "tikhonov", relative * sigma ** 2, norm)


GRIDS = {
    "nodes-endpoint-conj": cartesian(),
    "centres-periodic-yx": cartesian("centres", "periodic", -1, "yx", size=11, na=12),
    "nodes-periodic-conj": cartesian("nodes", "periodic", 1, na=9),
    "centres-endpoint": cartesian("centres", "endpoint", -1, size=10),
}


def _definitions():
    for name, grid in GRIDS.items():
        yield pytest.param(lambda g=grid: BornDefinition(g, "lsqr", 1.0), id=f"{name}-lsqr1")
        yield pytest.param(lambda g=grid: relative_tikhonov(g, 1e-2), id=f"{name}-tikhonov-area")
        yield pytest.param(lambda g=grid: relative_tikhonov(g, 1e-2, "euclidean"), id=f"{name}-tikhonov-euclidean")
    yield pytest.param(lambda: relative_tikhonov(POLAR, 1e-3), id="polar-tikhonov")
    yield pytest.param(lambda: BornDefinition(POLAR.with_sign(1), "tikhonov", 1e-4, "euclidean", "measure"),
                       id="polar-measure-conj")


@pytest.mark.parametrize("make", list(_definitions()))
def test_layer_equals_the_estimator_in_float32(make):
    definition = make()
    F = far_fields(definition.grid)
    want = make_inversion(definition).predict(F)
    layer = layer_for(definition)
    got = layer(parts_of(F))
    assert got.dtype == torch.float32 and tuple(got.shape) == want.shape
    assert np.abs(got.numpy() - want).max() <= 1e-5 * np.abs(want).max()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = layer(parts_of(F))
    assert mixed.dtype == torch.float32 and torch.equal(mixed, got)


@pytest.mark.parametrize("grid", list(GRIDS.values()), ids=list(GRIDS))
def test_small_damping_in_float64(grid):
    # d = 0.1 (CNNB's) puts λ at ~1e-4·σ_max²: the normal equations in float32 lose ~σ_max²/λ·1e-7 (about 1e-4
    # here); precision float64 keeps the estimator's digits
    definition = BornDefinition(grid, "lsqr", 0.1)
    F = far_fields(grid, seed=1)
    want = make_inversion(definition).predict(F)
    got64 = layer_for(definition, "float64")(parts_of(F, torch.float64))
    assert got64.dtype == torch.float64
    assert np.abs(got64.numpy() - want).max() <= 1e-10 * np.abs(want).max()
    got32 = layer_for(definition)(parts_of(F))
    assert np.abs(got32.numpy() - want).max() <= 2e-3 * np.abs(want).max()


@pytest.mark.parametrize("make", [lambda: BornDefinition(cartesian(size=5, na=6), "lsqr", 0.5),
                                  lambda: relative_tikhonov(POLAR, 1e-3)], ids=["cartesian-lsqr", "polar"])
def test_gradients(make):
    definition = make()
    layer = layer_for(definition, "float64")
    x = parts_of(far_fields(definition.grid, count=2), torch.float64).requires_grad_(True)
    if definition.grid.cartesian:
        assert torch.autograd.gradcheck(layer, (x,), eps=1e-6, atol=1e-7)
    # ∂⟨g, η⟩/∂parts = Mᵀg with M the dense matrix of the estimator, columns [Re F.ravel(), Im F.ravel()]
    M = make_inversion(definition).reconstruction_matrix(chunk=64)
    n_obs, n_inc = definition.grid.n_obs, definition.grid.n_inc
    g = torch.randn((len(x), *definition.grid.target_shape()), generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)
    want = (g.reshape(len(g), -1).numpy() @ M).reshape(len(g), 2, n_obs, n_inc)
    want = np.concatenate([want[:, 0], want[:, 1]], axis=-1)                 # back to [Re | Im] per observation
    for precision, tol in (("float64", 1e-10), ("float32", 1e-4)):
        xp = x.detach().to(torch.float64 if precision == "float64" else torch.float32).requires_grad_(True)
        (layer_for(definition, precision)(xp) * g.to(xp.dtype)).sum().backward()
        assert np.abs(xp.grad.double().numpy() - want).max() <= tol * np.abs(want).max(), precision


def test_stored_by_its_definition():
    definition = BornDefinition(cartesian(), "lsqr", 0.1)
    layer = layer_for(definition)
    assert layer.state_dict() == {} and len(list(layer.buffers())) > 0
    host = torch.nn.Sequential(torch.nn.Linear(2, 2), layer)                   # a network holding the layer
    assert set(host.state_dict()) == {"0.weight", "0.bias"}
    record = json.loads(json.dumps(layer.spec()))
    rebuilt = BornReconstruction(layer.n_input, layer.n_output)
    rebuilt.set_definition(BornDefinition.from_record(record))
    assert rebuilt.definition == definition
    F = parts_of(far_fields(definition.grid))
    assert torch.equal(rebuilt(F), layer(F))
    rebuilt.set_definition(None)
    assert rebuilt.spec() is None and [name for name, _ in rebuilt.named_buffers()] == ["anchor"]
    with pytest.raises(RuntimeError, match="no definition set"):
        rebuilt(F)


def test_devices_and_dtypes():
    definition = BornDefinition(cartesian(size=6, na=6), "lsqr", 1.0)
    layer = layer_for(definition)
    # a model made half or double keeps the layer's precision
    layer.half()
    assert {b.dtype for b in layer.buffers()} == {torch.float32}
    layer.double()
    assert {b.dtype for b in layer.buffers()} == {torch.float32}
    # .to(device) moves every buffer, and a definition set afterwards lands there (meta: shapes only)
    layer.to("meta")
    assert {b.device.type for b in layer.buffers()} == {"meta"}
    layer.set_definition(BornDefinition(definition.grid, "lsqr", 0.5))
    assert {b.device.type for b in layer.buffers()} == {"meta"}
    out = layer(torch.zeros(2, 6, 12, device="meta"))
    assert out.device.type == "meta" and tuple(out.shape) == (2, 6, 6)


def test_buffers_are_factored_not_dense():
    grid = cartesian(size=20, na=16)
    layer = layer_for(BornDefinition(grid, "lsqr", 1.0))
    shapes = {name: tuple(b.shape) for name, b in layer.named_buffers()}
    P = 20 * 20
    assert shapes["inc_factor"] == (32, 2 * P) and shapes["obs_factor"] == (16, 2 * P)
    assert sorted(v for k, v in shapes.items() if k.startswith("block_")) == [(100, 100)] * 4
    floats = sum(b.numel() for b in layer.buffers())
    assert floats < 0.5 * P * 2 * 16 * 16                                     # the dense matrix's size


def test_shape_mismatch_and_bad_input():
    layer = BornReconstruction((10, 20), (12, 12))
    definition = BornDefinition(cartesian(), "lsqr", 1.0)
    layer.set_definition(definition)
    with pytest.raises(ConfigError, match="born layer: the definition's grid reads far fields"):
        layer.set_definition(BornDefinition(cartesian(size=11), "lsqr", 1.0))
    assert layer.definition == definition                                    # unchanged
    with pytest.raises(ValueError, match=r"expected parts \(B, 10, 20\)"):
        layer(torch.zeros(2, 10, 10))
    with pytest.raises(ValueError, match="even last axis"):
        BornReconstruction((10, 21), (12, 12))
    with pytest.raises(ValueError, match="precision must be one of"):
        BornReconstruction((10, 20), (12, 12), precision="bfloat16")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_right_hand_side_in_pieces_equals_the_whole_product_bit_for_bit(monkeypatch, dtype):
    """The forward makes T = x @ inc_factor a cache-sized piece at a time; every entry must be the whole
    product's, bit for bit (trained networks and their results depend on the layer's exact output), at the
    study's n_obs = n_inc = 100; and the gradient must be autograd's derivative of the whole product, sample
    chunk by sample chunk, as the layer computed it before."""
    layer = layer_for(BornDefinition(cartesian(size=20, na=100), "lsqr", 0.1), "float64")
    inc, obs = layer.inc_factor.to(dtype), layer.obs_factor.to(dtype)      # 2P = 800: 4 column pieces, one partial
    monkeypatch.setattr(born_layers, "FORWARD_FLOATS", 2 * 100 * born_layers.PIXEL_COLUMNS)  # 2 samples a piece
    monkeypatch.setattr(born_layers, "TRANSIENT_FLOATS", 3 * obs.numel())      # the backward: 3 samples a chunk
    x = parts_of(far_fields(layer.definition.grid, count=5, seed=3), dtype).requires_grad_(True)
    got = born_layers._RightHandSide.apply(x, inc, obs)
    xr = x.detach().clone().requires_grad_(True)
    want = torch.cat([((part @ inc) * obs).sum(1) for part in xr.split(3)])
    assert torch.equal(got, want)
    g = torch.randn(got.shape, generator=torch.Generator().manual_seed(4), dtype=dtype)
    (got * g).sum().backward()
    (want * g).sum().backward()
    assert torch.equal(x.grad, xr.grad)


def test_bench_born_tool_at_a_tiny_size():
    """tools/bench_born.py: both forms timed and compared; only the output's form is checked, never a time."""
    tool = Path(__file__).resolve().parents[1] / "tools" / "bench_born.py"
    run = subprocess.run([sys.executable, str(tool), "--size", "16", "--batch", "3", "--rounds", "1",
                          "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    for kind in ("forward ", "forward + backward "):
        row = next(line for line in run.stdout.splitlines() if line.startswith(kind))
        assert row.rstrip().endswith("%") and "×" in row
    assert "bit for bit: forward equal, gradient equal" in run.stdout
