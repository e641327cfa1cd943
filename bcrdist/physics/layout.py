"""The data layouts and their grids: Fan's `measure` → polar `coe`, and the PyTorch port's far field → Cartesian
`image`; what a data set must record about its grid (`GridInfo`).

Angles. Incident directions d_s = (cos θ_s, sin θ_s) and observation directions x̂_o on one of two grids:
    periodic  θ_j = 2πj/Na,               j = 0 … Na − 1   (Fan's, the generator's default)
    endpoint  θ_j = −π + 2πj/(Na − 1),    j = 0 … Na − 1   (the port's: θ_0 = −π and θ_{Na−1} = π are the same
                                                            direction, so the grid is not periodic)
The full far field is stored F[obs, src] (observation index first).

Fan's layout. BCR-Net reads F by centre angle m and half-offset h, receiver = m + h, source = m − h; on the
periodic grid the even offsets are exact lattice points:
    measure[i, j] = F[(i + j) mod Na, (i − j) mod Na],   i = 0 … Na − 1,   j = 0 … Na/2 − 1 (h ∈ [0, π)).
Rotating the scatterer by 2π/Na shifts both indices of F by one, hence the rows of `measure` by one. The target
`coe` is η on the polar grid θ_j = 2πj/Nt, ρ_i = (i + ½)R/Nr.

The far-field layout. `farfield` (Na_obs, Na_inc) complex F[obs, src] and `image` (n, n) real,
image[i, j] = η(x_i, y_j) ("xy"; "yx" is the transpose) on a square of side L centred at 0, at either
    centres  x_i = −L/2 + (i + ½)L/n   (the generator's: L = box, the solver's cells when n = solver n)
    nodes    x_i = −L/2 + iL/(n − 1)    (the port's 100×100 on [−1, 1]²: L = 2, both edges included)
The port stores each as (M, N), sample j = column j reshaped (√M, √M) row-major (`samples_from_columns`).

Sign. Our far field is e^{−iωt}: u_∞(x̂; d) = γk²∫e^{−ik x̂·y} η u dy, γ = e^{iπ/4}/√(8πk) (farfield_sign −1). The
port's Born kernel is e^{+iκ(x̂−d)·y}, the complex conjugate (e^{+iωt}, farfield_sign +1); F with sign +1 is
conj(F) in ours. A data set records which (or None: unknown, to be detected, `bcrdist.physics.born`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from bcrdist.errors import DataError

ANGLE_GRIDS = ("periodic", "endpoint")
TARGETS = ("polar", "cartesian")
IMAGE_POINTS = ("centres", "nodes")
IMAGE_INDEX = ("xy", "yx")
SIGNS = (-1, 1)
GRID_RECORD_VERSION = 1


def measure_from_far_field(farfield: np.ndarray) -> np.ndarray:
    """`measure` (..., Na, Na/2) from the full far field F (..., Na, Na) indexed [obs, src]; same dtype."""
    na = farfield.shape[-1]
    if farfield.shape[-2] != na or na % 2:
        raise ValueError(f"measure_from_far_field: expected (..., Na, Na) with even Na, got {farfield.shape}")
    i = np.arange(na)[:, None]
    j = np.arange(na // 2)[None, :]
    return farfield[..., (i + j) % na, (i - j) % na]


def polar_grid(nt: int, nr: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Polar target grid: angles θ_j = 2πj/nt (nt,) and radii ρ_i = (i + ½)·radius/nr (nr,)."""
    return 2 * np.pi * np.arange(nt) / nt, (np.arange(nr) + 0.5) * (radius / nr)


def angle_grid(kind: str, count: int) -> np.ndarray:
    """The directions θ_j (count,) of a `periodic` or `endpoint` grid (module docstring)."""
    if kind == "periodic" and count >= 1:
        return 2 * np.pi * np.arange(count) / count
    if kind == "endpoint" and count >= 2:
        return -np.pi + 2 * np.pi * np.arange(count) / (count - 1)
    raise ValueError(f"angle_grid: expected periodic (count ≥ 1) or endpoint (count ≥ 2), got {kind!r}, {count}")


