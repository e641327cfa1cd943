"""One training sample from its index: random scatterer (seeded by (seed, index)) → far field → the arrays of
the configured layout (`bcrdist.physics.layout`).

Arrays per sample (`SampleMaker.arrays`; the data set adds the sample axis first), layout `fan`:
    measure        (Na, Na/2) float32   Re of F[(i + j) mod Na, (i − j) mod Na]
    measure_imag   (Na, Na/2) float32   Im of the same
    coe            (Na, Nr)   float32   η(ρ_i cos θ_j, ρ_i sin θ_j), θ_j = 2πj/Na, ρ_i = (i + ½)R/Nr (Re η)
    eta            (n, n)     float32   the raster the solver saw, eta[i, j] = η(x_i, y_j); complex64
                                        η·(1 + iα) when the config has an absorption α > 0
    farfield       (Na, Na)   complex64 F[obs, src] = u_∞(θ_obs; θ_src)
    family         ()         int32     the sample's family (`FAMILY_IDS`: 0 gaussian, 1 shapes, 2 shepp_logan,
                                        3 discs, 4 squares, 5 u_shapes, 6 rings; a mixture's drawn member)
    num_primitives ()         int32     rows used in `primitives`
    primitives     (P, C)     float64   the scatterer's primitive table, zero-padded (see scatterers.Scatterer)
    iterations     ()         int32     most GMRES iterations over the solved right-hand sides
    residual       ()         float32   largest relative residual ‖η u_in − (I + K)w‖/‖η u_in‖ over the
                                        incident directions (computed explicitly after the solve)
    absorption     ()         float32   the sample's loss tangent α (only when the config has an α > 0)
layout `farfield` (the PyTorch port's): `farfield` on the configured angle grid (periodic or endpoint),
    image          (m, m)     float32   η at the cell centres of [−box/2, box/2]², m = image_size or n
                                        (rasterised like `eta`; equal to its real part when m = n), or,
                                        with image_points: nodes, η's point values at the nodes
                                        x_i = −box/2 + i·box/(m − 1) (the study's target)
and `eta`, `family`, `num_primitives`, `primitives`, `iterations`, `residual` (`absorption`) as above (no
measure, no coe). On the endpoint grid the solver computes the Na − 1 distinct directions; the last (π) is a
copy of the first (−π).

Random streams, all seeded by (seed, index): the scatterer's `default_rng([seed, index])` (as before mixtures
and absorption existed, so those data are unchanged), a mixture's family draw `default_rng([seed, index, 1])`
and the absorption draw `default_rng([seed, index, 2])`. A mixture's sample of family f is therefore the
sample a data set of family f alone has at that (seed, index).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bcrdist.physics.families import (SQUARE_VERTICES, U_VERTICES, sample_discs, sample_rings, sample_squares,
                                      sample_u_shapes)
from bcrdist.physics.generation_config import FamilyConfig, GenerationConfig
from bcrdist.physics.layout import distinct_angles, grid_info_from_config, measure_from_far_field
from bcrdist.physics.scatterers import (BASE_COLUMNS, FAMILY_IDS, SHEPP_LOGAN_PRIMITIVES, Scatterer,
                                        sample_gaussian, sample_shapes, sample_shepp_logan)
from bcrdist.physics.solver import ConvergenceError, ScatteringSolver
from bcrdist.physics.solver_torch import TorchScatteringSolver


def table_size(fam: FamilyConfig, name: str) -> tuple[int, int]:
    """(rows, columns) of the primitive table that holds any scatterer of family `name`."""
    vertices = {"shapes": 2 * fam.shapes.vertices[1], "squares": 2 * SQUARE_VERTICES, "u_shapes": 2 * U_VERTICES}
    rows = {"gaussian": fam.gaussian.count[1], "shapes": fam.shapes.count[1], "shepp_logan": SHEPP_LOGAN_PRIMITIVES,
            "discs": fam.discs.count[1], "squares": fam.squares.count[1], "u_shapes": fam.u_shapes.count[1],
            "rings": fam.rings.count[1] * fam.rings.bands[1]}
    return rows[name], BASE_COLUMNS + vertices.get(name, 0)


def sample_family(rng: np.random.Generator, name: str, fam: FamilyConfig, box: float) -> Scatterer:
    """A scatterer of family `name` drawn with `rng`, the config's fractions of the box made absolute."""
    support = fam.support_radius * box
    if name == "gaussian":
        g = fam.gaussian
        return sample_gaussian(rng, count=g.count, amplitude=g.amplitude, width=(g.width[0] * box, g.width[1] * box),
                               tail_sigmas=g.tail_sigmas, support_radius=support)
    if name == "shapes":
        p = fam.shapes
        return sample_shapes(rng, count=p.count, contrast=p.contrast, size=(p.size[0] * box, p.size[1] * box),
                             polygon_fraction=p.polygon_fraction, vertices=p.vertices, gap=p.gap * box,
                             support_radius=support)
    if name == "shepp_logan":
        p = fam.shepp_logan
        return sample_shepp_logan(rng, contrast=p.contrast, jitter=p.jitter, support_radius=support)
    if name == "discs":
        p = fam.discs
        return sample_discs(rng, count=p.count, contrast=p.contrast, radius=(p.radius[0] * box, p.radius[1] * box),
                            gap=p.gap * box, support_radius=support, placement=p.placement)
    if name == "squares":
        p = fam.squares
        return sample_squares(rng, count=p.count, contrast=p.contrast, side=(p.side[0] * box, p.side[1] * box),
                              gap=p.gap * box, support_radius=support)
    if name == "u_shapes":
        p = fam.u_shapes
        return sample_u_shapes(rng, count=p.count, contrast=p.contrast, side=(p.side[0] * box, p.side[1] * box),
                               notch_width=p.notch_width, notch_depth=p.notch_depth, gap=p.gap * box,
                               support_radius=support)
    if name == "rings":
        p = fam.rings
        return sample_rings(rng, count=p.count, contrast=p.contrast, radius=(p.radius[0] * box, p.radius[1] * box),
                            bands=p.bands, gap=p.gap * box, support_radius=support)
    raise ValueError(f"unknown scatterer family {name!r}")


