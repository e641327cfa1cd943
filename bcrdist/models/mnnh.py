"""MNN-H and MNN-H2 networks (the original `MNNHmodel` / `MNNH2model` builders) as `nn.Module`s.

Input (B, *n_input) → output (B, *n_input) when `alpha_out` is None, else (B, alpha_out, *n_input).
With Nx = n_input, m = Nx / 2^L per axis, M = Πm·alpha_out (alpha_out taken as 1 when None) and
w_b = (w_ad, w_2, w_l):

- adjacent (near-field) part: ReshapeT(m) → (B, Πm, 2^L…); (n_cnn − 1) × K(M, w_ad, activation);
  K(M, w_ad, linear); ReshapeM(m) → (B, alpha_out, *Nx).
- MNN-H far field, for level k = 2 … L with block w = m·2^(L−k): R(alpha, w) on the input →
  (B, alpha, 2^k…); n_cnn × K(alpha, w_2 if k = 2 else w_l, activation) (no final linear layer, as the
  original); I(Πw·alpha_out, n_out=Nx) → (B, alpha_out, *Nx). Needs L ≥ 2.
- MNN-H2 far field: restriction chain V_L = R(alpha, m)(input), V_l = R(alpha, 2)(V_{l+1}) for l = L−1 … 2;
  MV_l = n_cnn × K(alpha, w_2 if l = 2 else w_l, activation)(V_l); interpolation chain χ = MV_2,
  χ = I(2^Dim·alpha, n_out=2^(l+1))(χ [+ MV_l for l > 2]) for l = 2 … L−1, then
  I(M, n_out=Nx)(χ + MV_L). Needs L ≥ 3.
- Output = sum of the parts.

K/R/I are the CNN layers (`layer='CNN'`, any dimension 1–3) or the locally connected ones (`layer='LC'`,
dimension 1–2). `keras_layers()` lists the weighted layers in the original builder's creation order, for
`bcrdist.models.keras.load_keras_weights`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bcrdist.mnn import conv, locally_connected
from bcrdist.mnn.arguments import check_positive, to_tuple
from bcrdist.mnn.reshape import reshape_m, reshape_t


class _Factory:
    """Builds R/K/I layers of one family and dimension; LC layers also need the grid size."""

    def __init__(self, layer: str, dim: int, owner: str):
        if layer not in ("CNN", "LC"):
            raise ValueError(f"{owner}: layer must be 'CNN' or 'LC', got {layer!r}")
        if layer == "LC" and dim not in (1, 2):
            raise ValueError(f"{owner}: locally connected layers exist in 1D and 2D only, got dim={dim}")
        self.lc = layer == "LC"
        self.module = locally_connected if self.lc else conv
        self.prefix = "LC" if self.lc else "CNN"
        self.dim = dim

    def _cls(self, kind: str):
        return getattr(self.module, f"{self.prefix}{kind}{self.dim}D")

    def R(self, cin, filters, size, kernel):
        extra = (size,) if self.lc else ()
        return self._cls("R")(cin, filters, *extra, kernel)

    def K(self, cin, filters, size, kernel, activation, bc_padding):
        extra = (size,) if self.lc else ()
        return self._cls("K")(cin, filters, *extra, kernel, activation=activation, bc_padding=bc_padding)

    def I(self, cin, filters, size, n_out):
        extra = (size,) if self.lc else ()
        return self._cls("I")(cin, filters, *extra, n_out=n_out)


class _MNNBase(nn.Module):
    """Argument checks and the adjacent part shared by MNN-H and MNN-H2."""

    min_levels = 2

    def __init__(self, n_input, dim: int, L: int, n_cnn: int, alpha: int, alpha_out=None, w_b=(3, 5, 7),
                 activation="relu", layer="CNN", bc_padding="period"):
        super().__init__()
        name = type(self).__name__
        if dim not in (1, 2, 3):
            raise ValueError(f"{name}: dim must be 1, 2 or 3, got {dim!r}")
        check_positive(n_cnn, name, "n_cnn")
        check_positive(alpha, name, "alpha")
        if not isinstance(L, int) or L < self.min_levels:
            raise ValueError(f"{name}: needs L ≥ {self.min_levels}, got L={L!r}")
        self.n_input = to_tuple(n_input, dim, name, "n_input")
        for n in self.n_input:
            if n % 2 ** L:
                raise ValueError(f"{name}: n_input {self.n_input} is not divisible by 2^L = {2 ** L}")
        self.dim, self.L, self.alpha = dim, L, alpha
        self.alpha_out = None if alpha_out is None else check_positive(alpha_out, name, "alpha_out")
        al_out = alpha_out or 1
        self.m = tuple(n // 2 ** L for n in self.n_input)
        self.w_ad, self.w_2, self.w_l = (to_tuple(w, dim, name, "w_b") for w in to_tuple_of_3(w_b, name))
        self.make = _Factory(layer, dim, name)
        coarse = (2 ** L,) * dim
        m_total = math.prod(self.m) * al_out
        chans = [math.prod(self.m)] + [m_total] * n_cnn
        self.adjacent = nn.ModuleList(
            self.make.K(chans[i], m_total, coarse, self.w_ad, activation if i < n_cnn - 1 else None, bc_padding)
            for i in range(n_cnn))

    def _adjacent(self, x: torch.Tensor) -> torch.Tensor:
        y = reshape_t(x, self.m)
        for layer in self.adjacent:
            y = layer(y)
        return reshape_m(y, self.m)

    def _finish(self, y: torch.Tensor) -> torch.Tensor:
        return y[:, 0] if self.alpha_out is None else y

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.n_input:
            raise ValueError(f"{type(self).__name__}: expected input (B, {', '.join(map(str, self.n_input))}), "
                             f"got {tuple(x.shape)}")
        return x.unsqueeze(1)


def to_tuple_of_3(w_b, name: str):
    if not isinstance(w_b, (tuple, list)) or len(w_b) != 3:
        raise ValueError(f"{name}: w_b must be (w_ad, w_2, w_l), got {w_b!r}")
    return w_b


class MNNH(_MNNBase):
    """MNN-H (hierarchical matrix network); see the module docstring."""

    def __init__(self, n_input, dim, L, n_cnn, alpha, alpha_out=None, w_b=(3, 5, 7), activation="relu",
                 layer="CNN", bc_padding="period"):
        super().__init__(n_input, dim, L, n_cnn, alpha, alpha_out, w_b, activation, layer, bc_padding)
        al_out = alpha_out or 1
        self.far = nn.ModuleList()
        for k in range(2, L + 1):
            w = tuple(mk * 2 ** (L - k) for mk in self.m)
            grid = (2 ** k,) * dim
            kernel = self.w_2 if k == 2 else self.w_l
            chain = [self.make.R(1, alpha, self.n_input, w)]
            chain += [self.make.K(alpha, alpha, grid, kernel, activation, bc_padding) for _ in range(n_cnn)]
            chain.append(self.make.I(alpha, math.prod(w) * al_out, grid, self.n_input))
            self.far.append(nn.Sequential(*chain))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, *n_input) → (B, *n_input) or (B, alpha_out, *n_input)."""
        x = self._check_input(x)
        y = self._adjacent(x)
        for chain in self.far:
            y = y + chain(x)
        return self._finish(y)

    def keras_layers(self) -> list[tuple[str, nn.Module]]:
        modules = list(self.adjacent) + [layer for chain in self.far for layer in chain]
        return [(m.keras_name, m) for m in modules]