def distinct_angles(kind: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(distinct directions θ (m,), index (count,)) with angle_grid(kind, count)[j] the direction θ[index[j]].

    On the endpoint grid the last direction (π) is the first (−π): a solver computes m = count − 1 directions and
    the duplicate is copied, so the stored far field has exactly equal first and last rows/columns."""
    if kind == "endpoint":
        return angle_grid(kind, count)[:-1], np.r_[np.arange(count - 1), 0]
    return angle_grid(kind, count), np.arange(count)


def image_coordinates(size: int, extent: float, points: str = "centres") -> np.ndarray:
    """Pixel coordinates (size,) on [−extent/2, extent/2]: cell `centres` or `nodes` (module docstring)."""
    if points == "centres" and size >= 1:
        return -0.5 * extent + (np.arange(size) + 0.5) * (extent / size)
    if points == "nodes" and size >= 2:
        return -0.5 * extent + np.arange(size) * (extent / (size - 1))
    raise ValueError(f"image_coordinates: expected centres (size ≥ 1) or nodes (size ≥ 2), got {points!r}, {size}")


def pixel_spacing(size: int, extent: float, points: str = "centres") -> float:
    """h, the distance of neighbouring pixels; h² is the quadrature weight of a pixel."""
    return extent / size if points == "centres" else extent / (size - 1)


def samples_from_columns(columns: np.ndarray) -> np.ndarray:
    """The port's stored layout (M, N), sample j = column j, → (N, √M, √M) (`.T.reshape(N, √M, √M)`)."""
    columns = np.asarray(columns)
    side = math.isqrt(columns.shape[0]) if columns.ndim == 2 else -1
    if side < 0 or side * side != columns.shape[0]:
        raise ValueError(f"samples_from_columns: expected (M, N) with M a perfect square, got {columns.shape}")
    return columns.T.reshape(columns.shape[1], side, side)


def columns_from_samples(samples: np.ndarray) -> np.ndarray:
    """Inverse of `samples_from_columns`: (N, s, s) → (s², N)."""
    samples = np.asarray(samples)
    if samples.ndim != 3 or samples.shape[1] != samples.shape[2]:
        raise ValueError(f"columns_from_samples: expected (N, s, s), got {samples.shape}")
    return samples.reshape(len(samples), -1).T


@dataclasses.dataclass(frozen=True)
class GridInfo:
    """What a data set must record about its grid so that its far field and target can be interpreted.

    k: wavenumber (absolute units). angles: `periodic` | `endpoint`, n_obs × n_inc directions of F[obs, src].
    target: `polar` (coe (polar_nt, polar_nr) on radius polar_radius) or `cartesian` (image (image_size,
    image_size) on a square of side image_extent centred at 0, pixels at `image_points`, indexed
    `image_index`). farfield_sign: −1 ours (e^{−ik x̂·y}), +1 the conjugate, None unknown.
    """

    k: float
    angles: str
    n_obs: int
    n_inc: int
    target: str
    farfield_sign: int | None = -1
    polar_nt: int = 0
    polar_nr: int = 0
    polar_radius: float = 0.0
    image_size: int = 0
    image_extent: float = 0.0
    image_points: str = "centres"
    image_index: str = "xy"

    def __post_init__(self):
        checks = [
            (math.isfinite(self.k) and self.k > 0, f"k must be finite and > 0, got {self.k}"),
            (self.angles in ANGLE_GRIDS, f"angles must be one of {ANGLE_GRIDS}, got {self.angles!r}"),
            (min(self.n_obs, self.n_inc) >= 2, f"n_obs, n_inc must be ≥ 2, got {self.n_obs}, {self.n_inc}"),
            (self.target in TARGETS, f"target must be one of {TARGETS}, got {self.target!r}"),
            (self.farfield_sign in (*SIGNS, None), f"farfield_sign must be -1, 1 or null, got {self.farfield_sign!r}"),
        ]
        if self.target == "polar":
            checks += [(self.angles == "periodic", "a polar target needs the periodic angle grid"),
                       (self.polar_nt >= 1 and self.polar_nr >= 1 and self.polar_radius > 0,
                        f"polar target needs polar_nt, polar_nr ≥ 1 and polar_radius > 0, got {self.polar_nt}, "
                        f"{self.polar_nr}, {self.polar_radius}")]
        else:
            checks += [(self.image_points in IMAGE_POINTS, f"image_points must be one of {IMAGE_POINTS}, got "
                                                           f"{self.image_points!r}"),
                       (self.image_index in IMAGE_INDEX, f"image_index must be one of {IMAGE_INDEX}, got "
                                                         f"{self.image_index!r}"),
                       (self.image_size >= 2 and math.isfinite(self.image_extent) and self.image_extent > 0,
                        f"a Cartesian target needs image_size ≥ 2 and image_extent > 0, got {self.image_size}, "
                        f"{self.image_extent}")]
        bad = [msg for ok, msg in checks if not ok]
        if bad:
            raise ValueError(f"GridInfo: {bad[0]}")

    @property
    def cartesian(self) -> bool:
        return self.target == "cartesian"

    @property
    def periodic(self) -> bool:
        return self.angles == "periodic"

    def obs_angles(self) -> np.ndarray:
        return angle_grid(self.angles, self.n_obs)

    def inc_angles(self) -> np.ndarray:
        return angle_grid(self.angles, self.n_inc)

    def target_shape(self) -> tuple[int, int]:
        """(polar_nt, polar_nr) or (image_size, image_size)."""
        return (self.polar_nt, self.polar_nr) if self.target == "polar" else (self.image_size,) * 2

    def image_axis(self) -> np.ndarray:
        """Coordinates (image_size,) of the Cartesian pixels along either axis."""
        return image_coordinates(self.image_size, self.image_extent, self.image_points)

    def pixel_positions(self) -> np.ndarray:
        """(image_size², 2) positions y of the pixels, row-major over image[i, j] (honouring image_index)."""
        x = self.image_axis()
        a, b = np.meshgrid(x, x, indexing="ij")
        first, second = (a, b) if self.image_index == "xy" else (b, a)
        return np.stack([first.ravel(), second.ravel()], axis=1)

    def pixel_spacing(self) -> float:
        return pixel_spacing(self.image_size, self.image_extent, self.image_points)

    def with_sign(self, sign: int | None) -> "GridInfo":
        return dataclasses.replace(self, farfield_sign=sign)

    def to_record(self) -> dict:
        """The manifest's `grid` record (JSON): the fields above, a format version and the conventions in words."""
        out = {"version": GRID_RECORD_VERSION, **dataclasses.asdict(self)}
        if self.target == "polar":
            for key in ("image_size", "image_extent", "image_points", "image_index"):
                del out[key]
        else:
            for key in ("polar_nt", "polar_nr", "polar_radius"):
                del out[key]
        out["conventions"] = self.conventions()
        return out

    def conventions(self) -> str:
        angles = ("theta_j = 2*pi*j/Na" if self.periodic else "theta_j = -pi + 2*pi*j/(Na - 1) (first = last)")
        sign = {-1: "u_inf = gamma k^2 int exp(-i k xhat.y) eta u dy (time exp(-i omega t))",
                1: "the complex conjugate of exp(-i k xhat.y) (time exp(+i omega t))", None: "unknown"}
        text = f"farfield[obs, inc] = u_inf(theta_obs; theta_inc), {angles}; sign: {sign[self.farfield_sign]}; "
        if self.target == "polar":
            return text + "coe[j, i] = eta(rho_i cos theta_j, rho_i sin theta_j), rho_i = (i + 1/2) R / Nr"
        where = "cell centres" if self.image_points == "centres" else "nodes (both edges)"
        index = "image[i, j] = eta(x_i, y_j)" if self.image_index == "xy" else "image[i, j] = eta(x_j, y_i)"
        return text + f"{index} at the {where} of [-L/2, L/2]^2, L = {self.image_extent:g}"

    @classmethod
    def from_record(cls, record, where: str = "grid") -> "GridInfo":
        """Parse a `grid` record (`to_record`); DataError naming `where` and the field on bad input."""
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a mapping, got {type(record).__name__}")
        if record.get("version") != GRID_RECORD_VERSION:
            raise DataError(f"{where}: version {record.get('version')!r} is not supported (this bcrdist reads "
                            f"{GRID_RECORD_VERSION})")
        names = {f.name for f in dataclasses.fields(cls)}
        fields = {key: value for key, value in record.items() if key in names}
        missing = sorted({"k", "angles", "n_obs", "n_inc", "target"} - set(fields))
        if missing:
            raise DataError(f"{where}: lacks {', '.join(missing)}")
        try:
            return cls(**fields)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{where}: {str(exc).removeprefix('GridInfo: ')}") from None


def grid_info_from_config(cfg) -> GridInfo:
    """The grid of a data set generated with `cfg` (a `GenerationConfig`): polar for layout `fan`, Cartesian on
    the solver's box (`image_points`, image_size or n pixels) for layout `farfield`; sign −1 (ours)."""
    common = {"k": cfg.k, "angles": cfg.angles, "n_obs": cfg.Na, "n_inc": cfg.Na, "farfield_sign": -1}
    if cfg.layout == "fan":
        return GridInfo(target="polar", polar_nt=cfg.Na, polar_nr=cfg.Nr, polar_radius=cfg.polar_radius * cfg.box,
                        **common)
    return GridInfo(target="cartesian", image_size=cfg.image_size or cfg.n, image_extent=cfg.box,
                    image_points=cfg.image_points, image_index="xy", **common)
