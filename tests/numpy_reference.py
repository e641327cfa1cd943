"""Independent NumPy reference of the original Keras `mnn` layers, MNN-H/MNN-H2 and BCR-Net.

Written from the Keras semantics documented in shared/reference/original-code.md (§1–§3, §5.6), *not* from
bcrdist: everything is channels-last `(B, *spatial, C)`, padding is explicit (slices concatenated for the
periodic case, `np.pad` for zeros), convolutions are explicit loops over output positions (cross-correlation
with stride, 'valid' after the layer's own padding), locally connected layers use one kernel per output
position in the Keras layout, and the block reshapes are element-by-element loops over the documented index
maps. Weights are always given in the Keras layout:

- Conv{d}D kernel (k1, …, kd, C_in, C_out), bias (C_out,);
- LocallyConnected1D kernel (L_out, k·C_in, C_out), bias (L_out, C_out);
  LocallyConnected2D kernel (H_out·W_out, kh·kw·C_in, C_out), bias (H_out, W_out, C_out);
  every patch is flattened as (k1, …, kd, C_in) row-major and positions are enumerated row-major.

Nothing here imports bcrdist; the tests use it to produce expected values.
"""

from __future__ import annotations

import itertools
import math
import re

import h5py
import numpy as np

# ----------------------------------------------------------------------------------------------------------
# element-wise helpers


def activate(x: np.ndarray, activation) -> np.ndarray:
    if activation in (None, "linear"):
        return x
    if activation == "relu":
        return np.maximum(x, 0)
    if activation == "tanh":
        return np.tanh(x)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    raise ValueError(f"reference: unsupported activation {activation!r}")


# ----------------------------------------------------------------------------------------------------------
# padding (spatial axes are 1 … d; axis 0 is the batch, the last axis the channels)


def period_pad(x: np.ndarray, pads) -> np.ndarray:
    """The original `_PeriodPadding{1,2,3}D`: per axis, concat [last `before` rows, x, first `after` rows],
    axes 1, 2, 3 in that order, each on the already padded array (so corners wrap). Single wrap only."""
    for axis, (before, after) in enumerate(pads, start=1):
        n = x.shape[axis]
        if n < max(before, after):
            raise ValueError(f"reference period_pad: pad {(before, after)} larger than the axis ({n})")
        tail = np.take(x, list(range(n - before, n)), axis=axis)
        head = np.take(x, list(range(0, after)), axis=axis)
        x = np.concatenate([tail, x, head], axis=axis)
    return x


def zero_pad(x: np.ndarray, pads) -> np.ndarray:
    return np.pad(x, [(0, 0)] + [tuple(p) for p in pads] + [(0, 0)])


def bc_pad(x: np.ndarray, pads, bc_padding: str) -> np.ndarray:
    if bc_padding == "period":
        return period_pad(x, pads)
    if bc_padding == "zero":
        return zero_pad(x, pads)
    raise ValueError(f"reference: unknown bc_padding {bc_padding!r}")


# ----------------------------------------------------------------------------------------------------------
# convolution and locally connected maps ('valid', explicit loops over output positions)


