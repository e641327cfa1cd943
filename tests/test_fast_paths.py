"""The optimised paths of issue 14 against the formulation they replace (tests/torch_reference.py).

BCR-Net's forward (output and auxiliary head) and every gradient (input and parameters) equal the reference
to 1e-5 of each tensor's largest entry in float32 and to 1e-12 in float64, for sizes that cover odd channel
and grid sizes, a single refinement layer, and more refinement layers than angles (the padding then wraps
several times). The optimizers equal torch's per-parameter loops step by step.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

import torch_reference as ref
from bcrdist.mnn.padding import period_pad
from bcrdist.models.bcrnet import BCRNet, channels_last_kernel
from bcrdist.train.optim import make_optimizer

# (n_input, n_output, alpha, n_cnn, n_cnn3, w_comp, levels, batch)
SIZES = [
    ((64, 32), (64, 24), 4, 2, 5, 1, None, 4),
    ((32, 9), (32, 7), 3, 2, 3, 1, None, 3),      # odd Nd, Nr, α (2α = 6 channels in the chains)
    ((48, 10), (48, 13), 5, 1, 2, 3, 3, 2),       # w_comp = 3, one ReLU layer in the refinement
    ((16, 8), (16, 6), 2, 1, 1, 1, 1, 5),         # n_cnn3 = 1: the refinement is one linear 1 → 1 conv
    ((16, 8), (16, 5), 2, 1, 19, 1, 2, 2),        # n_cnn3 = 19 > Nt = 16: the angle padding wraps twice
    ((128, 128), (128, 128), 40, 6, 5, 1, None, 2),  # the benchmark's network
]


def _net(n_input, n_output, alpha, n_cnn, n_cnn3, w_comp, levels, dtype, seed=0):
    torch.manual_seed(seed)
    net = BCRNet(n_input, n_output, alpha=alpha, n_cnn=n_cnn, n_cnn3=n_cnn3, w_comp=w_comp, levels=levels)
    with torch.no_grad():  # nonzero biases, so that their gradients and the bias paths are compared too
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return net.to(dtype)


def _outputs_and_grads(forward, net, x, probe_out, probe_aux):
    x = x.clone().requires_grad_()
    out, aux = forward(net, x)
    params = [p for _, p in net.named_parameters()]
    grads = torch.autograd.grad((out * probe_out).sum() + (aux * probe_aux).sum(), [x, *params])
    names = ["input"] + [n for n, _ in net.named_parameters()]
    return {"output": out.detach(), "aux": aux.detach(), **{f"grad {n}": g for n, g in zip(names, grads)}}


def _assert_equal_to_scale(new: dict, old: dict, rel: float):
    assert new.keys() == old.keys()
    for key in old:
        scale = float(old[key].abs().max())
        err = float((new[key] - old[key]).abs().max())
        assert err <= rel * scale, f"{key}: max |new − reference| = {err:.3g} > {rel:g} × {scale:.3g}"


@pytest.mark.parametrize("dtype,rel", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}to{s[1]}-a{s[2]}-cnn3_{s[4]}")
def test_bcrnet_forward_and_gradients_equal_the_reference(size, dtype, rel):
    *args, batch = size
    net = _net(*args, dtype=dtype)
    gen = torch.Generator().manual_seed(1)
    (ns, nd), (nt, nr) = args[0], args[1]
    x = torch.randn(batch, ns, nd, generator=gen, dtype=dtype)
    probe_out = torch.randn(batch, nt, nr, generator=gen, dtype=dtype)
    probe_aux = torch.randn(batch, nt, nr, generator=gen, dtype=dtype)
    new = _outputs_and_grads(lambda m, v: m(v, return_aux=True), net, x, probe_out, probe_aux)
    old = _outputs_and_grads(lambda m, v: ref.bcrnet_forward(m, v, return_aux=True), net, x, probe_out,
                             probe_aux)
    _assert_equal_to_scale(new, old, rel)


def test_refinement_alone_equals_the_reference_with_a_noncontiguous_image():
    """`refine_2d` gets the auxiliary head as a transposed view; a contiguous copy gives the same."""
    net = _net((32, 8), (32, 11), 3, 1, 4, 1, None, dtype=torch.float32)
    img = torch.randn(3, 11, 32).transpose(1, 2)
    y = img.unsqueeze(1)
    for i, conv in enumerate(net.refine):
        y = torch.nn.functional.conv2d(ref.zero_pad(ref.period_pad(y, ((1, 1), (0, 0))), ((0, 0), (1, 1))),
                                       conv.weight, conv.bias)
        y = torch.relu(y) if i < len(net.refine) - 1 else y
    for image in (img, img.contiguous()):
        torch.testing.assert_close(net.refine_2d(image), y[:, 0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("c_in", [1, 3, 4])
def test_channels_last_kernel_has_channels_last_strides_and_the_same_values(c_in):
    w = torch.randn(5, c_in, 3, 3, requires_grad=True)
    k = channels_last_kernel(w)
    assert k.shape == w.shape and torch.equal(k, w)
    assert k.stride() == (9 * c_in, 1, 3 * c_in, c_in)
    probe = torch.randn_like(w)
    (grad,) = torch.autograd.grad((k * probe).sum(), w)
    assert torch.equal(grad, probe)


def _trajectory(optimizer_of, steps=6):
    """Parameters of a small BCR-Net after `steps` optimizer steps on fixed pseudo-random gradients."""
    net = _net((32, 16), (32, 8), 3, 2, 3, 1, None, dtype=torch.float32, seed=2)
    opt = optimizer_of(net.parameters())
    gen = torch.Generator().manual_seed(3)
    for _ in range(steps):
        for p in net.parameters():
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return [p.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize("name", ["nadam", "adamw"])
def test_optimizer_equals_the_per_parameter_loop(name):
    cfg = SimpleNamespace(optim=SimpleNamespace(name=name, weight_decay=0.01))
    fast = _trajectory(lambda ps: make_optimizer(cfg, ps, 1e-3))
    if name == "nadam":
        slow = _trajectory(lambda ps: ref.reference_optimizer(ps, 1e-3))
    else:
        slow = _trajectory(lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=cfg.optim.weight_decay,
                                                        foreach=False))
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_optimizer_uses_the_multi_tensor_or_fused_update():
    params = list(BCRNet((16, 8), (16, 6), alpha=2, n_cnn=1, n_cnn3=2).parameters())
    cfg = SimpleNamespace(optim=SimpleNamespace(name="nadam", weight_decay=0.0))
    assert make_optimizer(cfg, params, 1e-3).param_groups[0]["foreach"] is True
    cfg.optim.name = "adamw"
    assert make_optimizer(cfg, params, 1e-3).param_groups[0]["fused"] is True


def test_deepcopy_and_state_dict_keep_the_parameter_layout():
    """Checkpoints and Keras import see the same parameters as before: names, shapes, default strides."""
    net = BCRNet((32, 16), (32, 8), alpha=3, n_cnn=2, n_cnn3=3)
    clone = copy.deepcopy(net)
    clone(torch.randn(2, 32, 16)).sum().backward()
    for (name, p), (name2, q) in zip(net.state_dict().items(), clone.state_dict().items()):
        assert name == name2 and p.shape == q.shape and q.is_contiguous(), name


@pytest.mark.parametrize("shape,pads", [
    ((2, 3, 7), ((2, 2),)),
    ((2, 2, 3), ((3, 3),)),                 # pads as long as the axis: head and tail rows overlap
    ((1, 2, 4, 5), ((1, 0), (0, 2))),
    ((1, 1, 3, 4, 2), ((1, 1), (2, 1), (1, 2))),
])
def test_period_pad_gradient_and_second_derivative(shape, pads):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(period_pad(x, pads), ref.period_pad(x, pads), rtol=0, atol=0)
    assert torch.autograd.gradcheck(lambda v: period_pad(v, pads), (x,))
    assert torch.autograd.gradgradcheck(lambda v: period_pad(v, pads), (x,))


def test_period_pad_gradient_equals_autograds_of_cat():
    x = torch.randn(4, 6, 9, requires_grad=True)
    probe = torch.randn(4, 6, 13)
    (fast,) = torch.autograd.grad((period_pad(x, ((2, 2),)) * probe).sum(), x)
    (slow,) = torch.autograd.grad((ref.period_pad(x, ((2, 2),)) * probe).sum(), x)
    assert torch.equal(fast, slow)


def test_parameter_gradients_keep_the_parameter_strides():
    """DDP copies gradients into buckets laid out like the parameters: a gradient in another layout costs a
    copy per step and a warning ("Grad strides do not match bucket view strides")."""
    net = BCRNet((32, 16), (32, 8), alpha=3, n_cnn=2, n_cnn3=4)
    net(torch.randn(2, 32, 16)).square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad.stride() == p.stride(), name
