"""Random scatterer families with an analytic description: η(x) ≥ 0 can be evaluated at any point.

A `Scatterer` is a table of primitives (one row each, see `Scatterer`) combined by addition, optionally
clipped at 0, and cut off outside the support disk |x| ≤ R_s. The same analytic function gives the Cartesian
raster the solver sees and the polar target, so the target is sampled exactly, never interpolated.

Families:
- "gaussian" (default, smooth): sums of Gaussian bumps a·exp(−|x − c|²/(2σ²)); each centre lies at least
  τσ inside the support disk, so the cut at R_s is a jump of at most a·exp(−τ²/2).
- "shapes" (piecewise constant): random non-overlapping ellipses and star-shaped polygons.
- "shepp_logan" (piecewise constant): a jittered, randomly rotated Shepp–Logan-like head phantom scaled to
  the support disk, clipped at 0.
- "discs", "squares", "u_shapes", "rings" (piecewise constant): the study families of
  `bcrdist.physics.families`.
An absorbing scatterer has the contrast η(x)·(1 + iα) (`Scatterer.absorption` = α, the loss tangent):
`__call__`, `raster` and `polar` give the real part η(x), `contrast_raster` the complex contrast.
Smooth families are rasterised by point values at the cell centres (what a spectrally accurate quadrature
needs); piecewise-constant ones by cell averages over s×s sub-cell points (area-fraction anti-aliasing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from bcrdist.physics.layout import polar_grid
from bcrdist.physics.solver import grid_coordinates

FAMILY_IDS = {"gaussian": 0, "shapes": 1, "shepp_logan": 2, "discs": 3, "squares": 4, "u_shapes": 5, "rings": 6}
KIND_GAUSSIAN, KIND_ELLIPSE, KIND_POLYGON = 1, 2, 3
BASE_COLUMNS = 7

# (value, semi-axis a, semi-axis b, centre x, centre y, angle in degrees) on [−1, 1]²: the modified
# Shepp–Logan phantom with the inner ellipse shrunk so that the shell is a few cells thick at n = 64.
_SHEPP_LOGAN = np.array([
    (1.0, 0.69, 0.92, 0.0, 0.0, 0.0),
    (-0.8, 0.6224, 0.8540, 0.0, -0.0184, 0.0),
    (-0.2, 0.11, 0.31, 0.22, 0.0, -18.0),
    (-0.2, 0.16, 0.41, -0.22, 0.0, 18.0),
    (0.1, 0.21, 0.25, 0.0, 0.35, 0.0),
    (0.1, 0.046, 0.046, 0.0, 0.1, 0.0),
    (0.1, 0.046, 0.046, 0.0, -0.1, 0.0),
    (0.1, 0.046, 0.023, -0.08, -0.605, 0.0),
    (0.1, 0.023, 0.023, 0.0, -0.606, 0.0),
    (0.1, 0.023, 0.046, 0.06, -0.605, 0.0),
])
SHEPP_LOGAN_PRIMITIVES = len(_SHEPP_LOGAN)


@dataclass(frozen=True)
class Scatterer:
    """η(x, y) = 1{x² + y² ≤ R_s²} · clip(Σ_rows primitive(x, y)), clip = max(·, 0) when `clip`.

    `primitives` (m, 7 + 2V) float64, one row per primitive: [kind, value, cx, cy, p0, p1, p2, x_0, y_0, …]:
      kind 1 Gaussian: value·exp(−|x − c|²/(2σ²)), p0 = σ;
      kind 2 ellipse: value inside the ellipse with semi-axes p0, p1 rotated by p2 (radians) about c;
      kind 3 polygon: value inside the polygon with p0 vertices (x_i, y_i) (absolute coordinates), c its
        centre of construction.
    Unused columns are 0. `smooth` selects point sampling for rasters (else cell averages). `absorption` α:
    the solver's contrast is η·(1 + iα) (Im η = α·Re η), see `contrast_raster`.
    """

    family: str
    primitives: np.ndarray
    support_radius: float
    clip: bool
    smooth: bool
    absorption: float = 0.0

    def __call__(self, x, y) -> np.ndarray:
        """η at the points (x, y) (broadcast together), float64."""
        x, y = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
        total = np.zeros(x.shape)
        for row in self.primitives:
            total += _evaluate(row, x, y)
        if self.clip:
            total = np.maximum(total, 0.0)
        return np.where(x * x + y * y <= self.support_radius ** 2, total, 0.0)

    def raster(self, n: int, box: float, supersample: int = 8) -> np.ndarray:
        """`eta` (n, n): η(x_i, y_j) at the cell centres (smooth), or the mean over supersample² points."""
        if self.smooth or supersample <= 1:
            x = grid_coordinates(n, box)
            return self(x[:, None], x[None, :])
        x = grid_coordinates(n * supersample, box)
        fine = self(x[:, None], x[None, :])
        return fine.reshape(n, supersample, n, supersample).mean(axis=(1, 3))

    def contrast_raster(self, n: int, box: float, supersample: int = 8) -> np.ndarray:
        """The solver's contrast (n, n): `raster` times (1 + iα), complex128 when α > 0, else float64."""
        eta = self.raster(n, box, supersample)
        return eta * complex(1.0, self.absorption) if self.absorption else eta

    def polar(self, nt: int, nr: int, radius: float) -> np.ndarray:
        """`coe` (nt, nr): η(ρ_i cos θ_j, ρ_i sin θ_j), θ_j = 2πj/nt, ρ_i = (i + ½)·radius/nr."""
        theta, rho = polar_grid(nt, nr, radius)
        return self(rho[None, :] * np.cos(theta)[:, None], rho[None, :] * np.sin(theta)[:, None])

    def rotated(self, angle: float) -> "Scatterer":
        """The scatterer rotated by `angle` (radians, counter-clockwise) about the origin."""
        c, s = math.cos(angle), math.sin(angle)
        rows = self.primitives.copy()
        rows[:, 2], rows[:, 3] = c * rows[:, 2] - s * rows[:, 3], s * rows[:, 2] + c * rows[:, 3]
        rows[rows[:, 0] == KIND_ELLIPSE, 6] += angle
        for i in np.flatnonzero(rows[:, 0] == KIND_POLYGON):
            xs = slice(BASE_COLUMNS, BASE_COLUMNS + 2 * int(rows[i, 4]), 2)
            ys = slice(BASE_COLUMNS + 1, BASE_COLUMNS + 2 * int(rows[i, 4]), 2)
            rows[i, xs], rows[i, ys] = c * rows[i, xs] - s * rows[i, ys], s * rows[i, xs] + c * rows[i, ys]
        return Scatterer(self.family, rows, self.support_radius, self.clip, self.smooth, self.absorption)

    def padded(self, max_primitives: int, columns: int) -> np.ndarray:
        """Primitive table zero-padded to (max_primitives, columns) float64 (kind 0 marks padding)."""
        m, w = self.primitives.shape
        if m > max_primitives or w > columns:
            raise ValueError(f"scatterer has {m}×{w} primitive entries, more than {max_primitives}×{columns}")
        out = np.zeros((max_primitives, columns))
        out[:m, :w] = self.primitives
        return out


