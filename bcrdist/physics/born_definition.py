"""What fully defines a linear Born reconstruction F → η (`BornDefinition`), as plain JSON-able values a
checkpoint stores, and the reconstruction it defines (`make_inversion` → `BornEstimator`).

A definition is the grid (`GridInfo`, with a known far-field sign) and one of two methods:
    tikhonov   η_λ = argmin ‖[Re A; Im A] η − [Re F; Im F]‖² + λ‖η‖²_N (`bcrdist.physics.born`), parameter = λ
               (absolute), norm "area" (‖η‖²_N ≈ ∫η²) or "euclidean" (Σ η²); polar or Cartesian targets; on
               polar ones `entries` "measure" restricts the data to BCR-Net's even offsets;
    lsqr       Re of argmin_x ‖A_s x − F‖² + d²‖x‖², the study's damped least squares on its Born matrix A_s
               (`bcrdist.physics.born_lsqr`), parameter = the damping d > 0, the plain coefficient norm;
               Cartesian targets with the same observation and incident directions only.
Every estimate is scale·(a Tikhonov estimate at λ on bcrdist's own Born matrix): tikhonov scale 1 at its λ,
lsqr scale 1/r at λ = d²/r² (r = (h_s/h)², `born_lsqr.study_ratio`), which is what `BornEstimator` holds and
what the torch layer (`bcrdist.models.born_layers`) applies.

Record (`to_record`, JSON): {"version": 1, "method", "parameter", "norm", "entries", "grid": GridInfo record}.
A polar grid with sign +1 is read by conjugating F (the polar inversion is written in sign −1).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from bcrdist.errors import ConfigError, DataError
from bcrdist.physics.born import (ENTRIES, NORMS, BornInversion, CartesianBornInversion, TikhonovInversion,
                                  linear_map_matrix)
from bcrdist.physics.born_lsqr import CartesianBlockSolve, DampedLsqrInversion
from bcrdist.physics.layout import GridInfo

METHODS = ("tikhonov", "lsqr")
DEFINITION_RECORD_VERSION = 1


@dataclasses.dataclass(frozen=True)
class BornDefinition:
    """A linear Born reconstruction (module docstring). grid: with a known farfield_sign; method: tikhonov |
    lsqr; parameter: λ ≥ 0 (tikhonov) or d > 0 (lsqr); norm: area | euclidean (None: area for tikhonov,
    euclidean for lsqr, the only norm lsqr has); entries: farfield | measure (measure: polar tikhonov only).
    Invalid combinations are ConfigErrors naming the field."""

    grid: GridInfo
    method: str = "tikhonov"
    parameter: float = 0.0
    norm: str | None = None
    entries: str = "farfield"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"born method: expected one of {', '.join(METHODS)}, got {self.method!r}")
        object.__setattr__(self, "parameter", float(self.parameter))
        if self.norm is None:
            object.__setattr__(self, "norm", "area" if self.method == "tikhonov" else "euclidean")
        grid, lsqr = self.grid, self.method == "lsqr"
        checks = [
            (isinstance(grid, GridInfo), f"born grid: expected a GridInfo, got {type(grid).__name__}"),
            (self.norm in NORMS, f"born norm: expected one of {', '.join(NORMS)}, got {self.norm!r}"),
            (self.entries in ENTRIES, f"born entries: expected one of {', '.join(ENTRIES)}, got {self.entries!r}"),
            (math.isfinite(self.parameter) and (self.parameter > 0 if lsqr else self.parameter >= 0),
             f"born parameter: {'the damping d must be > 0' if lsqr else 'λ must be ≥ 0'} and finite, got "
             f"{self.parameter}"),
        ]
        if isinstance(grid, GridInfo):
            checks += [
                (grid.farfield_sign in (-1, 1), "born grid: the far field's sign convention is unknown; detect it "
                                                "or record it"),
                (not lsqr or grid.cartesian, "born method lsqr: reconstructs Cartesian images; the grid's target "
                                             "is polar"),
                (not lsqr or self.norm == "euclidean", f"born norm: lsqr minimises the plain coefficient norm "
                                                       f"(euclidean), got {self.norm!r}"),
                (self.entries == "farfield" or (not lsqr and not grid.cartesian),
                 "born entries: 'measure' applies to the polar tikhonov reconstruction only"),
                (grid.cartesian or grid.n_obs == grid.n_inc == grid.polar_nt,
                 f"born grid: a polar target needs n_obs = n_inc = polar_nt, got {grid.n_obs}, {grid.n_inc}, "
                 f"{grid.polar_nt}"),
            ]
        bad = [message for ok, message in checks if not ok]
        if bad:
            raise ConfigError(bad[0])

    def to_record(self) -> dict:
        """Plain JSON values (module docstring)."""
        return {"version": DEFINITION_RECORD_VERSION, "method": self.method, "parameter": self.parameter,
                "norm": self.norm, "entries": self.entries, "grid": self.grid.to_record()}

    @classmethod
    def from_record(cls, record, where: str = "born") -> "BornDefinition":
        """Parse `to_record`'s output; DataError naming `where` (and the field) on bad input."""
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a mapping, got {type(record).__name__}")
        if record.get("version") != DEFINITION_RECORD_VERSION:
            raise DataError(f"{where}: version {record.get('version')!r} is not supported (this bcrdist reads "
                            f"{DEFINITION_RECORD_VERSION})")
        missing = [key for key in ("method", "parameter", "grid") if key not in record]
        if missing:
            raise DataError(f"{where}: lacks {', '.join(missing)}")
        grid = GridInfo.from_record(record["grid"], f"{where}: grid")
        parameter = record["parameter"]
        if isinstance(parameter, bool) or not isinstance(parameter, (int, float)):
            raise DataError(f"{where}: parameter must be a number, got {parameter!r}")
        try:
            return cls(grid=grid, method=record["method"], parameter=parameter, norm=record.get("norm"),
                       entries=record.get("entries", "farfield"))
        except ConfigError as exc:
            raise DataError(f"{where}: {exc}") from None


