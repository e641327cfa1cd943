"""One training sample from its index: random scatterer (seeded by (seed, index)) → far field → the arrays of
the configured layout (`bcrdist.physics.layout`).

Arrays per sample (`SampleMaker.arrays`; the data set adds the sample axis first), layout `fan`:
    measure        (Na, Na/2) float32   Re of F[(i + j) mod Na, (i − j) mod Na]
    measure_imag   (Na, Na/2) float32   Im of the same
    coe            (Na, Nr)   float32   η(ρ_i cos θ_j, ρ_i sin θ_j), θ_j = 2πj/Na, ρ_i = (i + ½)R/Nr
    eta            (n, n)     float32   the raster the solver saw, eta[i, j] = η(x_i, y_j)
    farfield       (Na, Na)   complex64 F[obs, src] = u_∞(θ_obs; θ_src)
    family         ()         int32     0 gaussian, 1 shapes, 2 shepp_logan
    num_primitives ()         int32     rows used in `primitives`
    primitives     (P, C)     float64   the scatterer's primitive table, zero-padded (see scatterers.Scatterer)
    iterations     ()         int32     most GMRES iterations over the solved right-hand sides
layout `farfield` (the PyTorch port's): `farfield` on the configured angle grid (periodic or endpoint),
    image          (m, m)     float32   η at the cell centres of [−box/2, box/2]², m = image_size or n
                                        (rasterised like `eta`; equal to it when m = n)
and `eta`, `family`, `num_primitives`, `primitives`, `iterations` as above (no measure, no coe).
On the endpoint grid the solver computes the Na − 1 distinct directions; the last (π) is a copy of the first (−π).
"""

from __future__ import annotations

import numpy as np

from bcrdist.physics.generation_config import GenerationConfig
from bcrdist.physics.layout import distinct_angles, grid_info_from_config, measure_from_far_field
from bcrdist.physics.scatterers import (BASE_COLUMNS, FAMILY_IDS, SHEPP_LOGAN_PRIMITIVES, Scatterer,
                                        sample_gaussian, sample_shapes, sample_shepp_logan)
from bcrdist.physics.solver import ConvergenceError, ScatteringSolver


class SampleMaker:
    """Builds the arrays of one sample from its index (or from a given scatterer)."""

    def __init__(self, cfg: GenerationConfig):
        self.cfg = cfg
        self.grid = grid_info_from_config(cfg)
        angles, self.angle_index = distinct_angles(cfg.angles, cfg.Na)
        self.copies_directions = len(angles) != cfg.Na
        s = cfg.solver
        self.solver = ScatteringSolver(cfg.n, cfg.k, angles, angles, box=cfg.box, tol=s.tol, restart=s.restart,
                                       max_iterations=s.max_iterations)
        fam = cfg.family
        self.max_primitives = {"gaussian": fam.gaussian.count[1], "shapes": fam.shapes.count[1],
                               "shepp_logan": SHEPP_LOGAN_PRIMITIVES}[fam.name]
        self.columns = BASE_COLUMNS + (2 * fam.shapes.vertices[1] if fam.name == "shapes" else 0)

    def scatterer(self, index: int) -> Scatterer:
        """The random scatterer of sample `index` (depends on (seed, index) only)."""
        cfg, fam = self.cfg, self.cfg.family
        rng = np.random.default_rng([cfg.seed, index])
        support = fam.support_radius * cfg.box
        if fam.name == "gaussian":
            g = fam.gaussian
            return sample_gaussian(rng, count=g.count, amplitude=g.amplitude,
                                   width=(g.width[0] * cfg.box, g.width[1] * cfg.box), tail_sigmas=g.tail_sigmas,
                                   support_radius=support)
        if fam.name == "shapes":
            p = fam.shapes
            return sample_shapes(rng, count=p.count, contrast=p.contrast,
                                 size=(p.size[0] * cfg.box, p.size[1] * cfg.box), polygon_fraction=p.polygon_fraction,
                                 vertices=p.vertices, gap=p.gap * cfg.box, support_radius=support)
        p = fam.shepp_logan
        return sample_shepp_logan(rng, contrast=p.contrast, jitter=p.jitter, support_radius=support)

    def arrays(self, scatterer: Scatterer) -> dict[str, np.ndarray]:
        """The per-sample arrays (no sample axis) listed in the module docstring."""
        cfg = self.cfg
        eta = scatterer.raster(cfg.n, cfg.box, cfg.family.supersample)
        farfield = self.solver.far_field(eta).T
        if self.copies_directions:
            farfield = farfield[np.ix_(self.angle_index, self.angle_index)]
        described = {
            "family": np.int32(FAMILY_IDS[scatterer.family]),
            "num_primitives": np.int32(len(scatterer.primitives)),
            "primitives": scatterer.padded(self.max_primitives, self.columns),
            "iterations": np.int32(self.solver.last_iterations.max(initial=0)),
        }
        if cfg.layout == "farfield":
            size = self.grid.image_size
            image = eta if size == cfg.n else scatterer.raster(size, cfg.box, cfg.family.supersample)
            return {"farfield": farfield.astype(np.complex64), "image": image.astype(np.float32),
                    "eta": eta.astype(np.float32), **described}
        measure = measure_from_far_field(farfield)
        return {
            "measure": measure.real.astype(np.float32),
            "measure_imag": measure.imag.astype(np.float32),
            "coe": scatterer.polar(cfg.Na, cfg.Nr, cfg.polar_radius * cfg.box).astype(np.float32),
            "eta": eta.astype(np.float32),
            "farfield": farfield.astype(np.complex64),
            **described,
        }

    def __call__(self, index: int) -> dict[str, np.ndarray]:
        try:
            return self.arrays(self.scatterer(index))
        except ConvergenceError as exc:
            raise ConvergenceError(f"sample {index}: {exc}; raise solver.max_iterations or lower the contrast") \
                from None
