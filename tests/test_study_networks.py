"""The study's networks (`bcrdist.models.study_cnn`: CNN, CNNB, StudyBCNN; `bcrdist.models.nio`: NIO): parameter
counts at the study's 100 × 100 derived here from the architectures (NIO's against the authors' recorded size),
output shapes, a smaller tier, one-line size refusals naming the key, rebuilding from `config()`, gradients into
every parameter (through the Born layer for CNNB and StudyBCNN), StudyBCNN with a zero residual = the damp-1
Born image, and Born tensors outside the state dict."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from bcrdist.errors import ConfigError
from bcrdist.models.born_layers import BORN_PRECISION, BornReconstruction
from bcrdist.models.nio import NIO, NIOConfig
from bcrdist.models.registry import NetworkIO, Units
from bcrdist.models.study_cnn import CNN, CNNB, CNNBConfig, CNNConfig, StudyBCNN, StudyBCNNConfig
from bcrdist.physics.born_definition import BornDefinition
from bcrdist.physics.layout import GridInfo

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STUDY = 100
BORN_SIDE = 12                      # directions and image side of the Born-layer tests
SMALL_BORN_NET = {"channels": [6, 5], "widths": [7]}     # 12 → 5 → 1 per side


def io(n_obs: int, n_inc: int, image: int) -> NetworkIO:
    return NetworkIO(n_input=(n_obs, 2 * n_inc), n_output=(image, image), parts="complex",
                     target_kind="cartesian", periodic=False)


def count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# --- the arithmetic of the architectures -------------------------------------------------------------------

def conv(c_in: int, c_out: int, k: int = 3) -> int:
    return k * k * c_in * c_out + c_out


def linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def batchnorm(c: int) -> int:
    return 2 * c                                       # weight and bias (running statistics are buffers)


def study_cnn_params(side: int, channels, widths, n_out: int) -> int:
    """2 input channels; per block a valid 3×3 conv (side − 2) and max-pooling by 2 (floor); FCs; output."""
    total, c_in = 0, 2
    for c in channels:
        total += conv(c_in, c)
        side, c_in = (side - 2) // 2, c
    n_in = c_in * side * side
    for w in widths:
        total, n_in = total + linear(n_in, w), w
    return total + linear(n_in, n_out)


def nio_params(n_basis=50, trunk_layers=8, width=256, fno_width=64, modes=16, fno_layers=1, with_b0=True) -> int:
    branch, c_in = 0, 2
    for c in (64, 128, 128, 128, 128, 256, 256, 512):      # conv + BatchNorm2d per block; 1×1 map at the end
        branch, c_in = branch + conv(c_in, c) + batchnorm(c), c
    branch += linear(c_in, n_basis)
    trunk = linear(2, width) + (trunk_layers - 1) * (linear(width, width) + batchnorm(width)) + linear(width, n_basis)
    spectral = 2 * fno_width * fno_width * modes * modes   # two cfloat tensors: torch counts complex entries
    fno = (linear(3, fno_width) + fno_layers * (spectral + conv(fno_width, fno_width, k=1))
           + linear(fno_width, 128) + linear(128, 1))
    return branch + trunk + fno + int(with_b0)


# --- 100 × 100: counts and shapes ---------------------------------------------------------------------------

def test_parameter_counts_at_the_study_size():
    n = STUDY
    cnn = CNN(**CNN.resolve(CNNConfig(), io(n, n, n)))
    cnnb = CNNB(**CNNB.resolve(CNNBConfig(), io(n, n, n)))
    bcnn = StudyBCNN(**StudyBCNN.resolve(StudyBCNNConfig(), io(n, n, n)))
    nio = NIO(**NIO.resolve(NIOConfig(), io(n, n, n)))
    assert count(cnn) == study_cnn_params(n, [296, 211, 152, 61], [537, 465, 419], n * n) == 6_110_321
    assert count(cnnb) == study_cnn_params(n, [125, 358, 426, 221], [576], 2 * n * n) == 16_203_328
    assert count(bcnn) == study_cnn_params(n, [335, 33, 195, 65], [971], n * n) == 11_008_954
    assert count(nio) == nio_params() == 5_199_846
    assert count(nio) - nio.b0.numel() == nio_params(with_b0=False) == 5_199_845     # the authors' size.txt


def test_output_shapes_at_the_study_size():
    torch.manual_seed(0)
    n = STUDY
    x = torch.randn(2, n, 2 * n)
    with torch.no_grad():
        assert CNN(**CNN.resolve(None, io(n, n, n)))(x).shape == (2, n, n)
        nio = NIO(**NIO.resolve(None, io(n, n, n)))
        out, aux = nio(x, return_aux=True)
        assert out.shape == (2, n, n) and aux is out
        # the Born networks' trunks at full size (a 100-direction Born layer costs a large decomposition)
        assert CNNB(**CNNB.resolve(None, io(n, n, n))).trunk(x).shape == (2, 2 * n * n)
        assert StudyBCNN(**StudyBCNN.resolve(None, io(n, n, n))).trunk(x).shape == (2, n * n)


# --- smaller tiers, refusals, rebuilding --------------------------------------------------------------------

def test_smaller_tier_builds_and_runs():
    torch.manual_seed(0)
    x = torch.randn(2, 32, 64)
    small = CNNConfig(channels=[8, 8, 8], widths=[16])
    cnn = CNN(**CNN.resolve(small, io(32, 32, 32)))
    assert count(cnn) == study_cnn_params(32, [8, 8, 8], [16], 32 * 32)
    nio = NIO(**NIO.resolve(NIOConfig(), io(32, 32, 32)))
    with torch.no_grad():
        assert cnn(x).shape == (2, 32, 32)
        assert nio(x).shape == (2, 32, 32)


def one_line_error(call, key: str) -> str:
    with pytest.raises(ConfigError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{key}:"), message
    return message


@pytest.mark.parametrize("cls, section", [(CNN, CNNConfig()), (CNNB, CNNBConfig()),
                                          (StudyBCNN, StudyBCNNConfig())])
def test_cnn_size_refusals(cls, section):
    key = f"model.{cls.config_section}.channels"
    message = one_line_error(lambda: cls.resolve(section, io(32, 32, 32)), key)
    assert "32×32" in message and "at most 3 layers" in message
    one_line_error(lambda: cls.resolve(section, io(4, 4, 4)), key)
    resolved = cls.resolve(dataclasses.replace(section, channels=[4, 4, 4]), io(32, 32, 32))
    assert isinstance(resolved["channels"], list) and json.loads(json.dumps(resolved)) == resolved


def test_nio_size_refusals():
    message = one_line_error(lambda: NIO.resolve(NIOConfig(), io(200, 200, 100)), "model.nio")
    assert "200×200" in message and "1×1" in message
    message = one_line_error(lambda: NIO.resolve(NIOConfig(), io(12, 12, 12)), "model.nio.fno_modes")
    assert "give at most 7" in message                # 12 pads to 15: 2·7 ≤ 15, 7 ≤ 15 // 2 + 1
    assert NIO.resolve(NIOConfig(fno_modes=7), io(12, 12, 12))["fno_modes"] == 7


def test_config_ranges():
    for bad in (CNNConfig(dropout=1.0), CNNConfig(channels=[]), CNNBConfig(damp=0.0), NIOConfig(fno_modes=0)):
        with pytest.raises(ConfigError):
            bad.validate()


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype for k in sa)


@pytest.mark.parametrize("cls, kwargs", [(CNN, {"channels": [4, 5, 6], "widths": [9, 8], "dropout": 0.1}),
                                         (NIO, {"trunk_layers": 3, "width": 16, "n_basis": 5, "fno_width": 8,
                                                "fno_modes": 4, "fno_layers": 2})])
def test_rebuild_from_config(cls, kwargs):
    net = cls(n_input=[32, 64], n_output=[32, 32], **kwargs)
    rebuilt = cls(**json.loads(json.dumps(net.config())))
    assert rebuilt.config() == net.config() and same_state(net, rebuilt)


# --- gradients ----------------------------------------------------------------------------------------------

def assert_gradients_everywhere(net: torch.nn.Module) -> None:
    missing = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_cnn_and_nio_gradients_reach_every_parameter():
    torch.manual_seed(0)
    x = torch.randn(2, 32, 64)
    for net in (CNN([32, 64], [32, 32], channels=[4, 4, 4], widths=[8]),
                NIO([32, 64], [32, 32], trunk_layers=3, width=16, n_basis=5, fno_width=8, fno_modes=4, fno_layers=2)):
        net(x).sum().backward()
        assert_gradients_everywhere(net)


# --- the Born networks --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def definition() -> BornDefinition:
    grid = GridInfo(k=16.0, angles="endpoint", n_obs=BORN_SIDE, n_inc=BORN_SIDE, target="cartesian",
                    image_size=BORN_SIDE, image_extent=2.0, image_points="nodes", farfield_sign=1)
    return BornDefinition(grid=grid, method="lsqr", parameter=1.0)


def units() -> Units:
    g = torch.Generator().manual_seed(3)
    width = 2 * BORN_SIDE
    return Units(in_shift=0.1 * torch.randn(width, generator=g), in_scale=1 + torch.rand(width, generator=g),
                 gain=torch.tensor(0.7), bias=torch.tensor(0.05), out_scale=torch.tensor(2.0))


def born_net(cls, definition: BornDefinition):
    net = cls(n_input=[BORN_SIDE, 2 * BORN_SIDE], n_output=[BORN_SIDE, BORN_SIDE], **SMALL_BORN_NET)
    net.set_born(definition, {"damp": definition.parameter})
    return net


def test_born_requests():
    assert CNNB.born_request(None, CNNB.resolve(None, io(STUDY, STUDY, STUDY))) == {
        "method": "lsqr", "damp": 0.1, "keys": {"damp": "model.cnnb.damp"}}
    assert StudyBCNN.born_request(None, StudyBCNN.resolve(None, io(STUDY, STUDY, STUDY))) == {
        "method": "lsqr", "damp": 1.0, "keys": {"damp": "model.study_bcnn.damp"}}
    assert CNN.uses_units is False and NIO.uses_units is False and CNNB.uses_units and StudyBCNN.uses_units


@pytest.mark.parametrize("cls", [CNNB, StudyBCNN])
def test_born_networks_gradients_state_and_rebuild(cls, definition):
    torch.manual_seed(0)
    net = born_net(cls, definition)
    assert net.fit_record() == {"damp": 1.0}
    assert not [k for k in net.state_dict() if k.startswith("born.")]
    x = torch.randn(2, BORN_SIDE, 2 * BORN_SIDE)
    out, aux = net(x, return_aux=True, units=units())
    assert out.shape == (2, BORN_SIDE, BORN_SIDE) and aux is out
    out.sum().backward()
    assert_gradients_everywhere(net)
    config = json.loads(json.dumps(net.config()))
    assert config["born"] == definition.to_record()
    rebuilt = cls(**config)
    assert same_state(net, rebuilt) and rebuilt.config() == net.config()
    rebuilt.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(x, units=units()), net(x, units=units()))


def born_image(definition: BornDefinition, parts: torch.Tensor) -> torch.Tensor:
    layer = BornReconstruction(n_input=(BORN_SIDE, 2 * BORN_SIDE), n_output=(BORN_SIDE, BORN_SIDE),
                               precision=BORN_PRECISION)
    layer.set_definition(definition)
    return layer(parts)


def test_study_bcnn_with_zero_residual_is_the_born_image(definition):
    torch.manual_seed(1)
    net = born_net(StudyBCNN, definition)
    torch.nn.init.zeros_(net.trunk.output.weight)
    torch.nn.init.zeros_(net.trunk.output.bias)
    x, u = torch.randn(2, BORN_SIDE, 2 * BORN_SIDE), units()
    with torch.no_grad():
        assert torch.equal(net(x, units=u), u.from_eta(born_image(definition, u.raw_input(x))))


def test_cnnb_images_its_corrected_far_field(definition):
    torch.manual_seed(2)
    net = born_net(CNNB, definition)
    x, u = torch.randn(2, BORN_SIDE, 2 * BORN_SIDE), units()
    with torch.no_grad():
        corrected = net.trunk(x).reshape(x.shape)                 # [Re | Im] in the normalised layout
        assert torch.equal(net(x, units=u), u.from_eta(born_image(definition, u.raw_input(corrected))))