class BornEstimator:
    """The reconstruction a `BornDefinition` defines: η = scale · (the Tikhonov estimate at λ = `lam` of
    `inversion`, bcrdist's Born operator: `CartesianBornInversion` or the polar `BornInversion`); scale 1 for
    tikhonov, 1/r for lsqr.

    Cartesian: by the exact block solve `solve` (`born_lsqr.CartesianBlockSolve`: every eigenpair at λ > 0),
    whose `block_matrices` the torch layer applies. Polar: scale · inversion.predict(F, λ), F conjugated first
    when the grid's sign is +1 (the polar inversion is written in sign −1).
    """

    def __init__(self, definition: BornDefinition, inversion: TikhonovInversion, lam: float, scale: float = 1.0):
        self.definition, self.inversion, self.lam, self.scale = definition, inversion, float(lam), float(scale)
        self.conjugate = not definition.grid.cartesian and definition.grid.farfield_sign == 1
        self.solve = CartesianBlockSolve(inversion, self.lam, self.scale) if definition.grid.cartesian else None

    @property
    def data_shape(self) -> tuple[int, int]:
        return self.inversion.data_shape

    def predict(self, F: np.ndarray) -> np.ndarray:
        """η (B, H, W) float64 for far fields F (B, n_obs, n_inc) complex [obs, src] in the grid's convention."""
        if self.solve is not None:
            return self.solve.predict(F)
        F = np.asarray(F)
        return self.scale * self.inversion.predict(np.conj(F) if self.conjugate else F, self.lam)

    def reconstruction_matrix(self, chunk: int = 256) -> np.ndarray:
        """The estimate as one dense real matrix M (H·W, 2·n_obs·n_inc) float64,
            predict(F)[b].ravel() = M @ concat(Re F[b].ravel(), Im F[b].ravel()),
        from the estimates of the unit far fields, `chunk` at a time (cost: 2·n_obs·n_inc estimates)."""
        return linear_map_matrix(self.predict, self.data_shape, chunk)


def decomposition(grid: GridInfo, norm: str, entries: str = "farfield") -> TikhonovInversion:
    """The block decomposition of bcrdist's Born operator on `grid` for `norm` (and `entries`, polar): the part of
    an estimator that does not depend on λ. The last one is kept, so that choosing λ (`bcrdist.train.born_fit`)
    and building the estimator or the torch layer of the chosen definition decompose once (at 100² pixels: 8 s,
    0.5 GB at the peak, 0.26 GB kept); treat it as read-only."""
    return _last_decomposition(grid, norm, entries)


@functools.lru_cache(maxsize=1)
def _last_decomposition(grid: GridInfo, norm: str, entries: str) -> TikhonovInversion:
    if grid.cartesian:
        return CartesianBornInversion(grid, norm=norm)
    return BornInversion(grid.k, grid.n_obs, grid.polar_nr, grid.polar_radius, entries=entries, norm=norm)


def make_inversion(definition: BornDefinition) -> BornEstimator:
    """The `BornEstimator` of `definition` (set-up: `decomposition`, reused when the last one fits)."""
    grid = definition.grid
    inversion = decomposition(grid, definition.norm, definition.entries)
    if definition.method == "lsqr":
        lsqr = DampedLsqrInversion(grid, definition.parameter, inversion)
        return BornEstimator(definition, inversion, lsqr.lam, lsqr.scale)
    return BornEstimator(definition, inversion, definition.parameter)
