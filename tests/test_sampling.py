"""One sample (`bcrdist.physics.sampling.SampleMaker`): rotation equivariance of `coe` and the preprocessed
`measure`, and a non-convergence error naming the sample."""

import numpy as np
import pytest

from bcrdist.config import load_config
from bcrdist.physics.generation_config import GenerationConfig
from bcrdist.physics.sampling import SampleMaker
from bcrdist.physics.solver import ConvergenceError
from bcrdist.transforms import antipodal

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_rotation_by_one_step_rolls_coe_and_preprocessed_measure():
    cfg = load_config(None, GenerationConfig, ["n=64", "Na=32", "Nr=8", "family.gaussian.width=[0.045, 0.06]",
                                         "solver.tol=1.0e-11"])
    maker = SampleMaker(cfg)
    s = maker.scatterer(7)
    a = maker.arrays(s)
    b = maker.arrays(s.rotated(2 * np.pi / cfg.Na))
    assert np.allclose(b["coe"], np.roll(a["coe"], 1, axis=0), rtol=0, atol=1e-6 * a["coe"].max())
    pa = antipodal(a["measure"] + 1j * a["measure_imag"])
    pb = antipodal(b["measure"] + 1j * b["measure_imag"])
    err = np.linalg.norm(pb - np.roll(pa, 1, axis=0)) / np.linalg.norm(pa)
    print(f"rotation by 2π/Na: preprocessed measure rolls by one row to {err:.1e}")
    assert err < 1e-6


def test_non_convergence_names_the_sample():
    maker = SampleMaker(load_config(None, GenerationConfig, ["n=32", "solver.max_iterations=2"]))
    with pytest.raises(ConvergenceError, match="^sample 5: GMRES did not converge"):
        maker(5)
