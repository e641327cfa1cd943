"""BCR-Net's forward as bcrdist computed it before the issue-14 optimisations, kept as the reference that the
optimised paths are tested and benchmarked against (tests/test_fast_paths.py, tools/bench_model.py).

Every MNN layer pads its input (torch.cat of periodic slices, F.pad for zeros) and then convolves in the
default memory layout; the 2D refinement pads each layer's input separately (one periodic row in angle, one
zero column in radius). It reads the parameters of a `bcrdist.models.BCRNet` and uses torch primitives only,
none of bcrdist's layer code, so that changes there cannot move the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_CONV = {1: F.conv1d, 2: F.conv2d}
_ACTIVATION = {None: None, "linear": None, "relu": F.relu}


def period_pad(x: torch.Tensor, pads) -> torch.Tensor:
    """Periodic padding of the spatial axes of x (B, C, *N), axis by axis, single wrap."""
    for axis, (before, after) in enumerate(pads, start=2):
        n = x.shape[axis]
        parts = ([x.narrow(axis, n - before, before)] if before else []) + [x] + (
            [x.narrow(axis, 0, after)] if after else [])
        if len(parts) > 1:
            x = torch.cat(parts, dim=axis)
    return x


def zero_pad(x: torch.Tensor, pads) -> torch.Tensor:
    flat = [v for before_after in reversed(pads) for v in before_after]
    return F.pad(x, flat) if any(flat) else x


def mnn_conv(layer, x: torch.Tensor) -> torch.Tensor:
    """A CNNK/WaveLetC/InvWaveLetC layer of BCR-Net: pad → convolution → activation → 1D `n_out` reshape."""
    x = period_pad(x, layer.pads) if layer.bc_padding == "period" else zero_pad(x, layer.pads)
    x = _CONV[layer.dim](x, layer.weight, layer.bias, stride=layer.stride)
    activation = _ACTIVATION[layer.activation_name]
    if activation is not None:
        x = activation(x)
    if layer.n_out is not None:
        b, f, n = x.shape
        x = x.transpose(1, 2).reshape(b, layer.n_out[0], n * f // layer.n_out[0]).transpose(1, 2)
    return x


def chain(layers, x: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        x = mnn_conv(layer, x)
    return x


def bcrnet_forward(net, x: torch.Tensor, return_aux: bool = False):
    """x (B, Ns, Nd) → η (B, Nt, Nr) [and the auxiliary head], with the parameters of `net` (a BCRNet)."""
    a = net.alpha
    b = mnn_conv(net.compress, x.transpose(1, 2))
    details = []
    for wavelet in net.wavelets:
        bt = mnn_conv(wavelet, b)
        details.append(bt)
        b = bt[:, a:]
    d = chain(net.coarse, b)
    for level_chain, inv, bt in zip(net.level_chains, net.inv_wavelets, reversed(details)):
        d1 = chain(level_chain, bt)
        d = mnn_conv(inv, torch.cat([d1[:, :a], d1[:, a:] + d], dim=1))
    img = mnn_conv(net.head, d).transpose(1, 2)
    y = img.unsqueeze(1)
    for i, conv in enumerate(net.refine):
        y = F.pad(period_pad(y, ((1, 1), (0, 0))), (1, 1))
        y = F.conv2d(y, conv.weight, conv.bias)
        if i < len(net.refine) - 1:
            y = F.relu(y)
    out = img + y[:, 0]
    return (out, img) if return_aux else out


def reference_optimizer(params, lr: float) -> torch.optim.Optimizer:
    """The NAdam bcrdist used before: Keras 2.2 constants, torch's per-parameter loop (the CPU default)."""
    return torch.optim.NAdam(params, lr=lr, betas=(0.9, 0.999), eps=1e-7, momentum_decay=0.004, foreach=False)
