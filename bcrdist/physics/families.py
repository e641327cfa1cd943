"""The scatterer families of the Desai–Ma–Lähivaara–Monk study (arXiv 2503.01596), next to those of
`bcrdist.physics.scatterers`: non-overlapping discs (its training family), randomly rotated squares, U-shapes
and rings/bullseyes (its out-of-distribution families). All are piecewise constant, built from the primitives
of `Scatterer` (discs as ellipses with equal semi-axes, squares and U-shapes as polygons, a bullseye as
concentric discs whose signed values add up to its bands), and placed by rejection like `sample_shapes`:
a candidate whose circumscribed disk comes closer than `gap` to another one's is redrawn, at most 50 tries
per shape, so a crowded draw may hold fewer shapes. Sizes and the support radius are absolute lengths here.
"""

from __future__ import annotations

import math
import numpy as np

from bcrdist.physics.scatterers import BASE_COLUMNS, KIND_ELLIPSE, KIND_POLYGON, Scatterer, placed

SQUARE_VERTICES, U_VERTICES = 4, 8


def _polygon_row(value: float, cx: float, cy: float, vx: np.ndarray, vy: np.ndarray, angle: float) -> np.ndarray:
    """A polygon primitive: vertices (vx, vy) relative to (cx, cy), rotated by `angle` about it."""
    c, s = math.cos(angle), math.sin(angle)
    nv = len(vx)
    row = np.zeros(BASE_COLUMNS + 2 * nv)
    row[:5] = KIND_POLYGON, value, cx, cy, nv
    row[BASE_COLUMNS::2] = cx + c * vx - s * vy
    row[BASE_COLUMNS + 1::2] = cy + s * vx + c * vy
    return row


def _table(family: str, rows: list[np.ndarray], columns: int, support_radius: float, clip: bool = False) -> Scatterer:
    table = np.zeros((len(rows), columns))
    for i, row in enumerate(rows):
        table[i, :len(row)] = row
    return Scatterer(family, table, support_radius, clip=clip, smooth=False)


def sample_discs(rng: np.random.Generator, *, count: tuple[int, int], contrast: tuple[float, float],
                 radius: tuple[float, float], gap: float, support_radius: float, placement: str = "disk") -> Scatterer:
    """Up to `count` non-overlapping discs, radius and η drawn per disc (the study's training family), inside
    the support disk of radius R_s (`placement` disk) or the square [−R_s, R_s]² (`square`, the study's)."""
    def disc(cx, cy, r):
        return [np.array([KIND_ELLIPSE, rng.uniform(*contrast), cx, cy, r, r, 0.0])]
    rows = placed(rng, count, radius, gap, support_radius, disc, placement)
    # the square lies inside the disk of radius √2·R_s: η's cut there never touches a disc in a corner
    cut = math.sqrt(2.0) * support_radius if placement == "square" else support_radius
    return _table("discs", rows, BASE_COLUMNS, cut)


def sample_squares(rng: np.random.Generator, *, count: tuple[int, int], contrast: tuple[float, float],
                   side: tuple[float, float], gap: float, support_radius: float) -> Scatterer:
    """Up to `count` non-overlapping squares, side, η and rotation drawn per square (circumradius side/√2)."""
    corners = 0.5 * np.array([[-1.0, 1.0, 1.0, -1.0], [-1.0, -1.0, 1.0, 1.0]])

    def square(cx, cy, circumradius):
        s = math.sqrt(2.0) * circumradius
        return [_polygon_row(rng.uniform(*contrast), cx, cy, s * corners[0], s * corners[1],
                             rng.uniform(0, 0.5 * math.pi))]
    circumradii = (side[0] / math.sqrt(2.0), side[1] / math.sqrt(2.0))
    rows = placed(rng, count, circumradii, gap, support_radius, square)
    return _table("squares", rows, BASE_COLUMNS + 2 * SQUARE_VERTICES, support_radius)


def u_polygon(side: float, notch_width: float, notch_depth: float) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (8,), (8,) of a U: the square [−s/2, s/2]² less the rectangle of width notch_width·s and depth
    notch_depth·s cut from the middle of its top edge; counter-clockwise, area s²·(1 − notch_width·notch_depth)."""
    h, w, top = 0.5 * side, 0.5 * notch_width * side, 0.5 * side - notch_depth * side
    vx = np.array([-h, h, h, w, w, -w, -w, -h])
    vy = np.array([-h, -h, h, h, top, top, h, h])
    return vx, vy


def sample_u_shapes(rng: np.random.Generator, *, count: tuple[int, int], contrast: tuple[float, float],
                    side: tuple[float, float], notch_width: tuple[float, float], notch_depth: tuple[float, float],
                    gap: float, support_radius: float) -> Scatterer:
    """Up to `count` non-overlapping U-shapes (one simple non-convex 8-gon each, `u_polygon`): side, notch
    width and depth (fractions of the side), η and rotation drawn per shape."""
    def u_shape(cx, cy, circumradius):
        vx, vy = u_polygon(math.sqrt(2.0) * circumradius, rng.uniform(*notch_width), rng.uniform(*notch_depth))
        return [_polygon_row(rng.uniform(*contrast), cx, cy, vx, vy, rng.uniform(0, 2 * math.pi))]
    circumradii = (side[0] / math.sqrt(2.0), side[1] / math.sqrt(2.0))
    rows = placed(rng, count, circumradii, gap, support_radius, u_shape)
    return _table("u_shapes", rows, BASE_COLUMNS + 2 * U_VERTICES, support_radius)


def sample_rings(rng: np.random.Generator, *, count: tuple[int, int], contrast: tuple[float, float],
                 radius: tuple[float, float], bands: tuple[int, int], gap: float, support_radius: float) -> Scatterer:
    """Up to `count` non-overlapping bullseyes of outer radius R (drawn) and B bands (drawn) of equal width
    R/B: band j (from the outside, j = 0 … B − 1) has η = η_j (drawn) for even j and 0 for odd j, so B = 2 is
    a ring, B = 3 a ring around a disc. A bullseye is B concentric discs of radii (B − j)·R/B whose values
    v_j − v_{j−1} add up to band j's value v_j (clipped at 0 against rounding)."""
    def bullseye(cx, cy, r):
        nb = int(rng.integers(bands[0], bands[1] + 1))
        values = [rng.uniform(*contrast) if j % 2 == 0 else 0.0 for j in range(nb)]
        previous = [0.0] + values[:-1]
        return [np.array([KIND_ELLIPSE, v - p, cx, cy, (nb - j) * r / nb, (nb - j) * r / nb, 0.0])
                for j, (v, p) in enumerate(zip(values, previous))]
    rows = placed(rng, count, radius, gap, support_radius, bullseye)
    return _table("rings", rows, BASE_COLUMNS, support_radius, clip=True)