def _out_grid(spatial, kernel_size, stride):
    return tuple((n - k) // s + 1 for n, k, s in zip(spatial, kernel_size, stride))


def _patch(x, pos, kernel_size, stride):
    sl = tuple(slice(p * s, p * s + k) for p, k, s in zip(pos, kernel_size, stride))
    return x[(slice(None),) + sl + (slice(None),)]           # (B, k1, …, kd, C_in)


def conv_valid(x: np.ndarray, kernel: np.ndarray, bias=None, stride=None) -> np.ndarray:
    """Keras Conv{d}D, padding='valid': out[b, o, f] = Σ_{κ, c} x[b, o·s + κ, c] · kernel[κ, c, f] + bias[f]."""
    d = x.ndim - 2
    kernel_size = kernel.shape[:d]
    stride = (1,) * d if stride is None else tuple(stride)
    grid = _out_grid(x.shape[1:-1], kernel_size, stride)
    out = np.zeros((x.shape[0],) + grid + (kernel.shape[-1],), dtype=np.result_type(x, kernel))
    for pos in itertools.product(*(range(g) for g in grid)):
        patch = _patch(x, pos, kernel_size, stride)
        out[(slice(None),) + pos] = np.tensordot(patch, kernel, axes=d + 1)
    if bias is not None:
        out = out + bias
    return out


def locally_connected_valid(x: np.ndarray, kernel: np.ndarray, bias, kernel_size, stride=None) -> np.ndarray:
    """Keras LocallyConnected{1,2}D (implementation 1): position P (row-major over the output grid) uses
    kernel[P] of shape (Πk·C_in, C_out) on its patch flattened (k1, …, kd, C_in) row-major."""
    kernel_size = tuple(kernel_size)
    stride = tuple(kernel_size) if stride is None else tuple(stride)
    grid = _out_grid(x.shape[1:-1], kernel_size, stride)
    if kernel.shape[0] != math.prod(grid):
        raise ValueError(f"reference LC: kernel has {kernel.shape[0]} positions, output grid {grid}")
    out = np.zeros((x.shape[0],) + grid + (kernel.shape[-1],), dtype=np.result_type(x, kernel))
    for index, pos in enumerate(itertools.product(*(range(g) for g in grid))):
        patch = _patch(x, pos, kernel_size, stride).reshape(x.shape[0], -1)
        out[(slice(None),) + pos] = patch @ kernel[index]
    if bias is not None:
        out = out + np.asarray(bias).reshape(grid + (kernel.shape[-1],))
    return out


# ----------------------------------------------------------------------------------------------------------
# block reshapes, element by element from the documented index maps


def _ravel(block, w):
    """Row-major flat index of the in-block offset (p, q, r) in a block of shape w: (p·wy + q)·wz + r."""
    flat = 0
    for b, wk in zip(block, w):
        flat = flat * wk + b
    return flat


def reshape_m(x: np.ndarray, w) -> np.ndarray:
    """ReshapeM{1,2,3}D: (B, n…, C) → (B, w·n…, C/Πw).

    1D (plain row-major reshape): out[i·w + p, c] = x[i, p·nc + c].
    2D/3D (block permutation): out[i·wx + p, j·wy + q, c] = x[i, j, c·wx·wy + p·wy + q] (3D likewise,
    channel index outermost).
    """
    d = x.ndim - 2
    w = tuple(w)
    n = x.shape[1:-1]
    big = math.prod(w)
    nc = x.shape[-1] // big
    assert nc * big == x.shape[-1], "channels not divisible by the block"
    out = np.empty((x.shape[0],) + tuple(a * b for a, b in zip(n, w)) + (nc,), dtype=x.dtype)
    for pos in itertools.product(*(range(a) for a in n)):
        for block in itertools.product(*(range(a) for a in w)):
            fine = tuple(i * wk + p for i, wk, p in zip(pos, w, block))
            beta = _ravel(block, w)
            for c in range(nc):
                src = beta * nc + c if d == 1 else c * big + beta
                out[(slice(None),) + fine + (c,)] = x[(slice(None),) + pos + (src,)]
    return out


def reshape_t(x: np.ndarray, w) -> np.ndarray:
    """ReshapeT{1,2,3}D: (B, N…, C) → (B, N/w…, Πw·C), out[I, J, (p·wy + q)·C + c] = x[I·wx + p, J·wy + q, c]
    (1D: out[I, p·C + c] = x[I·w + p, c], a plain row-major reshape; channel index innermost)."""
    w = tuple(w)
    n = x.shape[1:-1]
    cin = x.shape[-1]
    coarse = tuple(a // b for a, b in zip(n, w))
    assert all(a * b == c for a, b, c in zip(coarse, w, n)), "size not divisible by the block"
    out = np.empty((x.shape[0],) + coarse + (math.prod(w) * cin,), dtype=x.dtype)
    for pos in itertools.product(*(range(a) for a in coarse)):
        for block in itertools.product(*(range(a) for a in w)):
            fine = tuple(i * wk + p for i, wk, p in zip(pos, w, block))
            beta = _ravel(block, w)
            for c in range(cin):
                out[(slice(None),) + pos + (beta * cin + c,)] = x[(slice(None),) + fine + (c,)]
    return out


def nout_reshape(x: np.ndarray, n_out) -> np.ndarray:
    """The `Nout` reshape of CNNI/LCI/InvWaveLetC: plain row-major reshape in 1D, block ReshapeM in 2D/3D
    with w = Nout / N per axis."""
    d = x.ndim - 2
    n_out = (n_out,) * d if isinstance(n_out, int) else tuple(n_out)
    if d == 1:
        return x.reshape(x.shape[0], n_out[0], -1)
    w = tuple(o // n for o, n in zip(n_out, x.shape[1:-1]))
    assert all(wk * n == o for wk, n, o in zip(w, x.shape[1:-1], n_out))
    return reshape_m(x, w)


# ----------------------------------------------------------------------------------------------------------
# the MNN layers (Keras-layout weights)


def _spatial_dim(x):
    return x.ndim - 2


def cnnr(x, kernel, bias, activation="linear"):
    """CNNR{d}D: kernel = stride = w, no padding."""
    d = _spatial_dim(x)
    return activate(conv_valid(x, kernel, bias, stride=kernel.shape[:d]), activation)


def cnnk(x, kernel, bias, bc_padding="period", activation=None):
    """CNNK{d}D: odd kernel k, k//2 padding each side (period or zero), stride 1."""
    d = _spatial_dim(x)
    k = kernel.shape[:d]
    assert all(v % 2 == 1 for v in k)
    y = bc_pad(x, [(v // 2, v // 2) for v in k], bc_padding)
    return activate(conv_valid(y, kernel, bias), activation)


def cnni(x, kernel, bias, n_out=None, activation="linear"):
    """CNNI{d}D: 1×…×1 convolution, then the `Nout` reshape."""
    y = activate(conv_valid(x, kernel, bias), activation)
    return y if n_out is None else nout_reshape(y, n_out)


def wavelet(x, kernel, bias=None, bc_padding="period", activation="linear"):
    """WaveLetC{d}D: even k, stride 2, k/2 − 1 padding per axis (zero for k = 2)."""
    d = _spatial_dim(x)
    k = kernel.shape[:d]
    assert all(v % 2 == 0 for v in k)
    y = bc_pad(x, [(v // 2 - 1, v // 2 - 1) for v in k], bc_padding)
    return activate(conv_valid(y, kernel, bias, stride=(2,) * d), activation)


def inv_wavelet(x, kernel, bias=None, n_out=None, bc_padding="period", activation="linear"):
    """InvWaveLetC{d}D: odd k, k//2 padding, stride 1, then the `Nout` reshape."""
    y = cnnk(x, kernel, bias, bc_padding, activation)
    return y if n_out is None else nout_reshape(y, n_out)


def lcr(x, kernel, bias, kernel_size, activation="linear"):
    return activate(locally_connected_valid(x, kernel, bias, kernel_size, kernel_size), activation)


def lck(x, kernel, bias, kernel_size, bc_padding="period", activation=None):
    d = _spatial_dim(x)
    kernel_size = tuple(kernel_size)
    y = bc_pad(x, [(v // 2, v // 2) for v in kernel_size], bc_padding)
    return activate(locally_connected_valid(y, kernel, bias, kernel_size, (1,) * d), activation)


def lci(x, kernel, bias, n_out=None, activation="linear"):
    d = _spatial_dim(x)
    y = activate(locally_connected_valid(x, kernel, bias, (1,) * d, (1,) * d), activation)
    return y if n_out is None else nout_reshape(y, n_out)


# ----------------------------------------------------------------------------------------------------------
# Keras save_weights files, read independently


def read_keras_h5(path) -> dict[str, list[list[np.ndarray]]]:
    """{layer class prefix: [[kernel, bias?], …] in creation order} (creation order = the name counter,
    where a bare name counts as 0), for a Keras `save_weights` HDF5 file."""
    out: dict[str, list[tuple[int, list[np.ndarray]]]] = {}
    with h5py.File(path, "r") as f:
        for raw in f.attrs["layer_names"]:
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            g = f[name]
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in g.attrs["weight_names"]]
            if not names:
                continue
            m = re.fullmatch(r"(.*?)(?:_(\d+))?", name)
            arrays = [np.asarray(g[n]) for n in names]
            out.setdefault(m.group(1), []).append((int(m.group(2) or 0), arrays))
    return {k: [a for _, a in sorted(v, key=lambda t: t[0])] for k, v in out.items()}


def _pair(arrays):
    return arrays[0], (arrays[1] if len(arrays) > 1 else None)


# ----------------------------------------------------------------------------------------------------------
# MNN-H and MNN-H2 (original `MNNHmodel` / `MNNH2model`, §3)


def _as_tuple(v, d):
    return (v,) * d if isinstance(v, int) else tuple(v) + (tuple(v)[-1],) * (d - len(tuple(v)))


def _layer_ops(layer, d, bc_padding):
    lc = layer == "LC"

    def R(y, wb, w):
        return lcr(y, *wb, w) if lc else cnnr(y, *wb)

    def K(y, wb, k, act):
        if lc:
            return lck(y, *wb, k, bc_padding, act)
        assert tuple(wb[0].shape[:d]) == tuple(k), (wb[0].shape, k)
        return cnnk(y, *wb, bc_padding, act)

    def I(y, wb, n_out):
        return lci(y, *wb, n_out) if lc else cnni(y, *wb, n_out)

    return R, K, I


def mnnh_weights_from_keras(by_class, dim, L, n_cnn, layer="CNN", h2=False):
    """Structure per-class creation-order lists (as `read_keras_h5`) for `mnnh`/`mnnh2`:
    adjacent K's first, then per level (H: R, K…, I for k = 2…L; H2: the restriction chain V_L, V_{L−1}…V_2,
    the K chains for ℓ = 2…L and the interpolations ℓ = 2…L−1, then the last one)."""
    p = layer.lower()
    ks = iter(by_class[f"{p}k{dim}d"])
    rs = iter(by_class[f"{p}r{dim}d"])
    is_ = iter(by_class[f"{p}i{dim}d"])
    w = {"adjacent": [_pair(next(ks)) for _ in range(n_cnn)]}
    if not h2:
        w["far"] = [{"R": _pair(next(rs)), "K": [_pair(next(ks)) for _ in range(n_cnn)], "I": _pair(next(is_))}
                    for _ in range(2, L + 1)]
    else:
        w["R"] = [_pair(next(rs)) for _ in range(L - 1)]             # V_L, V_{L-1}, …, V_2
        w["K"] = [[_pair(next(ks)) for _ in range(n_cnn)] for _ in range(2, L + 1)]   # ℓ = 2 … L
        w["I"] = [_pair(next(is_)) for _ in range(L - 1)]             # ℓ = 2 … L−1, then the last
    for it in (ks, rs, is_):
        assert next(it, None) is None, "unused weights"
    return w


def _mnn_common(x, L, w_b, dim):
    if x.ndim == dim + 1:
        x = x[..., None]
    assert x.shape[-1] == 1
    nx = x.shape[1:-1]
    m = tuple(n // 2 ** L for n in nx)
    assert all(mk * 2 ** L == n for mk, n in zip(m, nx))
    w_ad, w_2, w_l = (_as_tuple(v, dim) for v in w_b)
    return x, nx, m, w_ad, w_2, w_l


def _adjacent(x, weights, m, n_cnn, w_ad, activation, K):
    y = reshape_t(x, m)
    for i in range(n_cnn):
        y = K(y, weights["adjacent"][i], w_ad, activation if i < n_cnn - 1 else None)
    return reshape_m(y, m)


def mnnh(x, weights, dim, L, n_cnn, alpha_out=None, w_b=(3, 5, 7), activation="relu", layer="CNN",
         bc_padding="period"):
    """MNN-H forward, x (B, *Nx) or (B, *Nx, 1) → (B, *Nx) if alpha_out is None else (B, *Nx, alpha_out)."""
    x, nx, m, w_ad, w_2, w_l = _mnn_common(x, L, w_b, dim)
    R, K, I = _layer_ops(layer, dim, bc_padding)
    out = _adjacent(x, weights, m, n_cnn, w_ad, activation, K)
    for k, level in zip(range(2, L + 1), weights["far"]):
        w = tuple(mk * 2 ** (L - k) for mk in m)
        v = R(x, level["R"], w)
        for i in range(n_cnn):
            v = K(v, level["K"][i], w_2 if k == 2 else w_l, activation)
        out = out + I(v, level["I"], nx)
    return out[..., 0] if alpha_out is None else out


def mnnh2(x, weights, dim, L, n_cnn, alpha_out=None, w_b=(3, 5, 7), activation="relu", layer="CNN",
          bc_padding="period"):
    """MNN-H2 forward (needs L ≥ 3), shapes as `mnnh`."""
    assert L >= 3
    x, nx, m, w_ad, w_2, w_l = _mnn_common(x, L, w_b, dim)
    R, K, I = _layer_ops(layer, dim, bc_padding)
    v = {L: R(x, weights["R"][0], m)}
    for i, ell in enumerate(range(L - 1, 1, -1), start=1):
        v[ell] = R(v[ell + 1], weights["R"][i], (2,) * dim)
    mv = {}
    for i, ell in enumerate(range(2, L + 1)):
        y = v[ell]
        for j in range(n_cnn):
            y = K(y, weights["K"][i][j], w_2 if ell == 2 else w_l, activation)
        mv[ell] = y
    chi = mv[2]
    for i, ell in enumerate(range(2, L)):
        if ell > 2:
            chi = chi + mv[ell]
        chi = I(chi, weights["I"][i], (2 ** (ell + 1),) * dim)
    chi = chi + mv[L]
    chi = I(chi, weights["I"][-1], nx)
    chi = reshape_m(chi, (1,) * dim)
    out = chi + _adjacent(x, weights, m, n_cnn, w_ad, activation, K)
    return out[..., 0] if alpha_out is None else out


# ----------------------------------------------------------------------------------------------------------
# BCR-Net (§5.6)


def bcrnet_weights_from_keras(by_class, levels, n_cnn, n_cnn3):
    """Structure the per-class creation-order lists of the original script: cnnk1d = [compress, coarse×n_cnn,
    (chain×n_cnn for ℓ = L…1), head]; wave_let_c1d ℓ = 1…L; inv_wave_let_c1d ℓ = L…1; conv2d × n_cnn3."""
    ks = iter(by_class["cnnk1d"])
    w = {"compress": _pair(next(ks)),
         "coarse": [_pair(next(ks)) for _ in range(n_cnn)],
         "chains": [[_pair(next(ks)) for _ in range(n_cnn)] for _ in range(levels)],
         "head": _pair(next(ks)),
         "wavelets": [a[0] for a in by_class["wave_let_c1d"]],
         "inv": [a[0] for a in by_class["inv_wave_let_c1d"]],
         "refine": [_pair(a) for a in by_class["conv2d"]]}
    assert next(ks, None) is None
    assert len(w["wavelets"]) == len(w["inv"]) == levels and len(w["refine"]) == n_cnn3
    return w


def bcrnet(x, weights, alpha, levels, bc_padding="period"):
    """BCR-Net forward, channels-last: x (B, Ns, Nd) → (out (B, Nt, Nr), aux (B, Nt, Nr)).

    `weights` as `bcrnet_weights_from_keras` (Keras layouts): compress/coarse/chains/head (kernel, bias),
    wavelets (ℓ = 1…L) and inv (ℓ = L…1) kernels without bias, refine = conv2d (kernel, bias) list.
    `bc_padding` ('period' or 'zero'): the padding along the angle axis of every layer, refinement included.
    """
    ns = x.shape[1]
    L = levels
    m0 = ns // 2 ** L
    m = 2 * ((m0 + 1) // 2) - 1
    b = cnnk(x, *weights["compress"], bc_padding, None)             # (B, Ns, α)
    bts = []
    for ell in range(1, L + 1):
        bt = wavelet(b, weights["wavelets"][ell - 1], None, bc_padding)  # (B, Ns/2^ℓ, 2α)
        bts.append(bt)
        b = bt[..., alpha:2 * alpha]
    d = b
    for kernel, bias in weights["coarse"]:
        assert kernel.shape[0] == m
        d = cnnk(d, kernel, bias, bc_padding, "relu")
    for i, ell in enumerate(range(L, 0, -1)):
        d1 = bts[ell - 1]
        for kernel, bias in weights["chains"][i]:
            d1 = cnnk(d1, kernel, bias, bc_padding, "relu")
        d = np.concatenate([d1[..., :alpha], d1[..., alpha:2 * alpha] + d], axis=-1)
        d = inv_wavelet(d, weights["inv"][i], None, ns // 2 ** (ell - 1), bc_padding)
    img = cnnk(d, *weights["head"], bc_padding, None)               # (B, Nt, Nr)
    y = img[..., None]
    n3 = len(weights["refine"])
    for i, (kernel, bias) in enumerate(weights["refine"]):
        y = bc_pad(y, [(1, 1), (0, 0)], bc_padding)
        y = zero_pad(y, [(0, 0), (1, 1)])
        y = conv_valid(y, kernel, bias)
        if i < n3 - 1:
            y = np.maximum(y, 0)
    return img + y[..., 0], img


# ----------------------------------------------------------------------------------------------------------
# torch layout → Keras layout (the inverse of the documented conversions), on plain arrays


def conv_kernel_to_keras(weight: np.ndarray) -> np.ndarray:
    """torch (C_out, C_in, k1, …, kd) → Keras (k1, …, kd, C_in, C_out)."""
    d = weight.ndim - 2
    return np.transpose(weight, tuple(range(2, 2 + d)) + (1, 0))


def lc_kernel_to_keras(weight: np.ndarray) -> np.ndarray:
    """bcrdist LC (*N_out, F, C, *k) → Keras (ΠN_out, Πk·C, F), patch flattened (k…, C) row-major."""
    d = (weight.ndim - 2) // 2
    grid, f, c, k = weight.shape[:d], weight.shape[d], weight.shape[d + 1], weight.shape[d + 2:]
    moved = np.transpose(weight, tuple(range(d)) + tuple(range(d + 2, 2 * d + 2)) + (d + 1, d))
    return moved.reshape(math.prod(grid), math.prod(k) * c, f)


def lc_bias_to_keras(bias: np.ndarray) -> np.ndarray:
    """bcrdist LC bias (F, *N_out) → Keras (*N_out, F)."""
    return np.moveaxis(bias, 0, -1)


def keras_weights(module):
    """(kernel, bias or None) in Keras layout for a bcrdist conv/LC layer or a plain torch ConvNd.

    Duck-typed: `weight` has ndim d + 2 for a convolution and 2d + 2 for a locally connected layer, where
    d = len(kernel_size)."""
    w = module.weight.detach().cpu().numpy()
    b = None if module.bias is None else module.bias.detach().cpu().numpy()
    d = len(module.kernel_size)
    if w.ndim == d + 2:
        return conv_kernel_to_keras(w), b
    assert w.ndim == 2 * d + 2, w.shape
    return lc_kernel_to_keras(w), (None if b is None else lc_bias_to_keras(b))