def _evaluate(row: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    kind, value, cx, cy = int(row[0]), row[1], row[2], row[3]
    dx, dy = x - cx, y - cy
    if kind == KIND_GAUSSIAN:
        return value * np.exp(-(dx * dx + dy * dy) / (2.0 * row[4] ** 2))
    if kind == KIND_ELLIPSE:
        c, s = math.cos(row[6]), math.sin(row[6])
        u, v = (c * dx + s * dy) / row[4], (-s * dx + c * dy) / row[5]
        return np.where(u * u + v * v <= 1.0, value, 0.0)
    if kind == KIND_POLYGON:
        nv = int(row[4])
        vx, vy = row[BASE_COLUMNS:BASE_COLUMNS + 2 * nv:2], row[BASE_COLUMNS + 1:BASE_COLUMNS + 2 * nv:2]
        return np.where(_inside_polygon(vx, vy, x, y), value, 0.0)
    raise ValueError(f"unknown primitive kind {kind}")


def _inside_polygon(vx: np.ndarray, vy: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Even–odd rule: a horizontal ray from each point crosses the boundary an odd number of times."""
    inside = np.zeros(x.shape, dtype=bool)
    for i in range(len(vx)):
        x1, y1, x2, y2 = vx[i], vy[i], vx[i - 1], vy[i - 1]
        if y1 == y2:
            continue
        crosses = (y1 > y) != (y2 > y)
        inside ^= crosses & (x < x1 + (x2 - x1) * (y - y1) / (y2 - y1))
    return inside


def uniform_in_disk(rng: np.random.Generator, radius: float) -> tuple[float, float]:
    r = radius * math.sqrt(rng.random())
    phi = 2 * math.pi * rng.random()
    return r * math.cos(phi), r * math.sin(phi)


def uniform_in_square(rng: np.random.Generator, half_side: float) -> tuple[float, float]:
    """A point (x, y) uniform in [−half_side, half_side]²."""
    return rng.uniform(-half_side, half_side), rng.uniform(-half_side, half_side)


def placed(rng: np.random.Generator, count: tuple[int, int], circumradius: tuple[float, float], gap: float,
            support_radius: float, rows_at: Callable[[float, float, float], list[np.ndarray]],
            placement: str = "disk") -> list[np.ndarray]:
    """Rows of up to `count` shapes with circumradii drawn from `circumradius`, each `gap` away from the others
    and inside the support disk (`placement` disk: centre uniform in |c| ≤ R_s − r) or the square
    [−R_s, R_s]² (`square`: centre uniform in [−R_s + r, R_s − r]²); `rows_at(cx, cy, radius)` draws the rest of
    a shape and returns its rows."""
    centre_in = uniform_in_square if placement == "square" else uniform_in_disk
    rows: list[np.ndarray] = []
    disks: list[tuple[float, float, float]] = []
    wanted = int(rng.integers(count[0], count[1] + 1))
    for _ in range(50 * wanted):
        if len(disks) == wanted:
            break
        radius = rng.uniform(*circumradius)
        cx, cy = centre_in(rng, support_radius - radius)
        if any(math.hypot(cx - ox, cy - oy) < radius + orad + gap for ox, oy, orad in disks):
            continue
        rows.extend(rows_at(cx, cy, radius))
        disks.append((cx, cy, radius))
    return rows


def sample_gaussian(rng: np.random.Generator, *, count: tuple[int, int], amplitude: tuple[float, float],
                    width: tuple[float, float], tail_sigmas: float, support_radius: float) -> Scatterer:
    """Sum of `count` Gaussian bumps; widths σ and the support radius in absolute units."""
    rows = []
    for _ in range(int(rng.integers(count[0], count[1] + 1))):
        sigma = rng.uniform(*width)
        value = rng.uniform(*amplitude)
        cx, cy = uniform_in_disk(rng, support_radius - tail_sigmas * sigma)
        rows.append([KIND_GAUSSIAN, value, cx, cy, sigma, 0.0, 0.0])
    return Scatterer("gaussian", np.array(rows, dtype=np.float64).reshape(-1, BASE_COLUMNS),
                     support_radius, clip=False, smooth=True)


def sample_shapes(rng: np.random.Generator, *, count: tuple[int, int], contrast: tuple[float, float],
                  size: tuple[float, float], polygon_fraction: float, vertices: tuple[int, int], gap: float,
                  support_radius: float) -> Scatterer:
    """Up to `count` non-overlapping ellipses and star-shaped polygons (sizes = circumradii, absolute).

    Shapes are placed by rejection: a candidate whose circumscribed disk comes closer than `gap` to another
    one is redrawn, at most 50 tries per shape, so a crowded draw may hold fewer shapes.
    """
    columns = BASE_COLUMNS + 2 * vertices[1]

    def shape_at(cx: float, cy: float, radius: float) -> list[np.ndarray]:
        row = np.zeros(columns)
        row[1:4] = rng.uniform(*contrast), cx, cy
        if rng.random() < polygon_fraction:
            nv = int(rng.integers(vertices[0], vertices[1] + 1))
            # Jittered, sorted angles and radii in [0.6, 1]·radius keep the polygon simple (star-shaped).
            angles = 2 * math.pi * (np.arange(nv) + rng.uniform(-0.35, 0.35, nv)) / nv + rng.uniform(0, 2 * math.pi)
            radii = radius * rng.uniform(0.6, 1.0, nv)
            row[0], row[4] = KIND_POLYGON, nv
            row[BASE_COLUMNS:BASE_COLUMNS + 2 * nv:2] = cx + radii * np.cos(angles)
            row[BASE_COLUMNS + 1:BASE_COLUMNS + 2 * nv:2] = cy + radii * np.sin(angles)
        else:
            row[0] = KIND_ELLIPSE
            row[4:7] = radius, radius * rng.uniform(0.4, 1.0), rng.uniform(0, math.pi)
        return [row]

    rows = placed(rng, count, size, gap, support_radius, shape_at)
    return Scatterer("shapes", np.array(rows).reshape(-1, columns), support_radius, clip=False, smooth=False)


def sample_shepp_logan(rng: np.random.Generator, *, contrast: tuple[float, float], jitter: float,
                       support_radius: float) -> Scatterer:
    """Shepp–Logan-like phantom: semi-axes × (1 ± jitter), centres ± jitter/2, angles ± jitter·45°, a random
    rotation, the outer shell scaled to the support disk and given η = `contrast` (drawn)."""
    table = _SHEPP_LOGAN.copy()
    m = len(table)
    table[:, 1:3] *= 1 + jitter * rng.uniform(-1, 1, (m, 2))
    table[1:, 3:5] += 0.5 * jitter * rng.uniform(-1, 1, (m - 1, 2))
    table[:, 5] += 45.0 * jitter * rng.uniform(-1, 1, m)
    scale = support_radius / table[0, 1:3].max()
    value = rng.uniform(*contrast)
    rot = rng.uniform(0, 2 * math.pi)
    c, s = math.cos(rot), math.sin(rot)
    rows = np.zeros((m, BASE_COLUMNS))
    rows[:, 0] = KIND_ELLIPSE
    rows[:, 1] = value * table[:, 0]
    x0, y0 = scale * table[:, 3], scale * table[:, 4]
    rows[:, 2], rows[:, 3] = c * x0 - s * y0, s * x0 + c * y0
    rows[:, 4:6] = scale * table[:, 1:3]
    rows[:, 6] = np.deg2rad(table[:, 5]) + rot
    return Scatterer("shepp_logan", rows, support_radius, clip=True, smooth=False)
