"""The discretisation error of a generated data set's far fields, estimated on a few of its samples.

Sample i of a generation config is re-made from its analytic scatterer (`SampleMaker.scatterer(i)`, seeded by
(seed, i)) and solved twice: on the data set's n×n grid (F_n, the far field the data set stores, up to its
complex64 rounding) and, re-rasterised the same way (`Scatterer.contrast_raster`, same supersampling), on a grid
twice as fine (2n×2n cells of the same box; same k, directions and solver tolerance). A sample whose scatterer
is one homogeneous disc inside its support disk is also compared with the Mie series (`bcrdist.physics.mie`).
The estimates are relative Frobenius norms over the distinct directions (observation × incidence; the endpoint
grid's repeated direction π ≡ −π counted once):
    fine   ‖F_n − F_2n‖ / ‖F_2n‖
    mie    ‖F_n − F_Mie‖ / ‖F_Mie‖
Comparing the solver with itself at 2n takes every convention (sign, normalisation, angle grid) out of the
comparison. It estimates e_n − e_2n, not e_n: for an error falling like 1/n (the pixelised boundary of a
piecewise-constant shape, docs/physics.md) the true error is about twice the estimate, for 1/n² 4/3 of it;
the Mie comparison of single discs measures e_n itself.

Which samples: `DiscretisationCheck.chosen_samples` draws a permutation of the indices from
`default_rng([seed, samples, 3])` (no sample has index `samples`, so this is no sample's own random stream); the
fine-grid estimate takes its first `count`, the Mie comparison the first `count` single-disc samples among its
first 64·count.
"""

from __future__ import annotations

import functools

import numpy as np

from bcrdist.physics.generation_config import GenerationConfig
from bcrdist.physics.layout import distinct_angles
from bcrdist.physics.mie import mie_far_field
from bcrdist.physics.sampling import SampleMaker
from bcrdist.physics.scatterers import KIND_ELLIPSE, Scatterer
from bcrdist.physics.solver import ScatteringSolver

FINE_FACTOR = 2
MIE_SCAN = 64  # the Mie comparison looks for single discs among the first MIE_SCAN·count drawn samples


def single_disc(scatterer: Scatterer) -> tuple[np.ndarray, float, complex] | None:
    """(centre (2,), radius, contrast η0·(1 + iα)) when `scatterer` is one homogeneous disc of positive
    contrast inside its support disk (so that neither the clip nor the support cut changes it), else None."""
    rows = scatterer.primitives
    if rows.shape[0] != 1:
        return None
    kind, value, cx, cy, a, b = rows[0, :6]
    if kind != KIND_ELLIPSE or a != b or not value > 0 or np.hypot(cx, cy) + a > scatterer.support_radius:
        return None
    return np.array([cx, cy]), float(a), complex(value, value * scatterer.absorption)


def relative_error(approx: np.ndarray, reference: np.ndarray) -> float:
    """‖approx − reference‖_F / ‖reference‖_F of two far fields of the same shape."""
    return float(np.linalg.norm(approx - reference) / np.linalg.norm(reference))


class DiscretisationCheck:
    """The far-field errors of single samples of `cfg` (module docstring); one instance re-uses its solvers."""

    def __init__(self, cfg: GenerationConfig):
        self.cfg = cfg
        self.maker = SampleMaker(cfg)
        self.angles = distinct_angles(cfg.angles, cfg.Na)[0]

    @functools.cached_property
    def fine_solver(self) -> ScatteringSolver:
        """The solver on 2n×2n cells of the same box, at the data set's k, directions and tolerances."""
        cfg, s = self.cfg, self.cfg.solver
        return ScatteringSolver(FINE_FACTOR * cfg.n, cfg.k, self.angles, self.angles, box=cfg.box, tol=s.tol,
                                restart=s.restart, max_iterations=s.max_iterations)

    def chosen_samples(self, count: int) -> tuple[list[int], list[int]]:
        """(indices of the fine-grid estimate, indices of the Mie comparison), each sorted, at most `count`
        long (see the module docstring); `count` ≥ 0."""
        if count <= 0:
            return [], []
        order = np.random.default_rng([self.cfg.seed, self.cfg.samples, 3]).permutation(self.cfg.samples)
        discs = [int(i) for i in order[:MIE_SCAN * count] if single_disc(self.maker.scatterer(int(i))) is not None]
        return sorted(int(i) for i in order[:count]), sorted(discs[:count])

    def errors(self, index: int, *, fine: bool = True, mie: bool = True) -> tuple[float | None, float | None]:
        """(fine-grid estimate, error against the Mie series) of sample `index`; each None when not asked for,
        the Mie one also when the sample is not a single disc. Raises ConvergenceError as generation does."""
        cfg = self.cfg
        scatterer = self.maker.scatterer(index)
        disc = single_disc(scatterer) if mie else None
        if not fine and disc is None:
            return None, None
        coarse = self.maker.solver.far_field(scatterer.contrast_raster(cfg.n, cfg.box, cfg.family.supersample))
        fine_error = mie_error = None
        if fine:
            eta = scatterer.contrast_raster(FINE_FACTOR * cfg.n, cfg.box, cfg.family.supersample)
            fine_error = relative_error(coarse, self.fine_solver.far_field(eta))
        if disc is not None:
            centre, radius, contrast = disc
            mie_error = relative_error(coarse, mie_far_field(cfg.k, radius, contrast, centre, self.angles,
                                                             self.angles))
        return fine_error, mie_error