class SampleMaker:
    """Builds the arrays of one sample from its index (or from a given scatterer)."""

    def __init__(self, cfg: GenerationConfig, device: str = "cpu"):
        """`device`: where a `solver.backend: torch` solver runs (a torch device name); the numpy backend runs
        on the CPU only."""
        self.cfg = cfg
        self.grid = grid_info_from_config(cfg)
        angles, self.angle_index = distinct_angles(cfg.angles, cfg.Na)
        self.copies_directions = len(angles) != cfg.Na
        s = cfg.solver
        options = dict(box=cfg.box, tol=s.tol, restart=s.restart, max_iterations=s.max_iterations)
        if s.backend == "torch":
            self.solver = TorchScatteringSolver(cfg.n, cfg.k, angles, angles, device=device,
                                                precision=s.precision, **options)
        else:
            self.solver = ScatteringSolver(cfg.n, cfg.k, angles, angles, **options)
        fam = cfg.family
        self.members = fam.members()
        sizes = [table_size(fam, name) for name in self.members]
        self.max_primitives = max(rows for rows, _ in sizes)
        self.columns = max(columns for _, columns in sizes)
        weights = np.array([fam.mixture[name] for name in self.members] if fam.name == "mixture" else [1.0])
        self.family_cdf = np.cumsum(weights) / weights.sum()

    def family(self, index: int) -> str:
        """The family of sample `index`: a mixture's member drawn by weight from (seed, index)."""
        if len(self.members) == 1:
            return self.members[0]
        u = np.random.default_rng([self.cfg.seed, index, 1]).random()
        return self.members[min(int(np.searchsorted(self.family_cdf, u, side="right")), len(self.members) - 1)]

    def absorption(self, index: int) -> float:
        """The loss tangent α of sample `index`, drawn uniformly from `family.absorption` by (seed, index)."""
        levels = self.cfg.family.absorption
        return float(levels[int(np.random.default_rng([self.cfg.seed, index, 2]).integers(len(levels)))])

    def scatterer(self, index: int) -> Scatterer:
        """The random scatterer of sample `index` (depends on (seed, index) only), with its absorption."""
        rng = np.random.default_rng([self.cfg.seed, index])
        drawn = sample_family(rng, self.family(index), self.cfg.family, self.cfg.box)
        return dataclasses.replace(drawn, absorption=self.absorption(index))

    def arrays(self, scatterer: Scatterer, solved: tuple | None = None) -> dict[str, np.ndarray]:
        """The per-sample arrays (no sample axis) listed in the module docstring. `solved`: (η raster (n, n),
        far field (n_inc, n_rec), GMRES iterations, largest relative residual) when the solve was done already
        (`many`); by default it is done here."""
        cfg = self.cfg
        if solved is None:
            eta = scatterer.contrast_raster(cfg.n, cfg.box, cfg.family.supersample)
            solved = (eta, self.solver.far_field(eta), self.solver.last_iterations.max(initial=0),
                      self.solver.last_residuals.max(initial=0.0))
        eta, farfield, iterations, residual = solved
        farfield = farfield.T
        if self.copies_directions:
            farfield = farfield[np.ix_(self.angle_index, self.angle_index)]
        described = {
            "family": np.int32(FAMILY_IDS[scatterer.family]),
            "num_primitives": np.int32(len(scatterer.primitives)),
            "primitives": scatterer.padded(self.max_primitives, self.columns),
            "iterations": np.int32(iterations),
            "residual": np.float32(residual),
        }
        if cfg.absorbing:
            described["absorption"] = np.float32(scatterer.absorption)
        stored_eta = eta.astype(np.complex64 if cfg.absorbing else np.float32)
        if cfg.layout == "farfield":
            size = self.grid.image_size
            if cfg.image_points == "nodes":     # the study's target: η's point values at the nodes
                x = self.grid.image_axis()
                image = scatterer(x[:, None], x[None, :])
            else:
                image = eta.real if size == cfg.n else scatterer.raster(size, cfg.box, cfg.family.supersample)
            return {"farfield": farfield.astype(np.complex64), "image": image.astype(np.float32),
                    "eta": stored_eta, **described}
        measure = measure_from_far_field(farfield)
        return {
            "measure": measure.real.astype(np.float32),
            "measure_imag": measure.imag.astype(np.float32),
            "coe": scatterer.polar(cfg.Na, cfg.Nr, cfg.polar_radius * cfg.box).astype(np.float32),
            "eta": stored_eta,
            "farfield": farfield.astype(np.complex64),
            **described,
        }

    def __call__(self, index: int) -> dict[str, np.ndarray]:
        try:
            return self.arrays(self.scatterer(index))
        except ConvergenceError as exc:
            raise ConvergenceError(f"sample {index}: {exc}; raise solver.max_iterations or lower the contrast") \
                from None

    def many(self, first: int, count: int) -> list[dict[str, np.ndarray]]:
        """Samples first … first + count − 1; with the torch backend solved in one GMRES batch (whose rounding
        depends on its members: callers pass fixed runs of indices, `bcrdist.data.generate` those of
        `solver.batch` samples from a shard's start)."""
        if not isinstance(self.solver, TorchScatteringSolver):
            return [self(index) for index in range(first, first + count)]
        cfg = self.cfg
        scatterers = [self.scatterer(index) for index in range(first, first + count)]
        etas = [s.contrast_raster(cfg.n, cfg.box, cfg.family.supersample) for s in scatterers]
        try:
            far, iterations, residuals = self.solver.solve(np.stack(etas))
        except ConvergenceError as exc:
            which = f"sample {first}" if count == 1 else f"samples {first}–{first + count - 1}"
            raise ConvergenceError(f"{which}: {exc}; raise solver.max_iterations or lower the contrast") from None
        return [self.arrays(s, (eta, f, it, res.max(initial=0.0)))
                for s, eta, f, it, res in zip(scatterers, etas, far, iterations, residuals)]