class MNNH2(_MNNBase):
    """MNN-H2 (nested-basis hierarchical matrix network); see the module docstring. Needs L ≥ 3."""

    min_levels = 3

    def __init__(self, n_input, dim, L, n_cnn, alpha, alpha_out=None, w_b=(3, 5, 7), activation="relu",
                 layer="CNN", bc_padding="period"):
        super().__init__(n_input, dim, L, n_cnn, alpha, alpha_out, w_b, activation, layer, bc_padding)
        m_total = math.prod(self.m) * (alpha_out or 1)
        self.restrict = nn.ModuleList([self.make.R(1, alpha, self.n_input, self.m)])
        for level in range(L - 1, 1, -1):
            self.restrict.append(self.make.R(alpha, alpha, (2 ** (level + 1),) * dim, 2))
        self.mult = nn.ModuleList(
            nn.Sequential(*[self.make.K(alpha, alpha, (2 ** level,) * dim, self.w_2 if level == 2 else self.w_l,
                                        activation, bc_padding) for _ in range(n_cnn)])
            for level in range(2, L + 1))
        self.interp = nn.ModuleList(
            self.make.I(alpha, 2 ** dim * alpha, (2 ** level,) * dim, (2 ** (level + 1),) * dim)
            for level in range(2, L))
        self.interp.append(self.make.I(alpha, m_total, (2 ** L,) * dim, self.n_input))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, *n_input) → (B, *n_input) or (B, alpha_out, *n_input)."""
        x = self._check_input(x)
        v = [self.restrict[0](x)]                      # V_L, V_{L-1}, …, V_2
        for layer in self.restrict[1:]:
            v.append(layer(v[-1]))
        mv = [chain(vl) for chain, vl in zip(self.mult, reversed(v))]   # MV_2 … MV_L
        chi = mv[0]
        for level, layer in enumerate(self.interp[:-1], start=2):
            if level > 2:
                chi = chi + mv[level - 2]
            chi = layer(chi)
        chi = self.interp[-1](chi + mv[-1])
        return self._finish(chi + self._adjacent(x))

    def keras_layers(self) -> list[tuple[str, nn.Module]]:
        modules = (list(self.adjacent) + list(self.restrict) + [k for chain in self.mult for k in chain]
                   + list(self.interp))
        return [(m.keras_name, m) for m in modules]
