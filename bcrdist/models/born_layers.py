"""The fixed, differentiable linear map "raw far field parts → Born image" of a `BornDefinition`
(`bcrdist.physics.born_definition`) as a torch layer, stored by its definition.

`BornReconstruction` holds no state a checkpoint must carry: every tensor is a NON-PERSISTENT buffer, rebuilt
from the definition (`set_definition`; `spec()` is the record to store, `BornDefinition.from_record` reads it
back), so `state_dict()` has no entry from it and `.to(device)` moves it.

Input: parts (B, n_obs, 2·n_inc), Re F and Im F concatenated along the last axis (the network input layout of
bcrdist, `bcrdist.transforms.network_input`), RAW (not normalised), in the grid's sign convention. Output:
η (B, H, W) in physical units, what `make_inversion(definition).predict(F)` gives.

Cartesian targets, factored (the dense H·W × 2·n_obs·n_inc matrix is 800 MB in float32 at the study's 100²
pixels and 100² directions). With E_obs (n_obs, P), E_inc (n_inc, P) the exponential factors of
`CartesianBornOperator` and w = γk²h²:
  1. right-hand side Re(AᴴF)_p = Re(conj(w) Σ_o E_obs[o, p] Σ_s F[o, s] conj(E_inc[s, p])) in real arithmetic:
     T = parts @ inc_factor, (B, n_obs, 2P) = [Re T | Im T] (inc_factor (2·n_inc, 2P) = [[Re E, −Im E],
     [σ Im E, σ Re E]], σ = −1 conjugates data of sign +1 into ours), then Σ_o T ⊙ obs_factor (obs_factor
     (n_obs, 2P) = [Re(conj(w) E_obs) | −Im(conj(w) E_obs)]) and the two halves added (`_RightHandSide`);
  2. the symmetric P × P solve, block diagonal in the parity basis of `CartesianBornInversion`:
     u = basis_rowsᵀ g basis_cols (g the image-shaped right-hand side), block m of u (a rectangle of the parity
     ordering) times K_m = V_m diag(f_m) V_mᵀ (r_m × r_m, r_m ≈ P/4; `CartesianBlockSolve.block_matrices`: f
     folds λ, the norm and the lsqr factor 1/r in), then η = basis_rows u′ basis_colsᵀ.
  Buffers: 4·(P/4)² + 3·n_obs·2P + 2n² floats instead of 2·n_obs·n_inc·P (study: 124 MB against 800 MB in
  float32).
Polar targets: the dense reconstruction matrix of `BornInversion` (columns reordered to the parts layout),
(H·W, 2·n_obs·n_inc), non-persistent as well.

Precision. Autocast is disabled inside (a bf16 product would cost the estimate its third digit); the layer
computes in its `precision`, float32 (default) or float64, whatever dtype the surrounding model is cast to
(its buffers keep it), and returns float32 (float64 for float64 parts at precision float64). The Cartesian
form goes through the normal equations, so float32 rounding grows like 1e-7·σ_max²/λ: at the study's geometry
(σ_max² ≈ 81 for bcrdist's matrix) 9e-6 of max|η| at damp 1 (λ ≈ 1.3e-2·σ_max²) but 6e-4 at damp 0.1
(λ ≈ 1.3e-4·σ_max², CNNB's); float64 keeps ~1e-12 at twice the buffer memory. TF32 matmuls (`runtime.tf32`)
would replace 1e-7 by ~1e-3 in that estimate.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from bcrdist.errors import ConfigError
from bcrdist.physics.born_definition import BornDefinition, BornEstimator, make_inversion

PIXEL_COLUMNS = 256               # columns of T per product in the forward: a cache-sized piece of T
FORWARD_FLOATS = 1 << 20          # elements of that piece, (samples, n_obs, PIXEL_COLUMNS)
TRANSIENT_FLOATS = 1 << 25        # elements of the backward's (samples, n_obs, 2P) gradient of T
PRECISIONS = {"float32": torch.float32, "float64": torch.float64}
# what the networks' Born layers compute in: float32 would add up to 6e-4 of max|η| at the study's damping 0.1
BORN_PRECISION = "float64"


def _span(selection: np.ndarray) -> tuple[int, int]:
    """(start, stop) of a parity block's indices, which the parity ordering makes contiguous."""
    start = int(selection[0])
    if not np.array_equal(selection, np.arange(start, start + len(selection))):
        raise AssertionError("BornReconstruction: a parity block is not contiguous")
    return start, start + len(selection)


class _RightHandSide(torch.autograd.Function):
    """x (B, n_obs, 2·n_inc) → both (B, 2P) = Σ_o (x @ inc_factor)[:, o] ⊙ obs_factor[o], differentiable in x.

    T = x @ inc_factor is (B, n_obs, 2P): 16 MB per sample in float64 at the study's size. The forward makes it
    a cache-sized piece at a time — `PIXEL_COLUMNS` columns, as many samples as keep the piece near
    `FORWARD_FLOATS` elements — and multiplies and sums it while it is in cache, instead of writing all of T to
    memory and reading it back: every entry is the same dot product over 2·n_inc and the same sum over n_obs as
    in the whole product (tests/test_born_layers.py compares the two bit for bit at the study's n_obs and n_inc),
    so networks trained before keep their exact results. The backward, needed only where the far field itself
    carries a gradient (CNNB's corrected far field), is autograd's derivative of the whole product with the
    products of the same shapes, (g ⊙ obs_factor) @ inc_factorᵀ for as many samples as keep the (samples, n_obs,
    2P) transient near `TRANSIENT_FLOATS` elements: smaller pieces would change the product's kernel and, for
    some shapes, its last bits.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, inc: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inc, obs)
        n, n_obs, width = len(x), obs.shape[0], obs.shape[1]
        both = x.new_empty(n, width)
        rows = max(1, FORWARD_FLOATS // (n_obs * PIXEL_COLUMNS))
        for a in range(0, n, rows):
            part = x[a:a + rows]
            for c in range(0, width, PIXEL_COLUMNS):
                piece = part @ inc[:, c:c + PIXEL_COLUMNS]                          # (rows, n_obs, columns)
                both[a:a + rows, c:c + PIXEL_COLUMNS] = piece.mul_(obs[:, c:c + PIXEL_COLUMNS]).sum(1)
        return both

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        inc, obs = ctx.saved_tensors
        samples = max(1, TRANSIENT_FLOATS // obs.numel())
        return torch.cat([(g.unsqueeze(1) * obs) @ inc.t() for g in grad.split(samples)]), None, None


class BornReconstruction(nn.Module):
    """parts (B, n_obs, 2·n_inc) raw [Re F | Im F] → η (B, H, W) float32, the Born image of a `BornDefinition`
    (module docstring). n_input = (n_obs, 2·n_inc), n_output = (H, W). Starts without a definition."""

    def __init__(self, n_input: tuple[int, int], n_output: tuple[int, int], precision: str = "float32"):
        super().__init__()
        self.n_input = tuple(int(v) for v in n_input)
        self.n_output = tuple(int(v) for v in n_output)
        if len(self.n_input) != 2 or self.n_input[1] % 2:
            raise ValueError(f"BornReconstruction: the input {self.n_input} must hold Re F and Im F (an even last "
                             f"axis)")
        if precision not in PRECISIONS:
            raise ValueError(f"BornReconstruction: precision must be one of {', '.join(PRECISIONS)}, got "
                             f"{precision!r}")
        self.precision, self.dtype = precision, PRECISIONS[precision]
        self.definition: BornDefinition | None = None
        # follows .to(device), so that buffers made later land where the module is
        self.register_buffer("anchor", torch.zeros((), dtype=self.dtype), persistent=False)
        self._buffer_names: list[str] = []
        self._blocks: list[tuple[tuple[int, int], tuple[int, int]]] = []
        self._row_ranges: list[tuple[int, int]] = []
        self._col_ranges: list[tuple[int, int]] = []

    def _apply(self, fn, recurse=True):
        """As nn.Module's, but the buffers keep `precision`: a model made half or double moves them only."""
        kept = {name: self._buffers[name] for name in ["anchor", *self._buffer_names]}
        super()._apply(fn, recurse)
        for name, old in kept.items():
            new = self._buffers[name]
            if new.dtype != old.dtype:
                self._buffers[name] = old.to(new.device)
        return self

    def spec(self) -> dict | None:
        """The definition's record (`BornDefinition.to_record`), None without one."""
        return None if self.definition is None else self.definition.to_record()

    def set_definition(self, definition: BornDefinition | None) -> None:
        """Rebuild the buffers for `definition` (None: drop them). ConfigError, the layer unchanged, when its grid
        does not give this layer's input and output shapes."""
        estimator = None
        if definition is not None:
            grid = definition.grid
            n_input, n_output = (grid.n_obs, 2 * grid.n_inc), tuple(grid.target_shape())
            if n_input != self.n_input or n_output != self.n_output:
                raise ConfigError(f"born layer: the definition's grid reads far fields {n_input} into images "
                                  f"{n_output}; the network's are {self.n_input} → {self.n_output}")
            estimator = make_inversion(definition)
        for name in self._buffer_names:
            delattr(self, name)
        self._buffer_names, self.definition = [], None
        if estimator is None:
            return
        if definition.grid.cartesian:
            self._set_factored(estimator)
        else:
            matrix = estimator.reconstruction_matrix()
            n_obs, n_inc = estimator.data_shape
            parts_order = matrix.reshape(-1, 2, n_obs, n_inc).transpose(0, 2, 1, 3).reshape(len(matrix), -1)
            self._add("matrix", parts_order)
        self.definition = definition

    def _add(self, name: str, array: np.ndarray) -> None:
        self.register_buffer(name, torch.as_tensor(np.ascontiguousarray(array), dtype=self.dtype,
                                                   device=self.anchor.device), persistent=False)
        self._buffer_names.append(name)

    def _set_factored(self, estimator: BornEstimator) -> None:
        inv = estimator.inversion
        op = inv.op
        sigma = -1.0 if inv.grid.farfield_sign == 1 else 1.0
        c, s = op.e_inc.real, op.e_inc.imag                                     # (n_inc, P)
        self._add("inc_factor", np.block([[c, -s], [sigma * s, sigma * c]]))    # (2·n_inc, 2P)
        q = np.conj(op.weight) * op.e_obs                                       # (n_obs, P)
        self._add("obs_factor", np.concatenate([q.real, -q.imag], axis=1))     # (n_obs, 2P)
        self._add("basis_rows", inv.bases[0])
        self._add("basis_cols", inv.bases[1])
        self._blocks = []
        for m, (rows, cols, matrix) in enumerate(estimator.solve.block_matrices()):
            self._add(f"block_{m}", matrix)                                      # (r, r) symmetric
            self._blocks.append((_span(rows), _span(cols)))
        self._row_ranges = sorted({rows for rows, _ in self._blocks})
        self._col_ranges = sorted({cols for _, cols in self._blocks})

    def forward(self, parts: torch.Tensor) -> torch.Tensor:
        """parts (B, n_obs, 2·n_inc) raw → η (B, H, W) float32 (float64 for float64 parts at precision float64)."""
        if self.definition is None:
            raise RuntimeError("BornReconstruction: no definition set; call set_definition (from the Born fit or "
                               "a checkpoint's record) first")
        if parts.dim() != 3 or tuple(parts.shape[1:]) != self.n_input:
            raise ValueError(f"BornReconstruction: expected parts (B, {self.n_input[0]}, {self.n_input[1]}), got "
                             f"{tuple(parts.shape)}")
        out_dtype = torch.float64 if parts.dtype == self.dtype == torch.float64 else torch.float32
        device = parts.device.type
        with torch.autocast(device, enabled=False) if torch.amp.is_autocast_available(device) else nullcontext():
            x = parts.to(self.dtype)
            if self.definition.grid.cartesian:
                eta = self._factored(x)
            else:
                eta = (x.reshape(len(x), -1) @ self.matrix.t()).reshape(len(x), *self.n_output)
            return eta.to(out_dtype)

    def _factored(self, x: torch.Tensor) -> torch.Tensor:
        half = self.obs_factor.shape[1] // 2
        both = _RightHandSide.apply(x, self.inc_factor, self.obs_factor)              # (B, 2P)
        g = (both[:, :half] + both[:, half:]).reshape(len(x), *self.n_output)
        u = self.basis_rows.t() @ g @ self.basis_cols
        solved = {}
        for m, ((r0, r1), (c0, c1)) in enumerate(self._blocks):
            block = u[:, r0:r1, c0:c1].reshape(len(x), -1) @ getattr(self, f"block_{m}")
            solved[(r0, c0)] = block.reshape(len(x), r1 - r0, c1 - c0)
        u = torch.cat([torch.cat([solved[(r0, c0)] for c0, _ in self._col_ranges], dim=2)
                       for r0, _ in self._row_ranges], dim=1)
        return self.basis_rows @ u @ self.basis_cols.t()

    def extra_repr(self) -> str:
        spec = ("no definition" if self.definition is None else
                f"{self.definition.method} {self.definition.parameter:g} ({self.definition.norm})")
        return f"n_input={self.n_input}, n_output={self.n_output}, {spec}"
